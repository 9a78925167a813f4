"""People read the GX report in a browser: open the Data Docs in headless Chromium (Debian's
package, installed by `make test`'s setup, never a browser download) and find the failing expectation."""

from __future__ import annotations

import html
import re
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from fastapi import Request  # a route's annotation (this module's annotations are strings)

from pipelines.data.validate import ValidationFailed, validate_table
from tests.integration.cdp import FLAGS, chromium
from tests.unit.data.test_validate import METRICS, RUN_DATE, _table, _with

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


# An injected handler that reports what it could reach: the cookie, and Airflow's API read through a
# same-origin child frame (the attack of a category ``CAT<img src=x onerror=...>``), via an image request.
PROBE = (
    "var o=[];try{o.push('cookie='+document.cookie)}catch(e){o.push('nocookie')}"
    "var f=document.createElement('iframe');f.src='/api/v2/probe?via=frame';"
    "f.onload=function(){var t='';try{t=f.contentDocument.body.innerText}catch(e){t='blocked'}"
    "new Image().src='/api/v2/probe?report='+encodeURIComponent(o.join(',')+';frame='+t)};"
    "document.body.appendChild(f)"
)


class _Server:
    """The /meli plugin (Airflow's auth) and a stand-in of Airflow's API on one loopback origin."""

    def __init__(self):
        import socket
        import threading

        import uvicorn
        from fastapi import FastAPI
        from fastapi.responses import HTMLResponse

        from pipelines.flows.airflow_ui import app

        self.probes: list[dict] = []
        root = FastAPI()
        root.mount("/meli", app())
        self.seen: list[tuple[str, bool, int]] = []  # (path, with the cookie, status)

        @root.middleware("http")
        async def record(request, call_next):
            response = await call_next(request)
            self.seen.append((request.url.path, "_token" in request.cookies, response.status_code))
            return response

        @root.get("/api/v2/probe")
        def probe(request: Request, report: str = "", via: str = ""):
            self.probes.append({"cookie": "_token" in request.cookies, "report": report, "via": via})
            return HTMLResponse("<p>SECRET-API-DATA</p>")

        @root.get("/run/{path:path}")
        def run_tab(path: str):  # Airflow's run page: the plugin's tab in an iframe
            return HTMLResponse(f'<!doctype html><iframe src="/meli/docs/{path}" width=1200 height=800></iframe>')

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(root, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.05)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def test_data_docs_run_sandboxed_and_data_stays_text(settings, tmp_path, airflow_tokens):
    """Security item 1: a category ``CAT<img src=x onerror=...>`` is text on the GX page (escaped before
    GX renders it), the page still renders (tables, status icons, Font Awesome) under the CSP sandbox with
    its assets served without login, and a handler on a page built before the escaping runs in an opaque
    origin: no cookie, nothing read from the API."""
    from tests.integration.cdp import Browser

    evil = f'CAT<img src=x onerror="{PROBE}">'
    with pytest.raises(ValidationFailed) as err:
        validate_table(settings, RUN_DATE, _with(_table(), "category", [evil] * 200), METRICS, "crafted")
    page = Path(err.value.report["data_docs_pages"]["listings_partition"])
    site = Path(err.value.report["data_docs_dir"])
    assert "<img src=x onerror" not in page.read_text()  # escaped in the file
    rel = page.relative_to(site).as_posix()
    # a page written raw (a site built before the escaping): the sandbox is what stops it
    legacy = page.with_name("legacy.html")
    legacy.write_text(page.read_text().replace("</body>", f'<img src=x onerror="{PROBE}"></body>'))
    token = airflow_tokens["viewer"]["Authorization"].removeprefix("Bearer ")
    server = _Server()
    try:
        with Browser(tmp_path / "cdp") as b:
            anonymous = urllib.request.urlopen(f"{server.base}/meli/docs/static/meli-vendor/jquery.min.js")
            assert anonymous.status == 200  # public assets; a page is not:
            with pytest.raises(urllib.error.HTTPError) as denied:
                urllib.request.urlopen(f"{server.base}/meli/docs/{rel}")
            assert denied.value.code == 401
            b.call("Network.setCookie", name="_token", value=token, url=server.base, sameSite="Lax", httpOnly=True)
            b.open(f"{server.base}/meli/docs/{rel}", settle=3)
            assert b.wait_for(FA_LOADED)
            assert b.js("typeof jQuery") == "function" and b.js("origin") == "null"  # sandboxed, scripts run
            text = b.js("document.body.innerText")
            assert "Category looks like a MeLi category id" in text and "CAT<img src=x onerror=" in text
            icons = b.js("[...document.querySelectorAll('i.fas')].map(i => i.className).join(' ')")
            assert "fa-times" in icons, icons
            assert b.js("document.querySelectorAll('img[onerror]').length") == 0
            b.screenshot(ARTIFACTS / "data_docs_sandboxed.png")
            assert server.probes == []
            b.open(f"{server.base}/run/{rel.rsplit('/', 1)[0]}/legacy.html", settle=4)
            b.pump(2)
            # a link followed inside the run tab (the sandboxed page navigates its frame: no cookie on
            # that request) still lands on the page: one reload of this origin, with the login
            (site / "nav.html").write_text(
                f"<p>nav</p><script>setTimeout(() => {{ location.href = '{rel}' }}, 200)</script>"
            )
            server.seen.clear()
            b.open(f"{server.base}/run/nav.html", settle=4)
            target = [(cookie, status) for path, cookie, status in server.seen if path == f"/meli/docs/{rel}"]
            assert target[-1] == (True, 200), server.seen
        reports = [p["report"] for p in server.probes if p["report"]]
        assert reports, server.probes  # the handler ran...
        for r in reports:  # ...without the cookie and without reading the API's answer
            assert "_token" not in r and "SECRET-API-DATA" not in r and "frame=blocked" in r, r
        assert not any(p["cookie"] for p in server.probes), server.probes  # its requests carry no cookie
    finally:
        server.close()
