"""The notifications page (``/notifications/``): the signed-in user's in-app messages, newest
first, unread ones marked, with "mark read" (one or all) and a link to the record a message is
about. It renders what :class:`engine.services.notifications.Notifications` returns, the same
as ``GET /api/v1/notifications``; the forms post with the session's CSRF token.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from flask import abort, redirect, request, url_for
from flask_appbuilder import BaseView, expose
from flask_login import current_user
from flask_wtf.csrf import generate_csrf

from ..errors import FinCRMError, Forbidden, NotAuthenticated
from ..fieldtypes import LOCAL_TZ
from ..security.principal import Principal
from .auth import current_principal, refresh_request_state
from .context import services
from .pages import lang

__all__ = ["NotificationsPage"]

PAGE_SIZE = 30


def _t(zh: str, en: str) -> str:
    return en if lang() == "en" else zh


def _local(value: str | None) -> str:
    """An API timestamp (``…Z``) as local time for people."""
    if not value:
        return ""
    moment = dt.datetime.fromisoformat(value.removesuffix("Z")).replace(tzinfo=dt.timezone.utc)
    return moment.astimezone(LOCAL_TZ).strftime("%Y-%m-%d %H:%M")


def _principal() -> Principal | None:
    if not current_user or not current_user.is_authenticated:
        return None
    refresh_request_state()
    try:
        return current_principal()  # on POST: checks the form's CSRF token
    except NotAuthenticated:
        return None
    except Forbidden:
        abort(400)


def _login_redirect() -> Any:
    return redirect(url_for("AuthDBView.login", next=request.full_path))


def _record_link(item: dict[str, Any]) -> str | None:
    """Where a message points: the record page it is about, when there is one."""
    entity, rid = item.get("entity"), item.get("record_id")
    if not entity or not rid:
        return None
    if entity not in services().runtime.cached_snapshot().registry.entities:
        return None
    return url_for("RecordPages.detail", entity=entity, rid=rid)


class NotificationsPage(BaseView):
    route_base = "/notifications"
    default_view = "index"

    @expose("/")
    def index(self) -> Any:
        principal = _principal()
        if principal is None:
            return _login_redirect()
        unread_only = request.args.get("unread") == "1"
        before_text = request.args.get("before", "")
        before = int(before_text) if before_text.isdigit() else None
        try:
            page = services().notifications.list(principal, unread=unread_only, before=before, limit=PAGE_SIZE)
        except FinCRMError as exc:
            abort(exc.status if exc.status in (400, 403, 404) else 500)
        items = [{**item, "link": _record_link(item), "when": _local(item["created_at"])} for item in page["items"]]
        return self.render_template(
            "fincrm/notifications.html", items=items, next_before=page["next_before"], unread=page["unread"], unread_only=unread_only,
            lang=lang(), csrf_token=generate_csrf(),
        )

    @expose("/<int:notification_id>/read", methods=["POST"])
    def read(self, notification_id: int) -> Any:
        """Mark one read; with ``open=1`` go on to the record it is about."""
        principal = _principal()
        if principal is None:
            return _login_redirect()
        try:
            item = services().notifications.mark_read(principal, notification_id)
        except FinCRMError as exc:
            abort(exc.status if exc.status in (400, 403, 404) else 500)
        link = _record_link(item) if request.form.get("open") == "1" else None
        return redirect(link or url_for("NotificationsPage.index", unread="1" if request.form.get("unread") == "1" else None))

    @expose("/read-all", methods=["POST"])
    def read_all(self) -> Any:
        principal = _principal()
        if principal is None:
            return _login_redirect()
        services().notifications.mark_all_read(principal)
        return redirect(url_for("NotificationsPage.index"))
