"""The console script: demo seeding, audit verify, keys rotate — run as a user would."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select, text

from engine.web.cli import DEMO_STAFF, main

# The demo always runs on SQLite (the embedded default), whichever database the suite targets.

DEMO_PASSWORD = "Demo-Passw0rd-x"


def demo_env(data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment of a console user running the demo in ``data`` (SQLite, generated keys)."""
    for var in ("FINCRM_DATABASE_URL", "FINCRM_MASTER_KEY", "FINCRM_SECRET_KEY", "FINCRM_INDEX_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("FINCRM_DEMO_PASSWORD", DEMO_PASSWORD)
    monkeypatch.setenv("FINCRM_PASSWORD_HASH", "scrypt:16384:8:1")
    monkeypatch.setenv("FINCRM_DATA_DIR", str(data))


@pytest.fixture
def demo_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    data = tmp_path / "demo-data"
    demo_env(data, monkeypatch)
    result = CliRunner().invoke(main, ["demo", "--no-serve", "--customers", "40", "--data-dir", str(data)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return data


def test_demo_seeds_staff_and_customers_that_log_in(demo_dir: Path) -> None:
    from app import create_app

    assert (demo_dir / "fincrm.db").exists()
    assert oct((demo_dir / "master.key").stat().st_mode & 0o777) == "0o600"
    app = create_app({"FINCRM_DATA_DIR": str(demo_dir), "RATELIMIT_ENABLED": False})
    client = app.test_client()
    tokens = {}
    for username, *_ in DEMO_STAFF:
        resp = client.post("/api/v1/security/login", json={"username": username, "password": DEMO_PASSWORD, "provider": "db"})
        assert resp.status_code == 200, username
        tokens[username] = {"Authorization": f"Bearer {resp.json['access_token']}"}
    mine = client.get("/api/v1/records/customer?limit=500", headers=tokens["rm1"]).json["items"]
    theirs = client.get("/api/v1/records/customer?limit=500", headers=tokens["rm2"]).json["items"]
    everyone = client.get("/api/v1/records/customer?limit=500", headers=tokens["admin"]).json["items"]
    assert mine and theirs and len(everyone) == 40
    assert not {c["id"] for c in mine} & {c["id"] for c in theirs}
    team = client.get("/api/v1/records/customer?limit=500", headers=tokens["sup1"]).json["items"]
    assert {c["id"] for c in team} == {c["id"] for c in mine} | {c["id"] for c in theirs}
    assert all("****" in c["mobile"] for c in mine if c["mobile"])
    assert client.get("/api/v1/records/customer", headers=tokens["auditor1"]).status_code == 403
    assert client.get("/api/v1/audit/verify", headers=tokens["auditor1"]).json["ok"] is True
    with app.extensions["fincrm"].runtime.engine.connect() as conn:
        raw = conn.execute(text("select id_number from e_customer where id_number is not null limit 5")).scalars().all()
    assert raw and all(v.startswith("v1.") for v in raw)


def _vertical_counts(demo_dir: Path) -> dict[str, int]:
    from app import create_app

    app = create_app({"FINCRM_DATA_DIR": str(demo_dir), "RATELIMIT_ENABLED": False})
    rt = app.extensions["fincrm"].runtime
    snap = rt.snapshot()
    with rt.engine.connect() as conn:
        counts = {name: conn.execute(select(func.count()).select_from(t)).scalar_one() for name, t in snap.tables.items()}
    counts["packages"] = len(snap.packages)
    rt.dispose()
    return counts


def test_demo_twice_does_not_duplicate(demo_dir: Path) -> None:
    before = _vertical_counts(demo_dir)
    result = CliRunner().invoke(main, ["demo", "--no-serve", "--customers", "40", "--data-dir", str(demo_dir)], catch_exceptions=False)
    assert result.exit_code == 0
    assert "already present" in result.output
    assert "template bank 1.0.0: already published" in result.output
    assert _vertical_counts(demo_dir) == before


def test_demo_publishes_every_vertical_with_its_data(demo_dir: Path) -> None:
    counts = _vertical_counts(demo_dir)
    assert counts["packages"] == 3  # fincrm demo: all templates by default
    core = {"branch", "customer", "product", "holding", "transaction", "interaction", "opportunity", "task", "ticket", "consent",
            "loan_application", "insurance_policy", "survey_response", "knowledge_article", "channel_cost", "sales_script"}
    vertical = {name: n for name, n in counts.items() if name not in core and name != "packages"}
    assert len(vertical) >= 8, vertical  # the verticals' own entities exist …
    assert sum(1 for n in vertical.values() if n > 0) >= 6, vertical  # … and most hold demo records
    assert counts["sales_script"] >= 15  # each vertical seeds its scripts


def test_demo_with_one_template(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "one"
    demo_env(data, monkeypatch)
    args = ["demo", "--no-serve", "--customers", "20", "--data-dir", str(data), "--template", "insurance"]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "template insurance" in result.output and "template bank" not in result.output
    assert _vertical_counts(data)["packages"] == 1
    bad = CliRunner().invoke(main, ["demo", "--no-serve", "--template", "telecom", "--data-dir", str(data)])
    assert bad.exit_code == 2 and "telecom" in bad.output


def test_audit_verify_names_a_tampered_entry(demo_dir: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(main, ["audit", "verify"], catch_exceptions=False)
    assert ok.exit_code == 0 and "OK" in ok.output
    from app import create_app

    app = create_app({"FINCRM_DATA_DIR": str(demo_dir)})
    with app.extensions["fincrm"].runtime.begin() as conn:
        conn.execute(text("update fincrm_audit set actor = 'intruder' where seq = 3"))
    bad = runner.invoke(main, ["audit", "verify"])
    assert bad.exit_code == 1
    assert "entry 3" in bad.output


def test_keys_rotate_reencrypts_and_values_still_read(demo_dir: Path) -> None:
    from app import create_app

    before = create_app({"FINCRM_DATA_DIR": str(demo_dir)})
    old_kid = before.extensions["fincrm"].runtime.keyring.current_id
    system = __import__("engine").Principal.system("test")
    first = before.extensions["fincrm"].records.list(system, "customer", limit=5).items
    result = CliRunner().invoke(main, ["keys", "rotate"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    after = create_app({"FINCRM_DATA_DIR": str(demo_dir)})
    rt = after.extensions["fincrm"].runtime
    assert rt.keyring.current_id != old_kid
    with rt.engine.connect() as conn:
        stored = conn.execute(text("select id_number from e_customer where id_number is not null")).scalars().all()
    assert stored and all(v.split(".")[1] == rt.keyring.current_id for v in stored)
    again = after.extensions["fincrm"].records.list(system, "customer", limit=5).items
    assert [c["id_number"] for c in again] == [c["id_number"] for c in first]
    by_id = after.extensions["fincrm"].records.list(
        system, "customer", filter={"field": "id_number", "op": "eq", "value": first[0]["id_number"]}
    ).items
    assert [c["id"] for c in by_id] == [first[0]["id"]]  # the blind index did not change with the key


def test_template_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """fincrm template list / publish --dry-run / publish / history / export / rollback, as IT runs them."""
    data = tmp_path / "tpl"
    demo_env(data, monkeypatch)
    run = CliRunner()
    assert run.invoke(main, ["init"], catch_exceptions=False).exit_code == 0
    listed = run.invoke(main, ["template", "list"], catch_exceptions=False)
    assert listed.exit_code == 0 and "insurance" in listed.output and "published: -" in listed.output
    dry = run.invoke(main, ["template", "publish", "insurance", "--dry-run"], catch_exceptions=False)
    assert dry.exit_code == 0, dry.output
    assert "dry run: nothing was changed" in dry.output and "schema steps:" in dry.output
    pub = run.invoke(main, ["template", "publish", "insurance"], catch_exceptions=False)
    assert pub.exit_code == 0 and "published insurance" in pub.output
    again = run.invoke(main, ["template", "publish", "insurance"], catch_exceptions=False)
    assert "already published: nothing to do" in again.output
    hist = run.invoke(main, ["template", "history", "insurance"], catch_exceptions=False)
    assert any(line.startswith("*") and "by system:cli" in line for line in hist.output.splitlines())
    out = tmp_path / "exported.json"
    exp = run.invoke(main, ["template", "export", "insurance", "-o", str(out)], catch_exceptions=False)
    assert exp.exit_code == 0 and out.exists()
    import json

    doc = json.loads(out.read_text(encoding="utf-8"))
    assert doc["name"] == "insurance" and doc["version"].endswith(".1")
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({**doc, "version": "x", "documents": [{"kind": "entity", "name": "Bad Name"}]}), encoding="utf-8")
    refused = run.invoke(main, ["template", "publish", "insurance", "--file", str(broken)])
    assert refused.exit_code == 1 and "/version" in refused.output and "/documents/0/name" in refused.output
    back = run.invoke(main, ["template", "rollback", "insurance"], catch_exceptions=False)
    assert back.exit_code == 0 and "to unpublished" in back.output
