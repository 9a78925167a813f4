"""Issue 32: meli_retrain's trigger form shows its Params in sections. One real ``airflow api-server``
(a login through the ``_token`` cookie) and headless Chromium (Debian's package) open the DAG's
"Trigger Dag" dialog in Airflow's React UI: each ``section`` of the DAG's Params is a collapsible group
of the form, in the declared order, and a field of a group, once opened, shows its title and description."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.airflow_env import airflow_env, migrate
from tests.integration.cdp import Browser, chromium
from tests.integration.test_airflow_ui import DIALOG, open_trigger_form
from tests.integration.test_approval import ApiServer

pytestmark = pytest.mark.slow

# the dialog's accordion groups' header buttons (Chakra's accordion: data-part="item-trigger")
GROUPS = f"[...{DIALOG}.querySelectorAll('[data-part=item-trigger]')]"


def click_group(b: Browser, title: str) -> None:
    """Open a group as a person does: a real mouse click in the middle of its header."""
    group = f"{GROUPS}.find(t => t.innerText.trim() === {json.dumps(title)})"
    b.js(f"{group}.scrollIntoView({{block: 'center'}})")
    b.pump(0.3)
    x, y = b.js(f"(r => [r.x + r.width / 2, r.y + r.height / 2])({group}.getBoundingClientRect())")
    for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
        b.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)


def test_the_trigger_form_shows_the_params_in_sections(tmp_path):
    chromium()
    home = tmp_path / "meli"
    migrate(home)
    airflow = str(Path(sys.executable).parent / "airflow")
    r = subprocess.run(
        [airflow, "dags", "reserialize"], env=airflow_env(home), capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    server = ApiServer(home)
    try:
        server.start()
        # the sections as the DAG declares them (its serialized Params, what the UI reads), in order
        params = server.api("/dags/meli_retrain/details")["params"]
        sections = list(dict.fromkeys(p["schema"].get("section") for p in params.values()))
        assert len(sections) >= 2 and None not in sections, sections
        epochs = params["epochs"]
        title, description = epochs["schema"]["title"], epochs["description"]
        with Browser(tmp_path / "cdp") as b:
            b.call("Network.setCookie", name="_token", value=server.token, url=server.base)
            open_trigger_form(b, server.base, "meli_retrain")
            groups = b.wait_for(f"{GROUPS}.length > {len(sections)} && {GROUPS}.map(t => t.innerText.trim())")
            shot = b.screenshot(tmp_path / "trigger_form.png")  # for debugging only
            # every section is a group, in the declared order (then Airflow's own "Advanced Options")
            assert groups[: len(sections)] == sections, (groups, sections, shot)
            # the groups start closed: no field's title is shown until its group is opened
            assert title not in b.js(f"{DIALOG}.innerText")
            click_group(b, epochs["schema"]["section"])
            text = b.wait_for(f"{DIALOG}.innerText.includes({json.dumps(title)}) && {DIALOG}.innerText", 20)
            b.screenshot(tmp_path / "trigger_form_open.png")
            assert description in text, (description, text[-3000:])
    finally:
        server.stop()
