"""The import page in Chromium: a CSV with Chinese headers, a hostile name and one formula row is
dry-run (mapping and masked preview shown, hostile text as text), one column is set to
"ignore", the real import is followed by the progress bar to the end, the counts show the bad
row and the error file downloads as CSV. A file missing a required column shows the problem
with the field named. A screenshot is kept."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.ui.conftest import screenshot

SCRIPT = "<script>alert(1)</script>"
FORMULA = "=cmd|' /C calc'!A0"
ROWS = [
    ["姓名", "手机号", "职业", "资产规模(AUM)", "内部备注"],
    [SCRIPT, "13800138000", "教师", "1,234,567.80", "不导入的列"],
    [FORMULA, "13800138001", "医生", "100", "公式行"],
    ["王导入", "13800138002", "工程师", "2000", "x"],
]


def _csv(path: Path, rows: list[list[str]]) -> Path:
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    path.write_bytes(buf.getvalue().encode("utf-8"))
    return path


def _named(ui_app: Any, name: str) -> list[dict[str, Any]]:
    """The customers called ``name``, as the system reads them (in clear)."""
    from engine.security.principal import Principal

    records = ui_app.extensions["fincrm"].records
    with ui_app.app_context():
        items = records.list(Principal.system("test"), "customer", limit=500, sort="id").items
    return [c for c in items if c["name"] == name]


@pytest.fixture
def import_waits_not(ui_app: Any) -> Iterator[None]:
    """The API answers 202 at once, so the page follows the job by polling."""
    ui_app.config["FINCRM_IMPORT_WAIT"] = 0
    try:
        yield
    finally:
        ui_app.config.pop("FINCRM_IMPORT_WAIT", None)


def _watch(page: Any) -> list[str]:
    dialogs: list[str] = []

    def dismiss(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", dismiss)
    return dialogs


def test_ops1_dry_runs_maps_imports_and_downloads_the_errors(ui_app: Any, api: Any, page_as: Any, tmp_path: Path, import_waits_not: None) -> None:
    page = page_as("ops1")
    dialogs = _watch(page)
    page.goto("/")
    page.locator("[data-nav=import]").click()
    page.wait_for_load_state("networkidle")
    assert page.url.endswith("/import/")
    page.select_option("#import-entity", "customer")
    page.set_input_files("#import-file", str(_csv(tmp_path / "客户导入.csv", ROWS)))

    # dry run: the detected mapping, the counts and the masked preview
    page.click("#import-dry-run")
    page.wait_for_selector("#import-result[data-status=done][data-dry-run='1']")
    page.wait_for_selector("#import-mapping:not(.hidden)")
    mapping = {h: page.locator(f"#import-mapping-table select[data-header='{h}']").input_value() for h in ROWS[0]}
    assert mapping == {"姓名": "name", "手机号": "mobile", "职业": "occupation", "资产规模(AUM)": "aum", "内部备注": ""}
    counts = page.locator("#import-counts [data-count]")
    assert dict(zip(["rows", "inserted", "updated", "skipped", "errors"], counts.all_inner_texts())) == {
        "rows": "3", "inserted": "2", "updated": "0", "skipped": "0", "errors": "1",
    }
    names = page.locator("#import-preview-table td[data-field=name]").all_inner_texts()
    assert names == [SCRIPT, "王导入"]  # the hostile name is text, not markup
    assert page.locator("#import-preview-table td[data-field=mobile]").first.inner_text() == "138****8000"
    assert "教师" in page.locator("#import-preview-table").inner_text()
    assert _named(ui_app, "王导入") == []  # nothing written yet

    # map 职业 to nothing, then import for real and follow the progress bar
    page.select_option("#import-mapping-table select[data-header='职业']", "")
    assert page.locator("#import-mapping-edited").is_visible()
    page.evaluate(
        """() => { window.importStatuses = [];
                   new MutationObserver(() => window.importStatuses.push(document.getElementById('import-result').dataset.status))
                     .observe(document.getElementById('import-result'), {attributes: true, attributeFilter: ['data-status']}); }"""
    )
    page.click("#import-run")
    page.wait_for_selector("#import-result[data-status=done][data-dry-run='0']", timeout=60000)
    statuses = page.evaluate("window.importStatuses")
    assert statuses[-1] == "done" and {"queued", "running"} & set(statuses), statuses
    assert page.locator("#import-progress").get_attribute("aria-valuenow") == "100"
    assert page.locator("#import-counts [data-count=inserted]").inner_text() == "2"
    assert page.locator("#import-counts [data-count=errors]").inner_text() == "1"
    assert page.locator("#import-result-title").inner_text() == "导入完成"
    screenshot(page, "import")

    # the error file: one row, the formula neutralised
    link = page.locator("#import-errors-link")
    assert link.is_visible() and "1" in link.inner_text()
    with page.expect_download() as download:
        link.click()
    text = Path(download.value.path()).read_bytes().decode("utf-8-sig")
    lines = list(csv.reader(io.StringIO(text)))
    assert lines[0][0].startswith("行号") and len(lines) == 2
    assert lines[1][0] == "3" and lines[1][1] == "姓名" and lines[1][2].startswith("'=") and "formula" in lines[1][3]

    # what was written, and the edited mapping the page sent with it (职业 ignored); the job list has both runs
    stored = _named(ui_app, "王导入")
    assert len(stored) == 1 and stored[0]["aum"] == "2000.00" and stored[0].get("occupation") is None
    client, login = api
    job = client.get(f"/api/v1/import/jobs/{page.locator('#import-result').get_attribute('data-job')}", headers=login("admin")).json
    assert job["options"]["mapping"] == {"姓名": "name", "手机号": "mobile", "职业": None, "资产规模(AUM)": "aum", "内部备注": None}
    jobs = page.locator("#import-jobs tbody tr[data-job]")
    assert jobs.count() >= 2 and jobs.first.get_attribute("data-status") == "done"
    assert jobs.first.locator("[data-count=errors]").inner_text() == "1"
    assert dialogs == [] and page.errors == []


def test_a_file_without_a_required_column_names_the_field(page_as: Any, tmp_path: Path) -> None:
    page = page_as("ops1")
    page.goto("/import/?entity=customer")
    page.set_input_files("#import-file", str(_csv(tmp_path / "缺列.csv", [["手机号", "职业"], ["13800138003", "教师"]])))
    page.click("#import-dry-run")
    problem = page.wait_for_selector("#import-problems li[data-field=name]")
    assert problem is not None
    assert "姓名 (name)" in problem.inner_text() and "必填字段" in problem.inner_text()
    assert page.locator("#import-problems-title").inner_text() == "文件无法导入"
    assert page.locator("#import-result").get_attribute("class") is not None and not page.locator("#import-result").is_visible()
    assert page.errors == []
