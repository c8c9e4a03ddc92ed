"""Export (issue #6): row scope, masking, formula neutralisation in CSV and XLSX, streaming, audit."""

from __future__ import annotations

import csv
import io
from typing import Any

from openpyxl import load_workbook

from engine.security.principal import Principal
from tests.api_helpers import app, client, login, shared_app  # noqa: F401  (module-wide app)

HOSTILE = ["=cmd|' /C calc'!A0", "+SUM(1,2)", "@SUM(1)", "  -2+3", "\t=1+1", "<script>alert(1)</script>", "王小明"]


def _seed(app: Any, owner: str, names: list[str]) -> None:
    with app.app_context():
        uid = int(app.appbuilder.sm.find_user(username=owner).id)
    rows = [{"name": n, "owner": uid, "occupation": n[:100]} for n in names]
    with app.app_context():
        app.extensions["fincrm"].records.bulk_insert(Principal.system("test"), "customer", rows)


def _csv_rows(resp: Any) -> list[list[str]]:
    assert resp.status_code == 200, resp.get_data(as_text=True)
    text = resp.get_data().decode("utf-8")
    assert text.startswith("\ufeff")
    return list(csv.reader(io.StringIO(text[1:])))


def test_export_neutralises_formulas_in_csv_and_xlsx(app: Any, client: Any, login: Any) -> None:
    admin = login("admin")
    _seed(app, "rm1", HOSTILE)
    rows = _csv_rows(client.get("/api/v1/export/customer?format=csv&fields=occupation&sort=id", headers=admin))
    assert rows[0] == ["id", "职业"]
    cells = [r[1] for r in rows[1:]]
    assert cells[:5] == ["'" + h.strip() for h in HOSTILE[:5]]
    assert cells[5:] == HOSTILE[5:]  # text that no spreadsheet runs is left as it is
    resp = client.get("/api/v1/export/customer?format=xlsx&fields=occupation&sort=id&lang=en", headers=admin)
    assert resp.status_code == 200
    ws = load_workbook(io.BytesIO(resp.get_data()), read_only=True).active
    values = [r for r in ws.iter_rows(values_only=True)]
    assert values[0] == ("id", "Occupation")
    assert [v[1] for v in values[1:6]] == ["'" + h.strip() for h in HOSTILE[:5]]
    assert not any(isinstance(v[1], str) and v[1].startswith("=") for v in values[1:])


def test_export_keeps_scope_and_masks_and_is_audited(app: Any, client: Any, login: Any) -> None:
    rm1, admin = login("rm1"), login("admin")
    _seed(app, "rm1", ["张三丰", "李四光"])
    _seed(app, "rm2", ["王五"])
    rows = _csv_rows(client.get("/api/v1/export/customer?format=csv&fields=name", headers=rm1))
    names = sorted(r[1] for r in rows[1:])
    assert len(names) == 2 and "王五" not in "".join(names)
    audit = client.get("/api/v1/audit", headers=admin, query_string={"action": "export"}).get_json()
    items = audit.get("items", audit) if isinstance(audit, dict) else audit
    assert any(i.get("actor") == "rm1" and (i.get("detail") or {}).get("rows") == 2 for i in items), items


def test_large_export_is_streamed_page_by_page(app: Any, client: Any, login: Any) -> None:
    admin = login("admin")
    _seed(app, "rm1", [f"客户{i:05d}" for i in range(1_234)])
    resp = client.get("/api/v1/export/customer?format=csv&fields=occupation", headers=admin)
    assert resp.is_streamed
    rows = _csv_rows(resp)
    assert len(rows) == 1 + 1_234 and len({r[0] for r in rows[1:]}) == 1_234
