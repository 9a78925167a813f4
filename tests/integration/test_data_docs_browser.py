"""People read the GX report in a browser: open the Data Docs in headless Chromium (Debian's
package, installed by `make test`'s setup, never a browser download) and find the failing expectation."""

from __future__ import annotations

import html
import re
import subprocess
from pathlib import Path

import pytest

from pipelines.validate import ValidationFailed, validate_table
from tests.integration.cdp import FLAGS, chromium
from tests.unit.test_validate import METRICS, RUN_DATE, _table, _with

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


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
    # The index lists every validation run (the rows GX embeds in the page); follow the failed run's
    # link like a user.
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


FA_LOADED = "[...document.fonts].some(f => f.family.includes('Font Awesome') && f.status === 'loaded')"


def test_data_docs_render_offline_with_status_icons(settings, tmp_path):
    """Every asset is served from the site: no page asks the network for anything, the index table
    is drawn (rows with their status icons) and Font Awesome's font is loaded."""
    from tests.integration.cdp import Browser

    validate_table(settings, RUN_DATE, _table(), METRICS, "crafted")  # a passing run
    with pytest.raises(ValidationFailed) as err:
        validate_table(settings, RUN_DATE, _with(_table(), "category", ["bad cat"] * 200), METRICS, "crafted")
    report = err.value.report
    index = Path(report["data_docs_index"])
    pages = [index, Path(report["data_docs_pages"]["listings_partition"])]
    with Browser(tmp_path / "cdp") as b:
        b.open(index.as_uri())
        rows = b.wait_for("document.querySelectorAll('tbody tr.clickable-row').length")
        assert rows >= 4  # two runs x two suites
        icons = b.js(
            "[...document.querySelectorAll('tbody tr.clickable-row i.fas')].map(i => i.className.split(' ')[1])"
        )
        assert "fa-check-circle" in icons and "fa-times" in icons, icons  # passed and failed runs
        assert b.wait_for(FA_LOADED)
        b.screenshot(ARTIFACTS / "data_docs_index_offline.png")
        b.js("document.querySelector('tbody tr.clickable-row').click()")  # a row opens its run's page
        b.wait_for("location.href.includes('/validations/')")
        b.open(pages[1].as_uri())
        assert b.wait_for(FA_LOADED)
        assert "Category looks like a MeLi category id" in b.js("document.body.innerText")
        assert b.external_requests() == [], b.external_requests()
        assert any("meli-vendor/fontawesome/webfonts/" in u for u in b.requests), b.requests
    for page in pages:
        html_text = page.read_text()
        assert not re.search(r"<(script|link)[^>]+(src|href)=\"https?://", html_text), page
