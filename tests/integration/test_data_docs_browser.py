"""People read the GX report in a browser: open the Data Docs in headless Chromium (Debian's
package, installed by `make test`'s setup, never a browser download) and find the failing expectation."""

from __future__ import annotations

import html
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pipelines.validate import ValidationFailed, validate_table
from tests.unit.test_validate import METRICS, RUN_DATE, _table, _with

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if not exe:
        pytest.skip("Debian's chromium is not installed (make test installs it when it can)")
    return exe


def render(exe: str, url: str, profile: Path, screenshot: Path | None = None, raw: bool = False) -> str:
    args = [exe, *FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=3000"]
    if screenshot:
        subprocess.run(
            [*args, f"--screenshot={screenshot}", "--window-size=1400,2200", url],
            capture_output=True,
            timeout=120,
            check=False,
        )
    r = subprocess.run([*args, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    if raw:
        return r.stdout
    text = re.sub(r"<script.*?</script>|<style.*?</style>", " ", r.stdout, flags=re.S)
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", text)))


def test_failing_expectation_is_visible_in_data_docs(settings, tmp_path):
    exe = chromium()
    broken = _with(_table(), "category", ["bad cat"] * 200)
    with pytest.raises(ValidationFailed) as err:
        validate_table(settings, RUN_DATE, broken, METRICS, "crafted")
    report = err.value.report
    # The index lists every validation run; its table is drawn by bootstrap-table from a CDN (absent
    # offline), so read the rows GX embeds in the page and follow the failed run's link like a user.
    index = Path(report["data_docs_index"])
    dom = render(exe, index.as_uri(), tmp_path / "profile", raw=True)
    rows = re.findall(
        r"'run_name': '([^']+)'.*?'_table_row_link_path': '([^']+)', "
        r"'_validation_success_text': '(\w+)'",
        dom,
        flags=re.S,
    )
    failed = [link for run, link, status in rows if run == f"meli_retrain__{RUN_DATE}" and status == "Failed"]
    assert failed, rows
    assert any(
        (index.parent / link).resolve() == Path(report["data_docs_pages"]["listings_partition"]).resolve()
        for link in failed
    )

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "data_docs_failed_validation.png"
    page = report["data_docs_pages"]["listings_partition"]
    page_text = render(exe, Path(page).as_uri(), tmp_path / "profile", screenshot=shot)
    assert "Category looks like a MeLi category id" in page_text
    assert "200 unexpected values found" in page_text and "bad cat" in page_text
    assert shot.exists() and shot.stat().st_size > 10_000
