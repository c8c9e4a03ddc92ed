"""``fincrm backup`` / ``fincrm restore``, run as an operator would, on the suite's database:
a bundle brings back every row and the audit chain after the database is wiped, and a bundle
that is damaged, made elsewhere, needs a key we lack, or is not confirmed changes nothing."""

from __future__ import annotations

import base64
import io
import json
import tarfile
from pathlib import Path
from typing import Any, Callable

import pytest
from click.testing import Result
from sqlalchemy import Column, Integer, MetaData, Table, delete, func, inspect, select, table
from stdnum.cn import ric

from engine.io import backup as bundles
from engine.security.audit import audit_table, verify
from engine.security.crypto import Keyring
from engine.security.principal import Principal
from engine.web.cli import main

SYSTEM = Principal.system("test")


def _id_number(n: int) -> str:
    body = f"110105198001{n:02d}{n:03d}"
    return next(body + d for d in "0123456789X" if ric.is_valid(body + d))


def _seed(app: Any, customers: int = 6) -> list[dict[str, Any]]:
    """Customers with encrypted ID numbers, one product, an edit and a deletion (audited)."""
    records = app.extensions["fincrm"].records
    made = [
        records.create(SYSTEM, "customer", {"name": f"王客户{i}", "aum": f"{1000 * (i + 1)}.00", "mobile": f"1380013{i:04d}", "id_number": _id_number(i + 1)})
        for i in range(customers)
    ]
    records.create(SYSTEM, "product", {"code": "W1", "name": "稳健理财90天", "type": "wealth"})
    records.update(SYSTEM, "customer", made[0]["id"], {"aum": "99999.00"}, made[0]["version"])
    records.delete(SYSTEM, "customer", made[-1]["id"])
    return [records.get(SYSTEM, "customer", c["id"]) for c in made[:-1]]


def _counts(app: Any) -> dict[str, int]:
    with app.extensions["fincrm"].runtime.engine.connect() as conn:
        names = inspect(conn).get_table_names()
        return {n: int(conn.execute(select(func.count()).select_from(table(n))).scalar_one()) for n in names}


def _wipe(app: Any) -> None:
    """Drop every table of the database (the disaster a restore recovers from)."""
    runtime = app.extensions["fincrm"].runtime
    runtime.dispose()
    with app.app_context():
        app.extensions["sqlalchemy"].engine.dispose()
    with runtime.begin() as conn:
        everything = MetaData()
        everything.reflect(conn)
        everything.drop_all(conn)


def _cli(app: Any, *args: str, answer: str | None = None) -> Result:
    result: Result = app.test_cli_runner().invoke(main, list(args), input=answer)
    assert "Traceback" not in result.output
    return result


def _manifest(path: Path) -> dict[str, Any]:
    with tarfile.open(path) as tar:
        member = tar.extractfile(bundles.MANIFEST_NAME)
        assert member is not None
        return json.loads(member.read())  # type: ignore[no-any-return]


def _rewrite_manifest(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    """The same dump under an edited manifest (the checksum still matches the dump)."""
    manifest = _manifest(path)
    with tarfile.open(path) as tar:
        data = tar.extractfile(manifest["dump"]["name"]).read()  # type: ignore[union-attr]
    change(manifest)
    body = json.dumps(manifest).encode()
    with tarfile.open(path, "w") as tar:
        for name, blob in ((bundles.MANIFEST_NAME, body), (manifest["dump"]["name"], data)):
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))


@pytest.fixture
def backed_up(app: Any, tmp_path: Path) -> tuple[Path, dict[str, int], list[dict[str, Any]]]:
    """A bundle of a seeded database: (path, row counts at backup time, the customers)."""
    customers = _seed(app)
    before = _counts(app)
    path = tmp_path / "fincrm.bundle"
    result = _cli(app, "backup", str(path))
    assert result.exit_code == 0, result.output
    assert "backup written" in result.output
    return path, before, customers


def test_restore_after_wipe_brings_back_every_row_and_the_audit_chain(app: Any, backed_up: Any) -> None:
    path, before, customers = backed_up
    runtime = app.extensions["fincrm"].runtime
    manifest = _manifest(path)
    assert manifest["dialect"] == runtime.dialect
    assert manifest["tables"] == before  # every table, system and entity, counted from the dump's snapshot
    assert {"e_customer", "fincrm_audit", "fincrm_state", "ab_user"} <= set(manifest["tables"])
    assert manifest["audit"]["length"] == before["fincrm_audit"]
    assert manifest["keys"]["key_ids"] == [runtime.keyring.current_id]
    blob = path.read_bytes()
    settings = app.config["FINCRM_SETTINGS"]
    for key in (settings.master_key, settings.index_key):  # no key material, raw or base64
        assert key not in blob and base64.b64encode(key) not in blob
    assert oct(path.stat().st_mode & 0o777) == "0o600"

    _wipe(app)
    assert _counts(app) == {}
    result = _cli(app, "restore", str(path), "--yes")
    assert result.exit_code == 0, result.output
    assert "audit chain OK" in result.output

    after = _counts(app)
    assert {t: n for t, n in after.items() if t != "fincrm_audit"} == {t: n for t, n in before.items() if t != "fincrm_audit"}
    assert after["fincrm_audit"] == before["fincrm_audit"] + 1  # the restore itself is audited
    assert verify(runtime.engine) == {"ok": True, "checked": before["fincrm_audit"] + 1, "first_bad": None}
    with runtime.engine.connect() as conn:
        last = conn.execute(select(audit_table.c.action).order_by(audit_table.c.seq.desc()).limit(1)).scalar_one()
    assert last == "restore"
    records = app.extensions["fincrm"].records
    assert [records.get(SYSTEM, "customer", c["id"]) for c in customers] == customers  # encrypted values decrypt
    fresh = records.create(SYSTEM, "customer", {"name": "新客户", "aum": "1.00"})
    assert fresh["id"] > max(c["id"] for c in customers)


def test_tables_made_after_the_backup_are_dropped_by_the_restore(app: Any, backed_up: Any) -> None:
    path, before, _ = backed_up
    runtime = app.extensions["fincrm"].runtime
    Table("e_later", MetaData(), Column("id", Integer, primary_key=True)).create(runtime.write_engine)
    result = _cli(app, "restore", str(path), "--yes")
    assert result.exit_code == 0, result.output
    assert "dropped by the restore: e_later" in result.output
    assert "e_later" not in _counts(app)


def test_a_tampered_dump_is_refused_and_nothing_is_replaced(app: Any, backed_up: Any) -> None:
    path, _, _ = backed_up
    with tarfile.open(path) as tar:
        dump = tar.getmember(_manifest(path)["dump"]["name"])
    raw = bytearray(path.read_bytes())
    raw[dump.offset_data + dump.size // 2] ^= 0x01  # one byte of the dump
    path.write_bytes(bytes(raw))
    app.extensions["fincrm"].records.create(SYSTEM, "customer", {"name": "备份后", "aum": "1.00"})
    live = _counts(app)
    result = _cli(app, "restore", str(path), "--yes")
    assert result.exit_code == 1
    assert "checksum mismatch" in result.output
    assert _counts(app) == live


def test_a_bundle_of_the_other_dialect_is_refused(app: Any, backed_up: Any) -> None:
    path, _, _ = backed_up
    runtime = app.extensions["fincrm"].runtime
    other = "sqlite" if runtime.dialect == "postgresql" else "postgresql"

    def elsewhere(m: dict[str, Any]) -> None:
        m["dialect"] = other
        m["schema"] = "public"
        m["dump"]["name"] = bundles.DUMP_NAMES[other]

    _rewrite_manifest(path, elsewhere)
    live = _counts(app)
    result = _cli(app, "restore", str(path), "--yes")
    assert result.exit_code == 1
    assert f"wrong dialect: this bundle holds a {other} database" in result.output
    assert _counts(app) == live


@pytest.mark.parametrize(
    "keyring, said",
    [
        (Keyring(b"z" * 32), "missing key: encrypted values in this backup need key id(s)"),
        (Keyring(b"k" * 32, index_key=b"i" * 32), "another blind-index key"),
    ],
    ids=["data-key", "index-key"],
)
def test_a_bundle_needing_a_key_we_lack_is_refused(app: Any, backed_up: Any, monkeypatch: pytest.MonkeyPatch, keyring: Keyring, said: str) -> None:
    path, _, _ = backed_up
    runtime = app.extensions["fincrm"].runtime
    needed = _manifest(path)["keys"]["key_ids"]
    monkeypatch.setattr(runtime, "keyring", keyring)
    live = _counts(app)
    result = _cli(app, "restore", str(path), "--yes")
    assert result.exit_code == 1
    assert said in result.output
    if keyring.current_id not in needed:
        assert needed[0] in result.output
    assert _counts(app) == live


def test_answering_no_changes_nothing(app: Any, backed_up: Any) -> None:
    path, _, _ = backed_up
    app.extensions["fincrm"].records.create(SYSTEM, "customer", {"name": "备份后", "aum": "1.00"})
    live = _counts(app)
    result = _cli(app, "restore", str(path), answer="n\n")
    assert result.exit_code == 1
    assert "every check passed" in result.output and "Replace the current database" in result.output
    assert "nothing was changed" in result.output
    assert _counts(app) == live


def test_unreadable_bundles_get_a_clear_message(app: Any, tmp_path: Path) -> None:
    missing = _cli(app, "restore", str(tmp_path / "nope.bundle"), "--yes")
    assert missing.exit_code == 1 and "no such file" in missing.output
    text_file = tmp_path / "notes.txt"
    text_file.write_text("not a backup\n")
    junk = _cli(app, "restore", str(text_file), "--yes")
    assert junk.exit_code == 1 and "not a FinCRM backup bundle" in junk.output
    no_manifest = tmp_path / "other.tar"
    with tarfile.open(no_manifest, "w") as tar:
        tar.add(text_file, arcname="notes.txt")
    other = _cli(app, "restore", str(no_manifest), "--yes")
    assert other.exit_code == 1 and "has no manifest.json" in other.output


def test_a_restored_database_that_differs_from_its_manifest_is_reported(app: Any, backed_up: Any) -> None:
    path, _, _ = backed_up
    runtime = app.extensions["fincrm"].runtime
    report = bundles.restore(runtime, path)
    assert report["ok"] and report["mismatches"] == [] and report["audit"]["matches_backup"]
    with runtime.begin() as conn:
        conn.execute(delete(audit_table).where(audit_table.c.seq == 2))
    spoilt = bundles.check_restored(runtime, _manifest(path))
    entries = _manifest(path)["tables"]["fincrm_audit"]
    assert not spoilt["ok"]
    assert spoilt["mismatches"] == [{"table": "fincrm_audit", "expected": entries, "found": entries - 1}]
    assert spoilt["audit"]["first_bad"] == 2
