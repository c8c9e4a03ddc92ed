"""Logging that never carries customers' data: request lines lose their query strings.

Filters (``filter=…``), searches (``q=…``) and cursors can hold ID numbers or mobiles; access
logs keep the method, path, status and timing only.
"""

from __future__ import annotations

import logging
import re

__all__ = ["RedactQuery", "install_log_redaction", "GUNICORN_ACCESS_FORMAT"]

# gunicorn: %(U)s is the path without the query string
GUNICORN_ACCESS_FORMAT = '%(h)s - %(u)s [%(t)s] "%(m)s %(U)s %(H)s" %(s)s %(b)s %(L)ss'

_QUERY = re.compile(r"(\"[A-Z]+ [^\"?\s]*)\?[^\"\s]*")


class RedactQuery(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            record.args = tuple(_QUERY.sub(r"\1?…", a) if isinstance(a, str) else a for a in record.args)
        if isinstance(record.msg, str):
            record.msg = _QUERY.sub(r"\1?…", record.msg)
        return True


def install_log_redaction() -> None:
    logger = logging.getLogger("werkzeug")
    if not any(isinstance(f, RedactQuery) for f in logger.filters):
        logger.addFilter(RedactQuery())
