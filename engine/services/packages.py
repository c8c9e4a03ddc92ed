"""Template packages in the database: upload, publish (with a dry-run plan), history, rollback,
export.

Publishing is one transaction: the candidate metadata — core, every published package with this
one in its new version, runtime changes — is built and checked whole first (every error listed,
nothing written), then the schema steps (new tables, columns, indexes: additive only), the package
row, the role policy, the package's seed records and the audit entry are written, and the
metadata stamp moves so every process reloads. A dry run executes exactly that and rolls it back,
so the plan it shows is the one a publish applies, and an error a publish would meet (a seed record
that does not validate, a unique key taken) is met by the dry run too.

Publishing the same content again is a no-op (nothing written, ``noop: true``). A rollback makes the
previously published version active again (or unpublishes a package published once): metadata only
— tables and columns stay with their data, so publishing again brings the fields back with their
values. Runtime changes made on top of a package are kept; a rollback they would not survive (an
overlay on a field the older version lacks) is refused with every error.

Who may: ``configure`` on the ``packages`` area; a package that changes roles also needs
``configure`` on ``meta_roles`` (the role administrator), so publishing cannot be used to grant
oneself rights.
"""

from __future__ import annotations

import builtins
import copy
import datetime as dt
from typing import TYPE_CHECKING, Any, Mapping

from sqlalchemy import Connection, func, insert, select, update

from ..errors import BadRequest, FieldError, FinCRMError, MetadataInvalid, NotFound
from ..fieldtypes import FIELD_TYPES
from ..meta.packages import (
    DOCUMENT_KINDS,
    check_package,
    dependency_order,
    digest,
    load_package_dir,
    shipped_packages,
)
from ..meta.schema import pointer
from ..runtime import META_VERSION, Runtime, Snapshot, newest_documents, utcnow
from ..security import audit
from ..security.policy import AREAS, CasbinAuthorizer, check_roles, compile_policies
from ..security.principal import Principal
from ..store.migrate import apply_migration, plan_migration
from ..store.tables import package_table
from .roles import RoleService

if TYPE_CHECKING:
    from .records import RecordService

__all__ = ["PackageService", "active_quote_configs"]

AREA = "packages"
_EXPORT_ORDER = ("entity", "entity_overlay", "role", "flow", "trigger", "report")


class _DryRun(Exception):
    """Unwinds a dry run's transaction, carrying its plan."""

    def __init__(self, plan: dict[str, Any]) -> None:
        self.plan = plan


class PackageService:
    def __init__(self, runtime: Runtime, authz: CasbinAuthorizer, roles: RoleService, records: "RecordService") -> None:
        self.runtime = runtime
        self.authz = authz
        self.roles = roles
        self.records = records

    # ------------------------------------------------------------------ reading

    def list(self, principal: Principal) -> list[dict[str, Any]]:
        """Every package known here: shipped verticals and stored ones, with the active version."""
        self.authz.require(principal, AREA, "configure")
        t = package_table
        with self.runtime.engine.connect() as conn:
            rows = conn.execute(select(t.c.name, t.c.version, t.c.seq, t.c.active, t.c.doc, t.c.published_at).order_by(t.c.name, t.c.seq)).all()
        out: dict[str, dict[str, Any]] = {}
        for name, path in shipped_packages().items():
            doc = load_package_dir(path)
            out[name] = {"name": name, "label": doc.get("label"), "shipped_version": doc.get("version"), "versions": 0, "active_version": None}
        for r in rows:
            item = out.setdefault(r.name, {"name": r.name, "label": r.doc.get("label"), "shipped_version": None, "versions": 0, "active_version": None})
            item["versions"] += 1
            if r.active:
                item.update(active_version=r.version, label=r.doc.get("label"), published_at=_iso(r.published_at))
        return [out[n] for n in sorted(out)]

    def history(self, principal: Principal, name: str) -> builtins.list[dict[str, Any]]:
        """Every stored version of ``name``, oldest first."""
        self.authz.require(principal, AREA, "configure")
        t = package_table
        with self.runtime.engine.connect() as conn:
            rows = conn.execute(select(t).where(t.c.name == name).order_by(t.c.seq)).all()
        if not rows and name not in shipped_packages():
            raise NotFound(f"unknown package {name[:64]!r}")
        return [_summary(r) for r in rows]

    def export(self, principal: Principal, name: str, version: str | None = None) -> dict[str, Any]:
        """The current customisation as a package named ``name``, to publish on another system:
        the documents of the published ``name`` (if any) followed by the newest version of every
        runtime document (entities, overlays, roles, flows, triggers, reports changed here). It
        depends on every other package published here, since the runtime changes sit on them."""
        self.authz.require(principal, AREA, "configure")
        snap = self.runtime.cached_snapshot()
        current = next((p for p in snap.packages if p["name"] == name), None)
        with self.runtime.engine.connect() as conn:
            rows = newest_documents(conn, _EXPORT_ORDER)
        runtime_docs = sorted((dict(r.doc) for r in rows), key=lambda doc: (_EXPORT_ORDER.index(doc["kind"]), doc["name"]))
        documents = [copy.deepcopy(dict(x)) for x in (current or {}).get("documents", ())] + runtime_docs
        if version is None:
            version = _next_patch(str(current["version"])) if current else "1.0.0"
        out: dict[str, Any] = {
            "kind": "package",
            "name": name,
            "version": version,
            "label": copy.deepcopy(dict(current["label"])) if current else {"zh": "导出的定制配置", "en": "Exported customisation"},
            "description": {
                "zh": f"从本系统导出：{'模板 ' + name + ' ' + str(current['version']) + ' 加上' if current else ''}运行时的定制（{len(runtime_docs)} 个文档）",
                "en": f"Exported from this system: {'package ' + name + ' ' + str(current['version']) + ' plus ' if current else ''}runtime customisation ({len(runtime_docs)} documents)",
            },
            "depends": sorted(p["name"] for p in snap.packages if p["name"] != name),
            "documents": documents,
        }
        if current and "quotes" in current:
            out["quotes"] = copy.deepcopy(dict(current["quotes"]))
        check_package(out)
        return out

    # ------------------------------------------------------------------ writing

    def upload(self, principal: Principal, doc: Any) -> dict[str, Any]:
        """Store a package version (not yet published) after checking it as a publish would —
        schema, dependencies, the whole candidate metadata — every error listed. The same
        content uploaded twice is stored once."""
        self.authz.require(principal, AREA, "configure")
        pkg = check_package(doc)
        with self.runtime.engine.connect() as conn:
            self._candidate(conn, pkg, self.runtime.cached_snapshot().version)
        row = self._store(pkg, principal)
        return _summary(row)

    def publish(self, principal: Principal, name: str, *, dry_run: bool = False, version: str | None = None, doc: Any = None) -> dict[str, Any]:
        """Publish ``name``; returns the plan (``noop`` when this content is already published).

        Which content: ``doc`` if given; else ``version`` (a stored version); else the newest
        upload not yet published; else the shipped vertical ``metadata/verticals/<name>``."""
        self.authz.require(principal, AREA, "configure")
        pkg = check_package(doc) if doc is not None else self._resolve(name, version)
        if pkg["name"] != name:
            raise BadRequest(f"the package is named {str(pkg['name'])[:64]!r}, not {name[:64]!r}")
        fingerprint = digest(pkg)
        with self.runtime.engine.connect() as conn:
            current = conn.execute(
                select(package_table.c.digest).where(package_table.c.name == name, package_table.c.active.is_(True))
            ).scalar()
        if current == fingerprint:
            return {"package": name, "version": pkg["version"], "digest": fingerprint, "noop": True, "dry_run": dry_run, "changes": {}, "migration": []}
        return self._apply(principal, pkg, dry_run=dry_run, action="publish")

    def rollback(self, principal: Principal, name: str) -> dict[str, Any]:
        """Make the previously published version of ``name`` active again (or unpublish it if
        it was published once). Metadata only: record data and columns stay."""
        self.authz.require(principal, AREA, "configure")
        t = package_table
        with self.runtime.engine.connect() as conn:
            rows = conn.execute(select(t).where(t.c.name == name).order_by(t.c.seq)).all()
        current = next((r for r in rows if r.active), None)
        if current is None:
            raise NotFound(f"package {name[:64]!r} is not published")
        previous = next((r for r in reversed(rows) if r.seq < current.seq and r.published_at is not None and r.digest != current.digest), None)
        target = dict(previous.doc) if previous is not None else None
        plan = self._apply(principal, target, dry_run=False, action="rollback", name=name)
        plan["rolled_back_from"] = current.version
        plan["version"] = previous.version if previous is not None else None
        return plan

    # ------------------------------------------------------------------ internals

    def _resolve(self, name: str, version: str | None) -> dict[str, Any]:
        t = package_table
        with self.runtime.engine.connect() as conn:
            rows = conn.execute(select(t).where(t.c.name == name).order_by(t.c.seq)).all()
        if version is not None:
            match = [r for r in rows if r.version == version]
            if not match:
                raise NotFound(f"package {name[:64]!r} has no version {version[:32]!r}")
            return dict(match[-1].doc)
        active_seq = max((r.seq for r in rows if r.active), default=0)
        pending = [r for r in rows if r.published_at is None and r.seq > active_seq]
        if pending:
            return dict(pending[-1].doc)
        shipped = shipped_packages().get(name)
        if shipped is not None:
            return check_package(load_package_dir(shipped))
        if rows:
            return dict(rows[-1].doc)
        raise NotFound(f"unknown package {name[:64]!r}: upload it first (POST /api/v1/meta/packages)")

    def _candidate(
        self, conn: Connection, pkg: Mapping[str, Any] | None, version: int, name: str | None = None
    ) -> tuple[Snapshot, builtins.list[dict[str, Any]]]:
        """The metadata with ``pkg`` published (or package ``name`` removed when ``pkg`` is None):
        every error of dependencies, entities, overlays, flows, triggers, reports and roles. Returns
        the candidate snapshot and the role documents in force with it."""
        name = pkg["name"] if pkg is not None else name
        packages = [p for p in self.runtime.cached_snapshot().packages if p["name"] != name] + ([pkg] if pkg is not None else [])
        ordered, errors = dependency_order(packages)
        if errors:
            raise MetadataInvalid("package dependencies are not met", errors)
        snap = self.runtime.build(conn, version, packages=list(ordered))
        roles = self.roles.documents(packages=ordered)
        check_roles(roles)
        if pkg is not None:
            _role_errors(snap, pkg)
            _seed_errors(snap, pkg)
            if isinstance(pkg.get("quotes"), Mapping):
                from ..flows.quotes import quote_config_errors  # the quotes job's own check

                quote_errors = quote_config_errors(snap.registry, pkg["quotes"])
                if quote_errors:
                    raise MetadataInvalid("the package's quotes declaration does not fit its entities", quote_errors)
        return snap, roles

    def _apply(self, principal: Principal, pkg: Mapping[str, Any] | None, *, dry_run: bool, action: str, name: str | None = None) -> dict[str, Any]:
        name = pkg["name"] if pkg is not None else name
        assert name is not None
        before = self.runtime.cached_snapshot()
        old_roles = {r["name"]: r for r in self.roles.documents(packages=before.packages)}
        try:
            with self.runtime.begin() as conn:
                version = self.runtime.bump(conn, META_VERSION)  # takes the write lock: publishes serialise
                snap, role_docs = self._candidate(conn, pkg, version, name)
                new_roles = {r["name"]: r for r in role_docs}
                roles_changed = sorted(n for n in new_roles.keys() | old_roles.keys() if new_roles.get(n) != old_roles.get(n))
                if roles_changed:
                    self.authz.require(principal, "meta_roles", "configure")
                steps = plan_migration(conn, snap.metadata)
                plan: dict[str, Any] = {
                    "package": name,
                    "version": pkg["version"] if pkg is not None else None,
                    "digest": digest(pkg) if pkg is not None else None,
                    "noop": False,
                    "dry_run": dry_run,
                    "changes": _changes(before, snap, roles_changed, old_roles, new_roles),
                    "migration": [s.to_dict() for s in steps],
                }
                apply_migration(conn, snap.metadata, steps)
                row_id = self._activate(conn, principal, pkg, name)
                policy_version = self.authz.write_policies(conn, list(new_roles.values())) if roles_changed else None
                plan["changes"]["seeds"] = self._seed(conn, snap, pkg, principal) if pkg is not None else {}
                audit.append(
                    conn,
                    audit.AuditEntry(
                        actor=principal.username, actor_id=principal.user_id, action=f"package_{action}", entity=name, ip=principal.ip,
                        detail={
                            "package": name, "version": plan["version"], "digest": plan["digest"], "row": row_id, "metadata_version": version,
                            "migration": len(steps), "roles": roles_changed,
                        },
                    ),
                )
                if dry_run:
                    raise _DryRun(plan)
        except _DryRun as done:
            return done.plan
        self.runtime.install(snap)
        if policy_version is not None:
            self.authz.refresh(policy_version)
        return plan

    def _store(self, pkg: Mapping[str, Any], principal: Principal, conn: Connection | None = None) -> Any:
        """The stored row with this content, inserted if new."""
        t = package_table
        fingerprint = digest(pkg)

        def run(c: Connection) -> Any:
            row = c.execute(select(t).where(t.c.name == pkg["name"], t.c.digest == fingerprint).order_by(t.c.seq.desc()).limit(1)).first()
            if row is not None:
                return row
            seq = (c.execute(select(func.max(t.c.seq)).where(t.c.name == pkg["name"])).scalar() or 0) + 1
            c.execute(
                insert(t).values(
                    name=pkg["name"], seq=seq, version=pkg["version"], digest=fingerprint, doc=dict(pkg), active=False,
                    uploaded_by=principal.username, uploaded_at=utcnow(),
                )
            )
            return c.execute(select(t).where(t.c.name == pkg["name"], t.c.seq == seq)).one()

        if conn is not None:
            return run(conn)
        with self.runtime.begin() as c:
            return run(c)

    def _activate(self, conn: Connection, principal: Principal, pkg: Mapping[str, Any] | None, name: str) -> int | None:
        """Make ``pkg`` the active version of ``name`` (None: no version active)."""
        t = package_table
        now = utcnow()
        conn.execute(update(t).where(t.c.name == name, t.c.active.is_(True)).values(active=False, retired_at=now))
        if pkg is None:
            return None
        row = self._store(pkg, principal, conn)
        conn.execute(update(t).where(t.c.id == row.id).values(active=True, published_by=principal.username, published_at=now, retired_at=None))
        return int(row.id)

    def _seed(self, conn: Connection, snap: Snapshot, pkg: Mapping[str, Any], principal: Principal) -> dict[str, int]:
        """Insert the seed records whose key no record has yet; ``{entity: inserted}``."""
        system = Principal.system(f"package:{pkg['name']}")
        inserted: dict[str, int] = {}
        for i, doc in enumerate(pkg.get("documents", ())):
            if doc.get("kind") != "seed":
                continue
            t = snap.tables[doc["entity"]]
            key = doc["key"]
            keys = [r[key] for r in doc["records"]]
            have: set[Any] = set()
            for start in range(0, len(keys), 500):
                have |= set(conn.execute(select(t.c[key]).where(t.c[key].in_(keys[start : start + 500]))).scalars())
            new = [dict(r) for r in doc["records"] if r[key] not in have]
            if not new:
                continue
            try:
                self.records.bulk_insert(system, doc["entity"], new, conn, in_transaction_ids=True, snap=snap)
            except FinCRMError as exc:
                raise MetadataInvalid(
                    f"seed {doc['name']!r} has records that are not valid",
                    [{"pointer": pointer(("documents", i, "records")) + "/" + str(d.get("field", "")).replace("[", "").replace("].", "/"), "message": str(d.get("message"))} for d in exc.details]
                    or [{"pointer": pointer(("documents", i)), "message": exc.message}],
                ) from exc
            inserted[doc["entity"]] = inserted.get(doc["entity"], 0) + len(new)
        return inserted


def _role_errors(snap: Snapshot, pkg: Mapping[str, Any]) -> None:
    """A package's roles may only name entities and fields that exist once it is published
    (``*`` and the areas aside): a grant on a typo would silently grant nothing."""
    errors = []
    entities = snap.registry.entities
    for i, doc in enumerate(pkg.get("documents", ())):
        if doc.get("kind") != "role":
            continue
        for j, g in enumerate(doc.get("grants", ())):
            if g["entity"] != "*" and g["entity"] not in AREAS and g["entity"] not in entities:
                errors.append({"pointer": pointer(("documents", i, "grants", j, "entity")), "message": f"unknown entity {g['entity']!r}"})
        for j, f in enumerate(doc.get("fields", ())):
            if f["entity"] == "*":
                continue
            spec = entities.get(f["entity"])
            if spec is None or (f["field"] != "*" and spec.field(f["field"]) is None):
                errors.append({"pointer": pointer(("documents", i, "fields", j)), "message": f"unknown field {f['entity']}.{f['field']}"})
    if errors:
        raise MetadataInvalid("package roles name unknown entities or fields", errors)


def _seed_errors(snap: Snapshot, pkg: Mapping[str, Any]) -> None:
    """Seeds must name an entity and a key that can identify a record (unique, column-stored,
    not encrypted: looked up by value), and every record must carry the key, once."""
    errors = []
    for i, doc in enumerate(pkg.get("documents", ())):
        if doc.get("kind") != "seed":
            continue
        at = ("documents", i)
        spec = snap.registry.entities.get(doc["entity"])
        if spec is None:
            errors.append({"pointer": pointer((*at, "entity")), "message": f"unknown entity {doc['entity']!r}"})
            continue
        f = spec.live_field(doc["key"])
        if f is None or not f.unique or f.storage != "column" or f.encrypted:
            errors.append({"pointer": pointer((*at, "key")), "message": "must be a unique, column-stored, unencrypted field of the entity"})
            continue
        seen: set[Any] = set()
        for j, rec in enumerate(doc["records"]):
            value = rec.get(doc["key"])
            try:
                value = FIELD_TYPES[f.type].normalize(value, f) if value is not None else None
            except FieldError as exc:
                errors.append({"pointer": pointer((*at, "records", j, doc["key"])), "message": str(exc)})
                continue
            if value is None:
                errors.append({"pointer": pointer((*at, "records", j, doc["key"])), "message": "every seed record needs its key"})
            elif value in seen:
                errors.append({"pointer": pointer((*at, "records", j, doc["key"])), "message": "key appears twice"})
            seen.add(value)
    if errors:
        raise MetadataInvalid("package seeds are invalid", errors)


def _changes(
    before: Snapshot, after: Snapshot, roles_changed: list[str], old_roles: Mapping[str, Any], new_roles: Mapping[str, Any]
) -> dict[str, Any]:
    """What a publish changes, in the metadata's terms: entities and fields, roles, flows,
    triggers, reports (the schema steps are listed beside it)."""
    old_e, new_e = before.registry.entities, after.registry.entities
    entities: dict[str, Any] = {"added": sorted(n for n in new_e if n not in old_e), "removed": sorted(n for n in old_e if n not in new_e), "changed": {}}
    for n in sorted(set(old_e) & set(new_e)):
        o, w = old_e[n], new_e[n]
        if o == w:
            continue
        of = {f.name: f for f in o.fields if not f.archived}
        nf = {f.name: f for f in w.fields if not f.archived}
        entry: dict[str, Any] = {
            "fields_added": sorted(set(nf) - set(of)),
            "fields_removed": sorted(set(of) - set(nf)),
            "fields_changed": sorted(k for k in set(of) & set(nf) if of[k] != nf[k]),
            "tag_sets_added": sorted({t.name for t in w.tag_sets} - {t.name for t in o.tag_sets}),
        }
        entities["changed"][n] = {k: v for k, v in entry.items() if v} or {"layout": True}
    out: dict[str, Any] = {"entities": entities}
    docs_before = {**{k: v for k, v in before.automation.documents.items()}, **{("report", k): r.doc for k, r in before.reports.items()}}
    docs_after = {**{k: v for k, v in after.automation.documents.items()}, **{("report", k): r.doc for k, r in after.reports.items()}}
    for kind in ("flow", "trigger", "report"):
        b = {n: d for (k, n), d in docs_before.items() if k == kind}
        a = {n: d for (k, n), d in docs_after.items() if k == kind}
        out[kind + "s"] = {
            "added": sorted(set(a) - set(b)),
            "removed": sorted(set(b) - set(a)),
            "changed": sorted(n for n in set(a) & set(b) if _plain(a[n]) != _plain(b[n])),
        }
    out["roles"] = {
        "added": sorted(n for n in roles_changed if n not in old_roles),
        "removed": sorted(n for n in roles_changed if n not in new_roles),
        "changed": sorted(n for n in roles_changed if n in old_roles and n in new_roles),
        "policy_rows": len(compile_policies(new_roles.values())),
    }
    return out


def active_quote_configs(runtime: Runtime) -> list[dict[str, Any]]:
    """The ``quotes`` declarations of the published packages (where a quote feed's prices go)."""
    return [dict(p["quotes"]) for p in runtime.cached_snapshot().packages if isinstance(p.get("quotes"), Mapping)]


def _plain(doc: Any) -> Any:
    if isinstance(doc, Mapping):
        return {k: _plain(v) for k, v in doc.items()}
    if isinstance(doc, (list, tuple)):
        return [_plain(v) for v in doc]
    return doc


def _summary(row: Any) -> dict[str, Any]:
    kinds: dict[str, int] = {}
    for d in row.doc.get("documents", ()):
        kinds[d.get("kind")] = kinds.get(d.get("kind"), 0) + 1
    return {
        "name": row.name, "seq": row.seq, "version": row.version, "digest": row.digest, "active": bool(row.active),
        "label": row.doc.get("label"), "documents": {k: kinds[k] for k in DOCUMENT_KINDS if k in kinds},
        "uploaded_by": row.uploaded_by, "uploaded_at": _iso(row.uploaded_at),
        "published_by": row.published_by, "published_at": _iso(row.published_at), "retired_at": _iso(row.retired_at),
    }


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() + "Z" if value is not None else None


def _next_patch(version: str) -> str:
    major, minor, patch = (int(x) for x in version.split("."))
    return f"{major}.{minor}.{patch + 1}"
