"""Template packages: upload, dry-run plan, atomic publish, no-op republish, version history,
rollback without data loss, export → publish elsewhere, refusal of a broken package with every
error listed, and who may publish (DESIGN §2–3, issue #8)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, inspect, select, table

from engine.errors import MetadataInvalid
from engine.meta.packages import check_package, digest, layer, load_package_dir, shipped_packages
from engine.store.tables import meta_doc_table, package_table
from tests.api_helpers import LABEL, app_config, dispose, publish_vertical, sample_package, signed_in

L = LABEL


def _package(version: str = "1.0.0", *, extra_field: bool = False) -> dict[str, Any]:
    return sample_package("pkgtest", "pkg", version, extra_field=extra_field)


def _columns(app: Any, table: str) -> set[str]:
    runtime = app.extensions["fincrm"].runtime
    with runtime.engine.connect() as conn:
        return {c["name"] for c in inspect(conn).get_columns(table)}


def _rows(app: Any, stmt: Any) -> list[Any]:
    with app.extensions["fincrm"].runtime.engine.connect() as conn:
        return list(conn.execute(stmt).all())


def test_pure_layering_merges_tag_sets_and_loads_directories(tmp_path: Path) -> None:
    base = [{"kind": "entity", "name": "customer", "label": L, "fields": [], "tag_sets": [{"name": "value", "label": L, "tags": []}]}]
    pkg1 = {"documents": [{"kind": "entity_overlay", "name": "customer", "tag_sets": [{"name": "tier", "label": L, "tags": []}]}]}
    pkg2 = {"documents": [{"kind": "entity_overlay", "name": "customer", "tag_sets": [{"name": "risk", "label": L, "tags": []}]}]}
    _, overlays = layer(base, [pkg1, pkg2])
    assert [t["name"] for t in overlays[-1]["tag_sets"]] == ["value", "tier", "risk"]  # each package adds, none replaces

    root = tmp_path / "demo_pkg"
    (root / "entities").mkdir(parents=True)
    (root / "package.json").write_text(json.dumps({"kind": "package", "name": "demo_pkg", "version": "0.1.0", "label": L, "documents": []}))
    (root / "entities" / "a.json").write_text(json.dumps(_package()["documents"][0]))
    (root / "entities" / "broken.json").write_text("{not json")
    (root / "entities" / "gbk.json").write_bytes('{"名": 1}'.encode("gbk"))
    with pytest.raises(MetadataInvalid) as exc:
        load_package_dir(root)
    pointers = {d["pointer"] for d in exc.value.details}
    assert pointers == {"/files/entities~1broken.json", "/files/entities~1gbk.json"}
    (root / "entities" / "broken.json").unlink()
    (root / "entities" / "gbk.json").unlink()
    loaded = load_package_dir(root)
    assert [d["name"] for d in loaded["documents"]] == ["pkg_account"]
    assert digest(loaded) == digest(json.loads(json.dumps(loaded, sort_keys=True)))  # key order does not matter


def test_shipped_verticals_pass_their_meta_schemas() -> None:
    shipped = shipped_packages()
    assert {"bank", "securities", "insurance"} <= set(shipped)
    for name, path in shipped.items():
        pkg = check_package(load_package_dir(path))
        assert pkg["name"] == name and pkg["documents"], name


def test_broken_package_is_refused_whole_with_every_error(app: Any, client: Any, login: Any) -> None:
    bad = _package()
    bad["version"] = "1.0"  # not semver
    bad["documents"][0]["fields"][2]["type"] = "money"  # unknown type
    bad["documents"][3]["entity"] = "no_such_entity"  # trigger on a missing entity (found once schemas pass)
    bad["documents"][5]["records"][1]["code"] = "PKG-1"  # duplicate seed key
    bad["documents"].append({"kind": "widget", "name": "x"})
    resp = client.post("/api/v1/meta/packages", json=bad, headers=login("admin"))
    assert resp.status_code == 422, resp.get_data(as_text=True)
    pointers = {d["pointer"] for d in resp.json["error"]["details"]}
    assert {"/version", "/documents/0/fields/2/type", "/documents/6/kind"} <= pointers
    assert _rows(app, select(func.count()).select_from(package_table)) == [(0,)]

    # schema-valid but inconsistent: every semantic error, still nothing written
    bad = _package()
    bad["documents"][3]["entity"] = "no_such_entity"
    bad["documents"][1]["fields"][0]["options"] = []  # an enum without options
    bad["documents"][5]["records"][1]["code"] = "PKG-1"
    resp = client.post("/api/v1/meta/packages/pkgtest/publish", json=None, headers=login("admin"))
    assert resp.status_code == 404  # nothing uploaded, nothing shipped by that name
    resp = client.post("/api/v1/meta/packages", json=bad, headers=login("admin"))
    assert resp.status_code == 422
    assert resp.json["error"]["details"], resp.json
    assert "pkg_account" not in _tables(app)
    assert _rows(app, select(func.count()).select_from(package_table)) == [(0,)]
    assert client.get("/api/v1/meta/entities/pkg_account", headers=login("admin")).status_code == 404

    # a role granting an entity that does not exist would silently grant nothing: refused
    typo = _package()
    typo["documents"][2]["grants"].append({"entity": "pkg_acount", "actions": ["read"], "scope": "all"})
    resp = client.post("/api/v1/meta/packages", json=typo, headers=login("admin"))
    assert resp.status_code == 422 and resp.json["error"]["details"][0]["pointer"] == "/documents/2/grants/1/entity"

    # a quotes declaration must fit the package's entities (the quotes job relies on it)
    quotes = {**_package(), "quotes": {"entity": "pkg_account", "symbol": "code", "price": "nope", "prev_close": "customer"}}
    resp = client.post("/api/v1/meta/packages", json=quotes, headers=login("admin"))
    assert resp.status_code == 422
    assert {d["pointer"] for d in resp.json["error"]["details"]} >= {"/quotes/price", "/quotes/prev_close"}


def _tables(app: Any) -> set[str]:
    with app.extensions["fincrm"].runtime.engine.connect() as conn:
        return set(inspect(conn).get_table_names())


def test_publish_plan_apply_noop_history_rollback(app: Any, client: Any, login: Any) -> None:
    admin = login("admin")
    up = client.post("/api/v1/meta/packages", json=_package(), headers=admin)
    assert up.status_code == 201, up.get_data(as_text=True)
    assert up.json["version"] == "1.0.0" and up.json["active"] is False
    assert up.json["documents"] == {"entity": 1, "entity_overlay": 1, "role": 1, "trigger": 1, "report": 1, "seed": 1}

    dry = client.post("/api/v1/meta/packages/pkgtest/publish?dry_run=1", headers=admin)
    assert dry.status_code == 200, dry.get_data(as_text=True)
    plan = dry.json
    assert plan["dry_run"] is True and plan["noop"] is False
    ch = plan["changes"]
    assert ch["entities"]["added"] == ["pkg_account"]
    assert ch["entities"]["changed"]["customer"]["fields_added"] == ["pkg_segment"]
    assert ch["entities"]["changed"]["customer"]["tag_sets_added"] == ["pkg_tags"]
    assert ch["roles"]["added"] == ["pkg_clerk"] and ch["triggers"]["added"] == ["pkg_big_account"] and ch["reports"]["added"] == ["pkg_accounts"]
    assert ch["seeds"] == {"sales_script": 2}
    ops = {(s["op"], s["table"], s["name"]) for s in plan["migration"]}
    assert ("create_table", "e_pkg_account", "e_pkg_account") in ops
    assert any(o[0] == "add_column" and o[2] == "pkg_segment" for o in ops)
    # the dry run changed nothing
    assert "pkg_segment" not in _columns(app, "e_customer") and "e_pkg_account" not in _tables(app)
    assert client.get("/api/v1/meta/entities/pkg_account", headers=admin).status_code == 404
    assert client.get("/api/v1/records/sales_script", headers=admin).json["items"] == []

    pub = client.post("/api/v1/meta/packages/pkgtest/publish", headers=admin)
    assert pub.status_code == 200, pub.get_data(as_text=True)
    assert pub.json["migration"] == plan["migration"] and pub.json["changes"] == plan["changes"]
    # live at once: the entity, the field (writable, filterable), the report, the role, the seeds
    cust = client.post("/api/v1/records/customer", json={"name": "王芳", "pkg_segment": "a"}, headers=admin)
    assert cust.status_code == 201, cust.get_data(as_text=True)
    acct = client.post("/api/v1/records/pkg_account", json={"customer": cust.json["id"], "code": "A1", "balance": "2000000"}, headers=admin)
    assert acct.status_code == 201, acct.get_data(as_text=True)
    listed = client.get('/api/v1/records/customer?filter={"field":"pkg_segment","op":"eq","value":"a"}', headers=admin)
    assert [c["id"] for c in listed.json["items"]] == [cust.json["id"]]
    assert client.get("/api/v1/reports/pkg_accounts", headers=admin).json["rows"] == [[1]]
    scripts = client.get("/api/v1/records/sales_script?sort=code", headers=admin).json["items"]
    assert [s["code"] for s in scripts] == ["PKG-1", "PKG-2"]
    assert "pkg_clerk" in {r["name"] for r in client.get("/api/v1/meta/roles", headers=admin).json["items"]}
    tasks = client.get("/api/v1/records/task", headers=admin).json["items"]
    assert any(t["title"] == "大额账户回访" for t in tasks)  # the package's trigger fired on the write
    # the customer-360 offers the package's scripts: the one for the customer's tag first
    from engine.security.principal import Principal
    from engine.services.customer360 import Customer360

    cid = cust.json["id"]
    assert client.post(f"/api/v1/records/customer/{cid}/tags", json={"tag": "甲类"}, headers=admin).status_code == 201
    with app.app_context():
        view = Customer360(app.extensions["fincrm"].records).view(Principal.system("t"), cid)
    assert [s["code"] for s in view["scripts"]] == ["PKG-2", "PKG-1"]
    # … and the package's relation as a section of its own, on the page too
    mine = next(r for r in view["more_sections"] if r["name"] == "pkg_accounts")
    assert [i["code"] for i in mine["section"].items] == ["A1"] and "customer" not in mine["columns"]
    page = signed_in(app, "admin").get(f"/c360/{cid}").get_data(as_text=True)
    assert 'data-relation="pkg_accounts"' in page and 'id="c360-rel-pkg_accounts"' in page
    assert 'id="c360-scripts"' in page and 'data-code="PKG-2"' in page

    # the same content again: a no-op, nothing written
    before = _rows(app, select(func.count()).select_from(package_table))
    again = client.post("/api/v1/meta/packages/pkgtest/publish", headers=admin)
    assert again.status_code == 200 and again.json["noop"] is True
    assert _rows(app, select(func.count()).select_from(package_table)) == before

    # version 1.1.0 adds a field; data is written into it
    v2 = _package("1.1.0", extra_field=True)
    pub2 = client.post("/api/v1/meta/packages", json=v2, headers=admin)
    assert pub2.status_code == 201
    plan2 = client.post("/api/v1/meta/packages/pkgtest/publish", headers=admin).json
    assert plan2["changes"]["entities"]["changed"]["customer"]["fields_added"] == ["pkg_score"]
    assert plan2["changes"]["seeds"] == {}  # seeds already there: never inserted twice
    v = client.get(f"/api/v1/records/customer/{cust.json['id']}", headers=admin).json["version"]
    upd = client.patch(f"/api/v1/records/customer/{cust.json['id']}", json={"pkg_score": 77}, headers={**admin, "If-Match": str(v)})
    assert upd.status_code == 200, upd.get_data(as_text=True)

    hist = client.get("/api/v1/meta/packages/pkgtest", headers=admin).json["versions"]
    assert [(h["version"], h["active"]) for h in hist] == [("1.0.0", False), ("1.1.0", True)]
    assert hist[0]["retired_at"] and hist[1]["published_by"] == "admin"

    # rollback: the previous metadata, every record and value kept
    rb = client.post("/api/v1/meta/packages/pkgtest/rollback", headers=admin)
    assert rb.status_code == 200, rb.get_data(as_text=True)
    assert rb.json["version"] == "1.0.0" and rb.json["rolled_back_from"] == "1.1.0"
    fields = {f["name"] for f in client.get("/api/v1/meta/entities/customer", headers=admin).json["fields"]}
    assert "pkg_segment" in fields and "pkg_score" not in fields
    got = client.get(f"/api/v1/records/customer/{cust.json['id']}", headers=admin).json
    assert got["pkg_segment"] == "a" and "pkg_score" not in got
    assert "pkg_score" in _columns(app, "e_customer")  # the column and its data stay
    # publishing 1.1.0 again brings the field back with its value
    again = client.post("/api/v1/meta/packages/pkgtest/publish?version=1.1.0", headers=admin)
    assert again.status_code == 200 and again.json["noop"] is False
    assert client.get(f"/api/v1/records/customer/{cust.json['id']}", headers=admin).json["pkg_score"] == 77

    # rolling back twice unpublishes the package; its records stay in the database
    assert client.post("/api/v1/meta/packages/pkgtest/rollback", headers=admin).status_code == 200
    assert client.post("/api/v1/meta/packages/pkgtest/rollback", headers=admin).status_code == 200
    assert client.get("/api/v1/meta/entities/pkg_account", headers=admin).status_code == 404
    assert "pkg_clerk" not in {r["name"] for r in client.get("/api/v1/meta/roles", headers=admin).json["items"]}
    assert _rows(app, select(func.count()).select_from(table("e_pkg_account"))) == [(1,)]
    assert client.post("/api/v1/meta/packages/pkgtest/rollback", headers=admin).status_code == 404


def test_export_moves_the_customisation_to_another_system(app: Any, client: Any, login: Any, tmp_path: Path) -> None:
    admin = login("admin")
    assert client.post("/api/v1/meta/packages", json=_package(), headers=admin).status_code == 201
    assert client.post("/api/v1/meta/packages/pkgtest/publish", headers=admin).status_code == 200
    # a business user's runtime change on top: a JSON field on the package's entity
    added = client.post("/api/v1/meta/entities/pkg_account/fields", json={"name": "note", "type": "string", "label": L}, headers=admin)
    assert added.status_code == 201, added.get_data(as_text=True)
    exported = client.get("/api/v1/meta/packages/pkgtest/export", headers=admin)
    assert exported.status_code == 200
    doc = exported.json
    assert doc["version"] == "1.0.1" and 'filename="pkgtest-1.0.1.json"' in exported.headers["Content-Disposition"]
    kinds = [(d["kind"], d["name"]) for d in doc["documents"]]
    assert ("entity_overlay", "pkg_account") in kinds and ("entity", "pkg_account") in kinds

    # "production": another database; the exported package publishes there whole
    import os

    from app import create_app
    from tests.conftest import TEST_DB_URL, reset_postgres

    prod_schema = f"fincrm_prod{os.getpid()}"
    prod_url = reset_postgres(TEST_DB_URL, prod_schema) if TEST_DB_URL else f"sqlite:///{tmp_path / 'prod.db'}"
    other = create_app(app_config(str(tmp_path / "prod"), prod_url))
    try:
        plan = publish_vertical(other, "pkgtest", doc=doc)
        assert plan["noop"] is False
        with other.app_context():
            from engine.security.principal import Principal

            spec = other.extensions["fincrm"].runtime.cached_snapshot().registry.entity("pkg_account")
            assert spec.field("note") is not None and spec.field("note").storage == "json"
            assert other.extensions["fincrm"].packages.history(Principal.system("t"), "pkgtest")[0]["version"] == "1.0.1"
    finally:
        dispose(other)
        if TEST_DB_URL:
            from sqlalchemy import create_engine, text

            engine = create_engine(TEST_DB_URL, isolation_level="AUTOCOMMIT")
            with engine.connect() as conn:
                conn.execute(text(f'DROP SCHEMA IF EXISTS "{prod_schema}" CASCADE'))
            engine.dispose()


def test_who_may_publish(app: Any, client: Any, login: Any) -> None:
    assert client.post("/api/v1/meta/packages", json=_package(), headers=login("rm1")).status_code == 403
    assert client.get("/api/v1/meta/packages", headers=login("ops1")).status_code == 403
    assert client.post("/api/v1/meta/packages/bank/publish?dry_run=1", headers=login("rm1")).status_code == 403
    # a template publisher may publish packages but not role changes (segregation of duties)
    sm = app.appbuilder.sm
    with app.app_context():
        sm.add_user("tp1", "tp1", "Test", "tp1@test.local", [sm.find_role("template_publisher")], password="Fincrm-test-pw-1")
    tp = login("tp1")
    assert client.post("/api/v1/meta/packages", json=_package(), headers=tp).status_code == 201
    refused = client.post("/api/v1/meta/packages/pkgtest/publish", headers=tp)
    assert refused.status_code == 403, refused.get_data(as_text=True)
    no_roles = copy.deepcopy(_package())
    no_roles["documents"] = [d for d in no_roles["documents"] if d["kind"] != "role"]
    no_roles["version"] = "1.0.1"
    assert client.post("/api/v1/meta/packages", json=no_roles, headers=tp).status_code == 201
    assert client.post("/api/v1/meta/packages/pkgtest/publish", headers=tp).status_code == 200
    listed = client.get("/api/v1/meta/packages", headers=tp).json["items"]
    assert {"bank", "securities", "insurance", "pkgtest"} <= {p["name"] for p in listed}
    assert next(p for p in listed if p["name"] == "pkgtest")["active_version"] == "1.0.1"
    # an audit entry per publish
    with app.extensions["fincrm"].runtime.engine.connect() as conn:
        from engine.security.audit import audit_table

        actions = [r[0] for r in conn.execute(select(audit_table.c.action).where(audit_table.c.entity == "pkgtest"))]
    assert actions == ["package_publish"]
    assert _rows(app, select(meta_doc_table.c.id).where(meta_doc_table.c.kind == "role")) == []  # roles were not changed at runtime
