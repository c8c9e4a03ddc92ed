"""Import (issue #6): hostile files, mapping and cleaning, modes, dedupe, dry run, scope, jobs."""

from __future__ import annotations

import csv
import datetime as dt
import io
import random
import time
from typing import Any

import pytest
from openpyxl import Workbook

from engine.demo import make_id_number, make_mobile
from tests.api_helpers import app, assert_error, client, finished_import, login, shared_app  # noqa: F401  (module-wide app)

HEADERS = ["姓名", "性别", "出生日期", "身份证号", "手机号", "职业", "资产规模(AUM)"]


@pytest.fixture(params=["inline", "workers"], autouse=True)
def import_mode(request: Any, monkeypatch: Any) -> str:
    """Every test twice: rows built by the importing process, and by a worker process (forced
    for these small files; a run that cannot use workers, such as an upsert, ignores them)."""
    if request.param == "workers":
        monkeypatch.setenv("FINCRM_IMPORT_WORKERS", "1")
        monkeypatch.setenv("FINCRM_IMPORT_WORKER_ROWS", "1")
    else:
        monkeypatch.setenv("FINCRM_IMPORT_WORKERS", "0")
    return str(request.param)


def _people(n: int, seed: int = 7) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        birth = dt.date(1960, 1, 1) + dt.timedelta(days=rng.randrange(0, 12000))
        male = rng.random() < 0.5
        out.append(
            {
                "name": f"测试{i:05d}",
                "gender": "男" if male else "女",
                "birth": birth,
                "id": make_id_number(rng, birth, male),
                "mobile": make_mobile(rng),
                "aum": f"{rng.randrange(0, 5_000_000)}.{rng.randrange(100):02d}",
            }
        )
    return out


def _csv(rows: list[list[Any]], headers: list[str] = HEADERS, encoding: str = "utf-8", delimiter: str = ",") -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter=delimiter)
    writer.writerow(headers)
    writer.writerows(rows)
    return buf.getvalue().encode(encoding)


def _row(p: dict[str, Any]) -> list[Any]:
    return [p["name"], p["gender"], p["birth"].strftime("%Y/%m/%d"), p["id"], p["mobile"], "工程师", p["aum"]]


def _upload(client: Any, headers: dict[str, str], data: bytes, filename: str = "customers.csv", entity: str = "customer", **options: Any) -> Any:
    form: dict[str, Any] = {k: str(v) for k, v in options.items()}
    form["file"] = (io.BytesIO(data), filename)
    return client.post(f"/api/v1/import/{entity}", headers=headers, data=form, content_type="multipart/form-data")


def _errors(client: Any, headers: dict[str, str], job: dict[str, Any]) -> list[list[str]]:
    resp = client.get(job["errors_url"], headers=headers)
    assert resp.status_code == 200
    text = resp.get_data().decode("utf-8-sig")
    return list(csv.reader(io.StringIO(text)))[1:]


def _clear(app: Any) -> list[dict[str, Any]]:
    """Every customer as the system sees them (in clear), in id order."""
    from engine.security.principal import Principal

    records = app.extensions["fincrm"].records
    with app.app_context():
        return records.list(Principal.system("test"), "customer", limit=500, sort="id").items


def _customers(client: Any, headers: dict[str, str], **params: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = {"limit": 500, **params}
        if cursor:
            query["cursor"] = cursor
        page = client.get("/api/v1/records/customer", headers=headers, query_string=query).get_json()
        items += page["items"]
        cursor = page["next_cursor"]
        if not cursor:
            return items


def test_utf8_file_with_chinese_headers_is_cleaned_and_imported(app: Any, client: Any, login: Any) -> None:
    admin = login("admin")
    p = _people(3)
    rows = [_row(x) for x in p]
    rows[0][3] = rows[0][3].replace("0", "０")  # full-width digits in an ID number
    rows[1][4] = f"+86 {p[1]['mobile'][:3]}-{p[1]['mobile'][3:7]}-{p[1]['mobile'][7:]}"
    rows[2][6] = "1,234,567.80"
    rows[2][0] = "  " + rows[2][0] + " "
    job = finished_import(client, admin, _upload(client, admin, _csv(rows)))
    assert job["status"] == "done", job
    assert job["counts"] == {"rows": 3, "inserted": 3, "updated": 0, "skipped": 0, "errors": 0}
    assert job["mapping"]["身份证号"] == "id_number" and job["mapping"]["性别"] == "gender"
    got = {c["name"]: c for c in _clear(app)}
    assert set(got) == {x["name"] for x in p}
    assert got[p[0]["name"]]["gender"] == ("male" if p[0]["gender"] == "男" else "female")
    assert got[p[0]["name"]]["birth_date"] == p[0]["birth"].isoformat()
    assert got[p[2]["name"]]["aum"] == "1234567.80"
    assert got[p[0]["name"]]["id_number"] == p[0]["id"] and got[p[1]["name"]]["mobile"] == p[1]["mobile"]
    # the encrypted ID is found through its blind index
    from engine.security.principal import Principal

    with app.app_context():
        found = app.extensions["fincrm"].records.list(Principal.system("test"), "customer", filter={"field": "id_number", "op": "eq", "value": p[0]["id"]})
    assert [c["name"] for c in found.items] == [p[0]["name"]]


def test_gbk_excel_export_is_recognised(client: Any, login: Any) -> None:
    admin = login("admin")
    p = _people(2, seed=11)
    job = finished_import(client, admin, _upload(client, admin, _csv([_row(x) for x in p], encoding="gbk")))
    assert job["encoding"] == "gb18030" and job["counts"]["inserted"] == 2
    job = finished_import(client, admin, _upload(client, admin, _csv([_row(x) for x in _people(1, seed=12)], encoding="utf-16", delimiter="\t")))
    assert job["encoding"] == "utf-16" and job["counts"]["inserted"] == 1, job


def test_xlsx_with_typed_cells_and_a_formula_cell(client: Any, login: Any) -> None:
    admin = login("admin")
    p = _people(3, seed=13)
    wb = Workbook()
    ws = wb.active
    ws.append(HEADERS)
    ws.append([p[0]["name"], p[0]["gender"], dt.datetime.combine(p[0]["birth"], dt.time()), p[0]["id"], int(p[0]["mobile"]), "教师", float(p[0]["aum"])])
    ws.append([p[1]["name"], p[1]["gender"], p[1]["birth"], p[1]["id"], p[1]["mobile"], "教师", p[1]["aum"]])
    ws.append(["=HYPERLINK(\"http://evil\",\"x\")", p[2]["gender"], p[2]["birth"], p[2]["id"], p[2]["mobile"], "教师", "1"])
    buf = io.BytesIO()
    wb.save(buf)
    job = finished_import(client, admin, _upload(client, admin, buf.getvalue(), filename="客户.xlsx"))
    assert job["format"] == "xlsx" and job["counts"]["inserted"] == 2 and job["counts"]["errors"] == 1, job
    errors = _errors(client, admin, job)
    assert errors[0][0] == "4" and errors[0][1] == "姓名" and "formula" in errors[0][3]
    assert errors[0][2].startswith("'") or not errors[0][2].startswith("=")  # formula-safe error file


def test_hostile_files_get_clear_400s_and_write_nothing(client: Any, login: Any) -> None:
    admin = login("admin")
    cases = [
        (b"", "empty"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x01" + bytes(range(256)) * 4, "binary"),
        (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 600, ".xls"),
        ("姓名,手机号\n".encode() + b"\x80\x80abc\xff\n", "encoding"),
        (b"PK\x03\x04 definitely not a zip", "XLSX"),
        ("\n\n".encode(), "empty"),
    ]
    for data, word in cases:
        resp = _upload(client, admin, data, filename="customers.csv")
        assert_error(resp, 400, field="file")
        assert word in resp.get_json()["error"]["details"][0]["message"], (word, resp.get_json())
    # missing required column, duplicated header, unknown option, unknown mapping target
    assert_error(_upload(client, admin, _csv([["男"]], headers=["性别"])), 400, field="name")
    resp = _upload(client, admin, _csv([["a", "b"]], headers=["姓名", "姓名"]))
    assert_error(resp, 400, field="姓名")
    assert "duplicate" in resp.get_json()["error"]["details"][0]["message"]
    assert_error(_upload(client, admin, _csv([_row(_people(1)[0])]), mode="replace"), 400, field="mode")
    assert_error(_upload(client, admin, _csv([_row(_people(1)[0])]), colour="red"), 400, field="colour")
    assert_error(_upload(client, admin, _csv([_row(_people(1)[0])]), mapping='{"姓名": "nickname"}'), 400, field="mapping.姓名")
    assert_error(_upload(client, admin, _csv([_row(_people(1)[0])]), mapping="{not json"), 400, field="mapping")
    assert_error(_upload(client, admin, _csv([_row(_people(1)[0])]), entity="no_such_entity"), 404)
    resp = client.post("/api/v1/import/customer", headers=admin, data={"mode": "insert"}, content_type="multipart/form-data")
    assert_error(resp, 400, field="file")
    assert _customers(client, admin) == []


def test_upload_over_the_limit_is_413(app: Any, client: Any, login: Any) -> None:
    admin = login("admin")
    app.config["FINCRM_IMPORT_MAX_BYTES"] = 10_000
    try:
        resp = _upload(client, admin, _csv([_row(x) for x in _people(400)]))
        assert_error(resp, 413)
    finally:
        app.config.pop("FINCRM_IMPORT_MAX_BYTES")
    assert _customers(client, admin) == []


def test_ten_percent_bad_rows_skip_or_abort(client: Any, login: Any) -> None:
    admin = login("admin")
    p = _people(200, seed=21)
    rows = [_row(x) for x in p]
    for i in range(0, 200, 10):
        kind = (i // 10) % 4
        if kind == 0:
            rows[i][3] = rows[i][3][:-1] + ("0" if rows[i][3][-1] != "0" else "1")  # bad checksum
        elif kind == 1:
            rows[i][4] = "12345"
        elif kind == 2:
            rows[i][2] = "1990-13-45"
        else:
            rows[i][0] = "=cmd|' /C calc'!A0"
    data = _csv(rows)
    job = finished_import(client, admin, _upload(client, admin, data, on_error="abort"))
    assert job["status"] == "failed" and job["counts"]["errors"] == 20 and job["counts"]["inserted"] == 0, job
    assert len(_errors(client, admin, job)) == 20
    assert _customers(client, admin) == []
    job = finished_import(client, admin, _upload(client, admin, data, batch_size=37))
    assert job["status"] == "done" and job["counts"]["inserted"] == 180 and job["counts"]["errors"] == 20, job
    errors = _errors(client, admin, job)
    assert sorted(int(e[0]) for e in errors) == [i + 2 for i in range(0, 200, 10)]
    by_row = {int(e[0]): e for e in errors}
    bad_id = by_row[2]
    assert bad_id[1] == "身份证号" and rows[0][3] not in bad_id[2] and "*" in bad_id[2]  # masked like reads
    assert by_row[32][2].startswith("'=")  # formula neutralised in the error file
    assert len(_customers(client, admin)) == 180


def test_dry_run_previews_masked_and_writes_nothing(client: Any, login: Any) -> None:
    admin, rm1 = login("admin"), login("rm1")
    p = _people(5, seed=31)
    job = finished_import(client, rm1, _upload(client, rm1, _csv([_row(x) for x in p]), dry_run="1"))
    assert job["status"] == "done" and job["counts"]["inserted"] == 5, job
    assert _customers(client, admin) == []
    preview = job["preview"]
    assert len(preview) == 5
    assert all(p[0]["id"] != r.get("id_number") for r in preview)
    # the preview shows values exactly as rm1's reads will: compare with the real import read back
    job = finished_import(client, rm1, _upload(client, rm1, _csv([_row(x) for x in p])))
    stored = sorted(_customers(client, rm1), key=lambda c: c["id"])
    for shown, record in zip(preview, stored):
        for name in ("name", "id_number", "mobile", "aum", "birth_date"):
            assert shown.get(name) == record.get(name), (name, shown, record)


def test_upsert_by_encrypted_id_updates_and_keeps_empty_cells(app: Any, client: Any, login: Any) -> None:
    admin = login("admin")
    p = _people(4, seed=41)
    finished_import(client, admin, _upload(client, admin, _csv([_row(x) for x in p[:2]])))
    before = {c["name"]: c for c in _clear(app)}
    # row 1: same ID, new mobile, empty occupation (kept); row 2: new person
    new_mobile = make_mobile(random.Random(99))
    changed = [p[0]["name"], "", "", p[0]["id"], new_mobile, "", ""]
    job = finished_import(client, admin, _upload(client, admin, _csv([changed, _row(p[2])]), mode="upsert"))
    assert job["counts"] == {"rows": 2, "inserted": 1, "updated": 1, "skipped": 0, "errors": 0}, job
    after = {c["name"]: c for c in _clear(app)}
    assert after[p[0]["name"]]["mobile"] == new_mobile and after[p[0]["name"]]["occupation"] == "工程师"
    assert after[p[0]["name"]]["version"] == before[p[0]["name"]]["version"] + 1
    history = client.get(f"/api/v1/records/customer/{after[p[0]['name']]['id']}/history", headers=admin).get_json()["items"]
    assert history[0]["action"] == "update" and "mobile" in history[0]["detail"]["changes"]


def test_dedupe_within_the_file_and_against_the_database(app: Any, client: Any, login: Any) -> None:
    admin = login("admin")
    p = _people(3, seed=51)
    finished_import(client, admin, _upload(client, admin, _csv([_row(p[0])])))
    rows = [_row(p[0]), _row(p[1]), _row(p[1]), _row(p[2])]
    rows[2][5] = "医生"
    job = finished_import(client, admin, _upload(client, admin, _csv(rows), dedupe="skip"))
    assert job["counts"] == {"rows": 4, "inserted": 2, "updated": 0, "skipped": 2, "errors": 0}, job
    job = finished_import(client, admin, _upload(client, admin, _csv(rows), dedupe="error"))
    assert job["counts"]["errors"] == 4 and job["counts"]["inserted"] == 0, job
    messages = sorted(e[3] for e in _errors(client, admin, job))
    assert messages == ["already exists", "already exists", "already exists", "duplicate of row 3"]
    job = finished_import(client, admin, _upload(client, admin, _csv(rows), dedupe="update"))
    assert job["counts"]["updated"] == 3 and job["counts"]["skipped"] == 1, job
    occupations = {c["name"]: c["occupation"] for c in _clear(app)}
    assert occupations[p[1]["name"]] == "医生"  # the later row of the file won


def test_relationship_manager_cannot_reach_another_managers_customer_by_import(app: Any, client: Any, login: Any) -> None:
    rm1, rm2, admin = login("rm1"), login("rm2"), login("admin")
    p = _people(3, seed=61)
    job = finished_import(client, rm2, _upload(client, rm2, _csv([_row(p[0])])))
    assert job["counts"]["inserted"] == 1
    theirs = _customers(client, rm2)[0]
    # upsert with rm2's customer's ID number: refused like a create, nothing changed or shown
    hijack = [_row(p[0])[:4] + [make_mobile(random.Random(5)), "黑客", "9"]]
    job = finished_import(client, rm1, _upload(client, rm1, _csv(hijack), mode="upsert"))
    assert job["counts"]["updated"] == 0 and job["counts"]["errors"] == 1, job
    assert _errors(client, rm1, job)[0][3] == "is already used by another record"
    assert job["preview"] == []
    assert _customers(client, rm2)[0]["version"] == theirs["version"]
    assert _customers(client, rm1) == []
    # rows owned by someone else are outside what rm1 may create
    job = finished_import(client, rm1, _upload(client, rm1, _csv([_row(p[1]) + ["rm2"]], headers=HEADERS + ["客户经理"])))
    assert job["counts"]["inserted"] == 0 and job["counts"]["errors"] == 1, job
    assert "outside" in _errors(client, rm1, job)[0][3]
    # another user's job and its error file are not there for rm1
    assert client.get(f"/api/v1/import/jobs/{job['id']}", headers=rm2).status_code == 404
    assert client.get(f"/api/v1/import/jobs/{job['id']}/errors", headers=rm2).status_code == 404
    assert client.get(f"/api/v1/import/jobs/{job['id']}", headers=admin).status_code == 200


@pytest.mark.parametrize("import_mode", ["workers"], indirect=True)
def test_fifty_thousand_rows(client: Any, login: Any, monkeypatch: Any) -> None:
    monkeypatch.setenv("FINCRM_IMPORT_WORKERS", "2")  # built by two worker processes
    admin = login("admin")
    p = list({x["id"]: x for x in _people(50_100, seed=71)}.values())[:50_000]
    job = finished_import(client, admin, _upload(client, admin, _csv([_row(x) for x in p]), batch_size=5000))
    assert job["status"] == "done" and job["counts"]["inserted"] == 50_000 and job["total_rows"] == 50_000, job
    count = client.get("/api/v1/records/customer", headers=admin, query_string={"limit": 1, "count": "1"}).get_json()
    assert count.get("count", 10_000) == 10_000  # capped count: more than the cap are there


def test_an_upload_whose_process_died_is_finished_by_the_jobs_pass(app: Any, client: Any, login: Any, tmp_path: Any) -> None:
    """A job left 'running' with an old heartbeat (its process was killed) is picked up by the
    jobs pass (`fincrm jobs run` / `fincrm worker`) and continues after its last batch."""
    from sqlalchemy import update

    from engine.io.importer import ImportOptions, import_job_table
    from engine.web.imports_api import importer, resume_interrupted

    admin = login("admin")
    p = _people(30, seed=81)
    source = tmp_path / "upload.csv"
    source.write_bytes(_csv([_row(x) for x in p]))
    with app.app_context():
        uid = int(app.appbuilder.sm.find_user(username="admin").id)
        from engine.web.auth import principal_for_user_id

        svc = app.extensions["fincrm"]
        svc.authz.refresh(svc.runtime.stamps()[1])
        principal = principal_for_user_id(uid, svc.runtime.stamps()[1])[0]
        imp = importer()
        job = imp.create(principal, "customer", source, "upload.csv", ImportOptions(batch_size=10))
        assert not source.exists()  # the upload now belongs to the job
        assert imp.claim(job["id"])
        long_ago = dt.datetime(2020, 1, 1)
        with app.extensions["fincrm"].runtime.begin() as conn:
            conn.execute(update(import_job_table).where(import_job_table.c.id == job["id"]).values(heartbeat=long_ago))
    resumed = resume_interrupted(app)
    assert [j["id"] for j in resumed] == [job["id"]] and resumed[0]["status"] == "done"
    assert resumed[0]["counts"]["inserted"] == 30 and resumed[0]["created_by"] == "admin"
    assert client.get(f"/api/v1/import/jobs/{job['id']}", headers=admin).get_json()["status"] == "done"
    assert resume_interrupted(app) == []


def test_background_job_reports_progress_then_finishes(app: Any, client: Any, login: Any) -> None:
    admin = login("admin")
    app.config["FINCRM_IMPORT_WAIT"] = 0
    try:
        resp = _upload(client, admin, _csv([_row(x) for x in _people(3000, seed=83)]), batch_size=100)
    finally:
        app.config.pop("FINCRM_IMPORT_WAIT")
    assert resp.status_code == 202 and resp.headers["Location"].endswith(f"/import/jobs/{resp.get_json()['id']}")
    seen = set()
    job = resp.get_json()
    while job["status"] in ("queued", "running"):
        seen.add(job["rows_done"])
        time.sleep(0.05)
        job = client.get(f"/api/v1/import/jobs/{job['id']}", headers=admin).get_json()
    assert job["status"] == "done" and job["rows_done"] == job["total_rows"] == 3000
    assert job["counts"]["inserted"] + job["counts"]["errors"] == 3000
    listed = client.get("/api/v1/import/jobs", headers=admin).get_json()["items"]
    assert listed[0]["id"] == job["id"]


def test_references_by_name_and_owners_by_username(app: Any, client: Any, login: Any) -> None:
    admin = login("admin")
    for code, name in (("BJ", "北京分行"), ("SH", "上海分行"), ("SH2", "上海分行")):
        assert client.post("/api/v1/records/branch", headers=admin, json={"code": code, "name": name}).status_code == 201
    p = _people(4, seed=87)
    rows = [_row(x) + extra for x, extra in zip(p, (["北京分行", "rm1"], ["上海分行", "rm2"], ["深圳分行", "rm1"], ["北京分行", "nobody"]))]
    job = finished_import(client, admin, _upload(client, admin, _csv(rows, headers=HEADERS + ["所属机构", "客户经理"])))
    assert job["counts"]["inserted"] == 1 and job["counts"]["errors"] == 3, job
    messages = {int(e[0]): (e[1], e[3]) for e in _errors(client, admin, job)}
    assert messages[3] == ("所属机构", "2 branch records have this name: give the id")
    assert messages[4] == ("所属机构", "no branch has this name (within what you may read)")
    assert messages[5] == ("客户经理", "no user has this username")
    stored = _clear(app)
    with app.app_context():
        rm1 = int(app.appbuilder.sm.find_user(username="rm1").id)
    bj = [b for b in client.get("/api/v1/records/branch", headers=admin).get_json()["items"] if b["code"] == "BJ"][0]
    assert len(stored) == 1 and stored[0]["owner"] == rm1 and stored[0]["branch"] == bj["id"]


def test_rows_a_rule_rejects_after_the_write_are_reported_and_the_rest_decrypt(app: Any, client: Any, login: Any) -> None:
    """The batch is written, the cross-field rules reject one row, the batch is redone without
    it: the others keep the ids their ciphertexts were sealed with, so they still decrypt."""
    admin = login("admin")
    people = _people(6, seed=93)
    minor_birth = dt.date.today() - dt.timedelta(days=3000)
    people[2] = {**people[2], "birth": minor_birth, "id": make_id_number(random.Random(5), minor_birth, True)}
    job = finished_import(client, admin, _upload(client, admin, _csv([_row(x) for x in people])))
    assert job["status"] == "done" and job["counts"]["inserted"] == 5 and job["counts"]["errors"] == 1, job
    (error,) = _errors(client, admin, job)
    assert error[0] == "4" and "学生" in error[-1], error
    stored = {c["name"]: c for c in _clear(app)}
    for i, p in enumerate(people):
        if i == 2:
            assert p["name"] not in stored
            continue
        assert stored[p["name"]]["id_number"] == p["id"]  # decrypts: sealed with the id it was stored under


def test_cells_equal_as_numbers_but_of_other_types_are_not_confused() -> None:
    """The per-column memo tells 1, 1.0 and True apart (they hash alike)."""
    from engine.io.importer import _Column, _parse_batch
    from engine.meta.registry import freeze_field

    f = freeze_field({"name": "n", "type": "integer", "label": {"zh": "数", "en": "N"}})
    rows = _parse_batch([_Column(0, "N", f)], {}, [(2, [1]), (3, [True]), (4, [1.0]), (5, ["1"])], {})
    assert [r.values.get("n") for r in rows] == [1, None, 1, 1]
    assert [bool(r.errors) for r in rows] == [False, True, False, False]


@pytest.mark.parametrize("import_mode", ["inline"], indirect=True)
def test_rows_a_worker_builds_are_stored_as_the_importing_process_builds_them(app: Any, client: Any, login: Any, monkeypatch: Any) -> None:
    """One file — good rows, bad cells, a formula, a missing required cell, a repeated key, a key
    already stored, a branch named by title, an owner by username — imported by the job's own
    process and by a worker process: the same records (they decrypt), errors and preview."""
    from engine.io.importer import Importer
    from tests.api_helpers import wipe_records

    admin = login("admin")
    assert client.post("/api/v1/records/branch", headers=admin, json={"code": "BJ", "name": "北京分行"}).status_code == 201
    p = _people(12, seed=101)
    rows = [_row(x) + ["", "rm1"] for x in p]
    rows[1][3] = rows[1][3][:-1] + ("0" if rows[1][3][-1] != "0" else "1")  # check digit
    rows[2][4] = "=cmd|' /C calc'!A0"  # a formula
    rows[3][0] = ""  # the required name
    rows[4] = list(rows[0])  # the same ID number again
    rows[5][7] = "北京分行"  # a branch by title: built by the importing process
    rows[6][8] = "nobody"  # no such user
    rows[7][6] = "12.345"  # too many decimals
    stored_before = [_row(p[8])]  # already in the database: skipped
    headers = HEADERS + ["所属机构", "客户经理"]
    built: list[int] = []
    original = Importer._built

    def spy(self: Any, *args: Any, **kwargs: Any) -> Any:
        built.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Importer, "_built", spy)
    outcome = []
    for workers in ("0", "1"):
        wipe_records(app)
        assert client.post("/api/v1/records/branch", headers=admin, json={"code": "BJ", "name": "北京分行"}).status_code in (201, 409)
        monkeypatch.setenv("FINCRM_IMPORT_WORKERS", "0")
        finished_import(client, admin, _upload(client, admin, _csv(stored_before)))
        monkeypatch.setenv("FINCRM_IMPORT_WORKERS", workers)
        monkeypatch.setenv("FINCRM_IMPORT_WORKER_ROWS", "1")
        job = finished_import(client, admin, _upload(client, admin, _csv(rows, headers=headers)))
        assert job["status"] == "done", job
        volatile = {"id", "created_at", "updated_at", "branch"}
        records = sorted(({k: v for k, v in c.items() if k not in volatile} for c in _clear(app)), key=lambda c: c["name"])
        preview = [{k: v for k, v in r.items() if k not in volatile} for r in job["preview"]]
        outcome.append((job["counts"], sorted(_errors(client, admin, job)), records, preview))
    assert built == [1], "the second run built its rows in a worker"
    assert outcome[0] == outcome[1]
    counts, errors, records, preview = outcome[1]
    assert counts == {"rows": 12, "inserted": 5, "updated": 0, "skipped": 2, "errors": 5}, counts
    assert [(e[0], e[1]) for e in errors] == [("3", "身份证号"), ("4", "手机号"), ("5", "姓名"), ("8", "客户经理"), ("9", "资产规模(AUM)")]
    by_name = {r["name"]: r for r in records}
    assert by_name[p[5]["name"]]["id_number"] == p[5]["id"]  # decrypts: sealed with the id it was stored under
    assert len(preview) == 5 and preview[0]["_row"] == 2


@pytest.mark.parametrize("import_mode", ["inline"], indirect=True)
def test_a_job_collects_garbage_less_often_and_puts_the_thresholds_back() -> None:
    import gc

    from engine.io.importer import _GC_THRESHOLD, _fewer_collections

    before = gc.get_threshold()
    with _fewer_collections():
        with _fewer_collections():  # a second job in another thread of the same process
            assert gc.get_threshold()[0] == _GC_THRESHOLD
        assert gc.get_threshold()[0] == _GC_THRESHOLD  # the first is still running
    assert gc.get_threshold() == before


@pytest.mark.parametrize("import_mode", ["inline"], indirect=True)
def test_sqlite_batches_commit_in_order_checkpoint_less_often_and_give_the_connection_back(app: Any, monkeypatch: Any) -> None:
    """A job's SQLite batches: each commit is made by another thread, the next transaction
    begins once it is done; the log is checkpointed less often while the job runs and the
    connection gets its own setting back; a commit that fails is raised to the job, with
    nothing of its batch kept."""
    import threading

    from sqlalchemy import Column, Integer, MetaData, Table, func, select
    from sqlalchemy.engine.base import RootTransaction

    from engine.io.importer import _CHECKPOINT_PAGES, _SqliteBatches

    runtime = app.extensions["fincrm"].runtime
    if runtime.dialect != "sqlite":
        pytest.skip("a SQLite setting")
    scratch = Table("t_batch_probe", MetaData(), Column("n", Integer))
    with runtime.begin() as conn:
        scratch.create(conn, checkfirst=True)

    def probes() -> int:
        with runtime.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(scratch)).scalar_one())

    def probe(conn: Any, n: int) -> None:
        conn.execute(scratch.insert().values(n=n))

    committed_by: list[int] = []
    commit = RootTransaction.commit

    def watched(self: Any) -> None:
        committed_by.append(threading.get_ident())
        commit(self)

    monkeypatch.setattr(RootTransaction, "commit", watched)
    before = probes()
    batches = _SqliteBatches(runtime.write_engine)
    raw = batches.conn.connection.dbapi_connection
    assert raw.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == _CHECKPOINT_PAGES
    for n in (1, 2, 3):
        with batches.transaction() as conn:
            probe(conn, n)
    batches.close()
    assert probes() == before + 3
    assert committed_by and threading.get_ident() not in committed_by
    assert raw.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1000

    def fails(self: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(RootTransaction, "commit", fails)
    batches = _SqliteBatches(runtime.write_engine)
    with batches.transaction() as conn:
        probe(conn, 4)
    with pytest.raises(OSError, match="disk full"):
        batches.close()
    monkeypatch.undo()
    assert probes() == before + 3
    with runtime.write_engine.connect() as conn:  # the connection went back to the pool usable
        assert conn.exec_driver_sql("SELECT 1").scalar_one() == 1
    with runtime.begin() as conn:
        scratch.drop(conn)


def test_a_clean_insert_looks_no_key_up_until_the_database_refuses_one(app: Any, client: Any, login: Any, monkeypatch: Any) -> None:
    """Inserting by a key with a unique constraint, rows go in without a lookup first; the batch
    the constraint refuses is redone after the lookup, and every later batch looks its keys up
    before it is written. The outcome is the one the lookup gives."""
    from engine.io.importer import Importer

    admin = login("admin")
    p = _people(9, seed=131)
    finished_import(client, admin, _upload(client, admin, _csv([_row(p[4])])))  # stored before
    looked_up: list[int] = []
    original = Importer._existing

    def spy(self: Any, plan: Any, keys: list[Any]) -> Any:
        looked_up.append(len(keys))
        return original(self, plan, keys)

    monkeypatch.setattr(Importer, "_existing", spy)
    job = finished_import(client, admin, _upload(client, admin, _csv([_row(x) for x in p[:3]]), batch_size=3))
    assert job["counts"] == {"rows": 3, "inserted": 3, "updated": 0, "skipped": 0, "errors": 0}, job
    assert looked_up == []
    # batches (p3, p4, p5) and (p6, p7, p8): p4 is already stored
    rows = [_row(x) for x in p[3:]]
    job = finished_import(client, admin, _upload(client, admin, _csv(rows), batch_size=3, dedupe="skip"))
    assert job["counts"] == {"rows": 6, "inserted": 5, "updated": 0, "skipped": 1, "errors": 0}, job
    # the refused batch; then the next one before its write, unless it was prepared while the
    # first was written (PostgreSQL writes in another thread)
    assert looked_up in ([3, 3], [3])
    assert sorted(c["id_number"] for c in _clear(app)) == sorted(x["id"] for x in p)
    looked_up.clear()
    job = finished_import(client, admin, _upload(client, admin, _csv(rows), batch_size=3, dedupe="error"))
    assert job["counts"] == {"rows": 6, "inserted": 0, "updated": 0, "skipped": 0, "errors": 6}, job
    assert {e[3] for e in _errors(client, admin, job)} == {"already exists"}
    assert looked_up == [3, 3]  # a batch prepared without a lookup is looked up once refused
    assert len(_clear(app)) == 9


def test_a_key_held_by_a_merged_or_retained_record_is_a_row_error_not_a_failed_job(app: Any, client: Any, login: Any) -> None:
    """A record merged away (or kept for its retention period after a delete) is hidden but
    still holds its key in the unique index: a row with that key is told so, in either mode,
    and the rest of the file is imported."""
    from sqlalchemy import update

    admin = login("admin")
    p = _people(3, seed=141)
    finished_import(client, admin, _upload(client, admin, _csv([_row(p[0])])))
    runtime = app.extensions["fincrm"].runtime
    table = runtime.cached_snapshot().tables["customer"]
    with runtime.begin() as conn:  # what a merge does to the records it merges away
        conn.execute(update(table).values(retained_at=dt.datetime(2026, 1, 1)))
    for mode, other in (("insert", p[1]), ("upsert", p[2])):
        job = finished_import(client, admin, _upload(client, admin, _csv([_row(p[0]), _row(other)]), mode=mode))
        assert job["status"] == "done", job
        assert job["counts"] == {"rows": 2, "inserted": 1, "updated": 0, "skipped": 0, "errors": 1}, job
        assert [(e[0], e[1], e[3]) for e in _errors(client, admin, job)] == [("2", "身份证号", "is already used by a deleted or merged record")]
    assert sorted(c["name"] for c in _clear(app)) == sorted([p[1]["name"], p[2]["name"]])


@pytest.mark.parametrize("import_mode", ["workers"], indirect=True)
def test_batches_a_worker_has_not_taken_are_built_by_the_job_process(app: Any, client: Any, login: Any, monkeypatch: Any) -> None:
    """The job's process builds the first batch itself and, whenever the next batch is not back,
    a queued one no worker has taken: with a pool whose worker never takes anything the import
    still finishes, every batch built by the job's process, as an inline run stores them."""
    from concurrent.futures import Future

    import engine.io.importer as importer_module
    from tests.api_helpers import wipe_records

    class IdlePool:
        submitted = 0

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            pass

        def submit(self, fn: Any, *args: Any) -> Future[Any]:
            IdlePool.submitted += 1
            return Future()  # pending for ever unless cancelled

        def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
            pass

    admin = login("admin")
    p = _people(7, seed=151)
    rows = [_row(x) for x in p]
    rows[2][4] = "12345"  # a bad mobile number
    outcome = []
    for pool in ("inline", "idle"):
        wipe_records(app)
        if pool == "idle":
            monkeypatch.setattr(importer_module, "ProcessPoolExecutor", IdlePool)
        else:
            monkeypatch.setenv("FINCRM_IMPORT_WORKERS", "0")
        job = finished_import(client, admin, _upload(client, admin, _csv(rows), batch_size=2))
        monkeypatch.setenv("FINCRM_IMPORT_WORKERS", "1")
        records = sorted(({k: v for k, v in c.items() if k not in ("id", "created_at", "updated_at")} for c in _clear(app)), key=lambda c: c["name"])
        outcome.append((job["status"], job["counts"], _errors(client, admin, job), records))
    assert IdlePool.submitted == 3  # batches 2-4 went to the pool; batch 1 was built here
    assert outcome[0] == outcome[1]
    assert outcome[1][1] == {"rows": 7, "inserted": 6, "updated": 0, "skipped": 0, "errors": 1}


@pytest.mark.parametrize("import_mode", ["inline"], indirect=True)
def test_ids_for_a_run_are_reserved_at_once_not_per_batch(app: Any, client: Any, login: Any, monkeypatch: Any) -> None:
    from engine.store.ids import IdAllocator

    allocator = IdAllocator(app.extensions["fincrm"].runtime.write_engine)
    reserved: list[int] = []
    original = allocator._reserve

    def spy(name: str, count: int) -> int:
        reserved.append(count)
        return original(name, count)

    monkeypatch.setattr(allocator, "_reserve", spy)
    first = allocator.take("import_ids_test", 2, ahead=7)
    rest = [allocator.take("import_ids_test", 2) for _ in range(3)]
    assert reserved == [1000]  # a block covers the seven
    assert first + [i for r in rest for i in r] == list(range(first[0], first[0] + 8))
    assert allocator.cached("import_ids_test") == 1000 - 8  # what a take gives without a reservation
    assert allocator.cached("import_ids_never_taken") == 0
    reserved.clear()
    allocator.take("import_ids_test_big", 3, ahead=5000)
    for _ in range(13):  # 5,203 in all
        allocator.take("import_ids_test_big", 400)
    assert reserved == [5000, 1000]  # the run's 5,000 at once; past them, blocks as usual

    # the importer asks for the rest of its file with each reservation
    asked: list[int] = []
    runtime_ids = app.extensions["fincrm"].runtime.ids
    take = runtime_ids.take

    def take_spy(name: str, n: int = 1, *, ahead: int = 0) -> list[int]:
        if name == "customer":
            asked.append(ahead)
        return take(name, n, ahead=ahead)

    monkeypatch.setattr(runtime_ids, "take", take_spy)
    admin = login("admin")
    job = finished_import(client, admin, _upload(client, admin, _csv([_row(x) for x in _people(5, seed=161)]), batch_size=2))
    assert job["counts"]["inserted"] == 5
    assert asked == [5, 3, 1]


def test_csv_rows_are_counted_by_lines_as_the_reader_counts_them(tmp_path: Any) -> None:
    """The line count of a file without quotes agrees with the CSV reader's, whatever its blank
    rows, line ends and chunk boundaries; a file the reader must judge is left to it."""
    import csv as csv_module
    from pathlib import Path

    from engine.io.sources import _count_lines, open_source

    def by_reader(text: str, delimiter: str) -> int:
        return sum(1 for cells in csv_module.reader(io.StringIO(text, newline=""), delimiter=delimiter) if "".join(cells).strip())

    class Chunks(io.StringIO):
        def read(self, size: int | None = -1) -> str:
            return super().read(5)

    rng = random.Random(3)
    pieces = ["a", "b,c", "", ",", " , ", "\t", "中文", "x y", " lead", ",lead", "\xa0", "\u3000", "\x1c", "a\rb", "\r", 'q"x', "\x00"]
    counted = 0
    for _ in range(3000):
        end = rng.choice(["\n", "\r\n", "\r"])
        text = end.join(rng.choice(pieces) for _ in range(rng.randint(0, 12))) + rng.choice(["", end])
        delimiter = rng.choice([",", ";", "\t", "|"])
        for reader in (io.StringIO, Chunks):
            got = _count_lines(reader(text, newline=""), delimiter)
            if got is not None:
                counted += 1
                assert got == by_reader(text, delimiter), (text, delimiter)
    assert counted > 1000
    assert _count_lines(io.StringIO('a,"b\nc"\n', newline=""), ",") is None
    quoted = Path(tmp_path) / "quoted.csv"
    quoted.write_bytes(_csv([["x", "y\nz", "", "", "", "", "1"], ["", "", "", "", "", "", ""]]))
    assert open_source(quoted).count() == 1  # one row holding a line break; a blank row
    crlf = Path(tmp_path) / "crlf.csv"
    crlf.write_bytes("姓名,性别\r\n张三,男\r\n,\r\n\r\n李四,女\r\n".encode("gbk"))
    assert open_source(crlf).count() == 2


@pytest.mark.parametrize("chunk", [5, 1 << 20])
def test_line_batches_give_the_rows_the_reader_gives(tmp_path: Any, monkeypatch: Any, chunk: int) -> None:
    """A plain CSV text's lines, as import workers get them (``Source.line_batches`` split by
    ``split_lines``), are the rows ``Source.rows`` reads, with the same numbers, whatever the
    blank lines, line ends, encodings, batch sizes, rows skipped (a resumed job) and chunk
    boundaries; the first lines of a batch are rows, each batch holds at most ``size`` rows."""
    from pathlib import Path

    from engine.errors import BadRequest
    from engine.io import sources
    from engine.io.sources import open_source, split_lines

    monkeypatch.setattr(sources, "_CHUNK", chunk)
    rng = random.Random(5)
    pieces = ["a", "b,c", "", ",", " , ", "\t", "中文", "x y", " lead", ",lead;x", "\xa0", "\u3000", "\x1c", "甲|乙|丙", "1;2;3"]
    compared = 0
    for trial in range(1500):
        end = rng.choice(["\n", "\r\n"])
        lines = [rng.choice(["", " ", "\u3000"]) for _ in range(rng.randint(0, 2))] + ["名,b;c|d\te"]
        lines += [rng.choice(pieces) for _ in range(rng.randint(0, 25))]
        text = end.join(lines) + rng.choice(["", end, end + end, " "])
        path = Path(tmp_path) / f"{trial}.csv"
        path.write_bytes(text.encode(rng.choice(["utf-8", "utf-8-sig", "gb18030"])))
        try:
            src = open_source(path)
        except BadRequest:
            continue
        total = src.count()
        if not src.plain:
            continue
        rows = list(src.rows())
        assert total == len(rows)
        size, skip = rng.randint(1, 6), rng.randint(0, 4)
        got: list[tuple[int, list[Any]]] = []
        for first, batch in src.line_batches(size, skip):
            split = split_lines(first, batch, src.delimiter)
            assert 1 <= len(split) <= size and split[0][0] == first
            got += split
        assert got == rows[skip:], (text, size, skip)
        compared += 1
    assert compared > 1000
