"""Nothing a run writes lands outside $MELI_HOME (not in the working directory, not in the repo)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
IGNORED_PARTS = {".venv", "__pycache__", ".git", "artifacts", ".pytest_cache", ".ruff_cache"}


def repo_files() -> set[str]:
    out = set()
    for p in REPO.rglob("*"):
        rel = p.relative_to(REPO)
        if p.is_file() and not IGNORED_PARTS & set(rel.parts) and rel.parts[0] != ".meli":
            out.add(str(rel))
    return out


@pytest.mark.slow
def test_cli_retrain_and_score_write_only_under_meli_home(tmp_path):
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    cwd.mkdir()
    env = {**os.environ, "MELI_HOME": str(home), "PYTHONPATH": str(REPO), "HOME": str(tmp_path / "userhome")}
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MELI_LAKE_URI"):
        env.pop(var, None)
    before = repo_files()
    py = [sys.executable, "-m", "pipelines"]
    src = home / "landing" / "in.jsonl.gz"
    steps = [
        ["demo-data", str(src), "--rows", "600", "--seed", "1"],
        [
            "retrain",
            str(src),
            "--epochs",
            "1",
            "--embedding-epochs",
            "1",
            "--min-macro-recall",
            "0",
            "--min-behaviour-pass",
            "0",
        ],
        ["score", str(src), "--no-progress"],
        ["registry", "history"],
    ]
    for step in steps:
        r = subprocess.run(py + step, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, (step, r.stdout[-2000:], r.stderr[-3000:])
    assert list(cwd.iterdir()) == [], f"files written to the working directory: {list(cwd.iterdir())}"
    userhome = tmp_path / "userhome"
    assert not userhome.exists() or not any(userhome.rglob("*")), list(userhome.rglob("*"))
    assert repo_files() == before, repo_files() ^ before
    assert (home / "lake" / "listings").is_dir() and (home / "mlflow" / "mlflow.db").is_file()
    assert any((home / "adhoc" / "scored").glob("in-*.parquet"))  # ad hoc scores: a named file, not the lake
