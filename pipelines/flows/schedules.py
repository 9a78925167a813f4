"""meli_retrain's schedule in words, for the places Airflow shows it (the DAG's description and a tag:
its list shows an asset-triggered DAG's assets only, never the time part). Cheap: the DAG file imports it."""

from __future__ import annotations

import re

DRIFT_TEXT = "on drift (meli_drift)"


def cron_text(cron: str) -> str:
    """``"0 2 * * *"`` -> ``"nightly 02:00 UTC"``; any other cron -> ``"cron '<cron>' UTC"``."""
    m = re.fullmatch(r"(\d{1,2})\s+(\d{1,2})\s+\*\s+\*\s+\*", cron.strip())
    if m and int(m[1]) < 60 and int(m[2]) < 24:
        return f"nightly {int(m[2]):02d}:{int(m[1]):02d} UTC"
    return f"cron '{cron.strip()}' UTC"


def retrain_schedule_text(cron: str) -> str:
    """What starts meli_retrain besides a person: the cron (MELI_RETRAIN_SCHEDULE) or drift, or drift only."""
    return f"{cron_text(cron)} or {DRIFT_TEXT}" if cron.strip() else f"{DRIFT_TEXT} only (no time schedule)"
