"""Crashes and concurrent commands, with real processes: a ``python -m pipelines`` killed (SIGKILL)
at a chosen step of its commit (``MELI_FAULT``, see pipelines/core/faults.py), and commands started side
by side. Each test states what the next reader sees."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines.data.lake import lock_path, partition_dir, read_partition, read_quarantine, versions
from pipelines.flows.approval import os_identity
from pipelines.registry import versions as registry_versions
from tests.data import ingest_inputs as D

REPO = Path(__file__).resolve().parents[2]
DAY = "2026-01-01"


def _env(home: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MELI_", "MLFLOW_TRACKING", "MLFLOW_REGISTRY"))}
    env.update(MELI_HOME=str(home), PYTHONPATH=str(REPO), **{k: str(v) for k, v in extra.items()})
    return env


def cli(home: Path, *args, timeout: float = 300, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipelines", *args],
        env=_env(home, **env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start(home: Path, *args, **env) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pipelines", *args],
        env=_env(home, **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def big_jsonl(path: Path, n: int, tag: str, bad: int = 0) -> Path:
    """n distinct good rows (titles carry ``tag``) and ``bad`` broken lines, written fast."""
    cats = D.CATEGORIES
    lines = [
        f'{{"title": "Producto {tag} numero {i} modelo {i % 977}", "category": "{cats[i % len(cats)]}"}}'
        for i in range(n)
    ]
    lines += ["{broken"] * bad
    path.write_text("\n".join(lines) + "\n")
    return path


def status(home: Path) -> dict:
    r = cli(home, "lake", "status", "--json")
    assert r.returncode == 0, r.stderr
    return {p["ingest_date"]: p for p in json.loads(r.stdout)["partitions"]}


def assert_consistent(part: Path) -> None:
    """Every readable version's listings, quarantine and manifest are of one and the same write."""
    for v in versions(part):
        m = json.loads((v.dir / "_manifest.json").read_text())
        assert m["version"] == v.number
        assert read_partition(part, version=v.number).num_rows == m["totals"]["rows_written"]
        assert read_quarantine(part, version=v.number).num_rows == m["totals"]["rows_quarantined"]
        assert json.loads((v.dir / "quarantine" / "_manifest.json").read_text()) == m
    kept = {v.dir.name for v in versions(part)}
    assert sorted(p.name for p in part.iterdir()) == sorted(["_CURRENT", *kept])


def error_line(r: subprocess.CompletedProcess) -> str:
    """The command failed with exactly one ``error:`` line and no traceback (log lines may precede)."""
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
    assert r.returncode == 1 and len(errors) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    return errors[0]


def _wait_for_lock_holder(lock: Path, pid: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if json.loads(lock.read_text() or "{}").get("pid") == pid:
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    raise AssertionError(f"pid {pid} never took {lock}")


def test_concurrent_ingests_of_one_date_are_serialised_and_lose_nothing(tmp_path):
    home = tmp_path / "home"
    files = [big_jsonl(tmp_path / f"f{i}.jsonl", 150_000 + 1000 * i, f"f{i}", bad=i) for i in range(4)]
    r = cli(home, "ingest", str(files[0]), "--run-date", DAY)
    assert r.returncode == 0, r.stderr
    part = partition_dir(home / "lake" / "listings", DAY)
    first = start(home, "ingest", str(files[1]), "--run-date", DAY)
    _wait_for_lock_holder(lock_path(part), first.pid)  # it is writing its version now
    others = [start(home, "ingest", str(f), "--run-date", DAY) for f in files[2:]]
    for p in [first, *others]:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
    st = status(home)[DAY]
    assert st["version"] == 4  # four commits, one after the other
    newest = json.loads((versions(part)[0].dir / "_manifest.json").read_text())
    (src,) = newest["sources"]
    n = int(Path(src["path"]).stem[1:])
    assert st["rows"] == 150_000 + 1000 * n and st["quarantined"] == n  # all of the last writer's rows
    assert read_partition(part).num_rows == st["rows"]
    assert_consistent(part)


@pytest.mark.parametrize("point", ["lake.staged", "lake.committed"])
def test_ingest_killed_at_its_commit_leaves_one_whole_generation(tmp_path, point):
    home = tmp_path / "home"
    a = big_jsonl(tmp_path / "a.jsonl", 500, "a", bad=3)
    b = big_jsonl(tmp_path / "b.jsonl", 700, "b", bad=1)
    assert cli(home, "ingest", str(a), "--run-date", DAY).returncode == 0
    r = cli(home, "ingest", str(b), "--run-date", DAY, MELI_FAULT=point)
    assert r.returncode == -signal.SIGKILL, r.stderr
    part = partition_dir(home / "lake" / "listings", DAY)
    st = status(home)[DAY]
    if point == "lake.staged":  # killed before the pointer moved: the previous generation, whole
        assert (st["version"], st["rows"], st["quarantined"]) == (1, 500, 3)
    else:  # killed right after: the new generation, whole (the old one still kept)
        assert (st["version"], st["rows"], st["quarantined"]) == (2, 700, 1)
    assert {r["raw"] for r in read_quarantine(part).to_pylist()} == {"{broken"}
    # the next writer collects what the killed one left and commits on top
    assert cli(home, "ingest", str(a), "--run-date", DAY).returncode == 0
    assert status(home)[DAY]["rows"] == 500
    assert_consistent(part)


@pytest.mark.parametrize("point", ["lake.staged", "lake.committed"])
def test_scored_partition_killed_at_its_commit(tmp_path, point):
    """lake/scored uses the same commit: a killed scorer leaves the previous scores or the new ones."""
    root = tmp_path / "lake" / "scored"
    script = (
        "import sys; from pipelines.data.lake import commit_partition\n"
        "with commit_partition(sys.argv[1]) as p:\n"
        "    (p.dir / 'part-00000.parquet').write_text(sys.argv[2])\n"
    )
    part = root / "run_date=2026-01-01"
    env = _env(tmp_path)
    for text, fault in (("old", ""), ("new", point)):
        r = subprocess.run(
            [sys.executable, "-c", script, str(part), text], env={**env, "MELI_FAULT": fault}, capture_output=True
        )
    assert r.returncode == -signal.SIGKILL
    from pipelines.data.lake import resolve

    assert (resolve(part) / "part-00000.parquet").read_text() == ("old" if point == "lake.staged" else "new")


def test_two_first_commands_on_a_fresh_home_both_work(tmp_path):
    home = tmp_path / "fresh"
    procs = [start(home, "registry", "status") for _ in range(3)]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]


def test_unreachable_tracking_server_fails_fast_in_one_line(tmp_path):
    t0 = time.monotonic()
    r = cli(tmp_path / "h", "registry", "status", MLFLOW_TRACKING_URI="http://127.0.0.1:9")
    assert time.monotonic() - t0 < 30
    assert "http://127.0.0.1:9" in error_line(r) and "unreachable" in error_line(r)


def test_a_locked_mlflow_store_is_a_one_line_error(tmp_path):
    import sqlite3

    home = tmp_path / "h"
    assert cli(home, "registry", "status").returncode == 0  # creates the store
    db = sqlite3.connect(home / "mlflow" / "mlflow.db", timeout=0)
    db.execute("BEGIN EXCLUSIVE")
    try:
        r = cli(home, "registry", "status", timeout=120)
    finally:
        db.rollback()
        db.close()
    line = error_line(r)
    assert line.startswith("error: MLflow store sqlite:///") and "locked" in line, line


def test_bad_inputs_are_one_line_errors(tmp_path):
    home = tmp_path / "h"
    fifo = tmp_path / "feed.jsonl"
    os.mkfifo(fifo)
    folder = tmp_path / "folder"
    folder.mkdir()
    cases = [
        (["ingest", str(folder)], "is a directory"),
        (["ingest", str(fifo)], "not a regular file"),
        (["score", str(fifo), "--output", str(tmp_path / "o.parquet")], "not a regular file"),
    ]
    for args, what in cases:
        line = error_line(cli(home, *args, "--run-date", DAY, timeout=60))
        assert what in line and str(args[1]) in line, (args, line)


def _root_only(what: str) -> None:
    if os.geteuid() != 0:
        pytest.skip(f"{what} needs root")


def test_disk_full_is_a_one_line_error_and_keeps_the_partition(tmp_path):
    _root_only("mounting a small tmpfs")
    lake = tmp_path / "lake"
    lake.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(lake)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        home = tmp_path / "h"
        small = big_jsonl(tmp_path / "small.jsonl", 200, "s")
        assert cli(home, "ingest", str(small), "--run-date", DAY, MELI_LAKE_URI=lake).returncode == 0
        huge = big_jsonl(tmp_path / "huge.jsonl", 400_000, "h")
        line = error_line(cli(home, "ingest", str(huge), "--run-date", DAY, MELI_LAKE_URI=lake))
        assert "no space left on device writing" in line and str(lake) in line, line
        st = status_at(home, lake)
        assert (st["version"], st["rows"]) == (1, 200)
        assert_consistent(partition_dir(lake / "listings", DAY))
    finally:
        subprocess.run(["umount", str(lake)], check=False)


def status_at(home: Path, lake: Path) -> dict:
    r = cli(home, "lake", "status", "--json", MELI_LAKE_URI=lake)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["partitions"][0]


def test_a_partition_that_cannot_be_written_is_a_one_line_error(tmp_path):
    _root_only("chattr +i")
    home = tmp_path / "h"
    a = big_jsonl(tmp_path / "a.jsonl", 300, "a", bad=2)
    assert cli(home, "ingest", str(a), "--run-date", DAY).returncode == 0
    part = partition_dir(home / "lake" / "listings", DAY)
    if subprocess.run(["chattr", "+i", str(part)], capture_output=True).returncode:
        pytest.skip("chattr +i is not permitted here")
    try:
        r = cli(home, "ingest", str(big_jsonl(tmp_path / "b.jsonl", 50, "b")), "--run-date", DAY)
    finally:
        subprocess.run(["chattr", "-i", str(part)], check=True)
    line = error_line(r)
    assert "Operation not permitted" in line and str(part) in line, line
    st = status(home)[DAY]
    assert (st["version"], st["rows"], st["quarantined"]) == (1, 300, 2)  # listings and quarantine of one run
    assert_consistent(part)


# ------------------------------------------------------------------------------------------
# the gate: concurrent promotes, a gate killed between its steps
# ------------------------------------------------------------------------------------------
LOOKUP = {"MELI_GATE_MIN_BEHAVIOUR_PASS": 0}  # lookup doubles know exact titles only: no behaviour rule


@pytest.fixture
def registry_home(tmp_path, monkeypatch):
    """v1 champion (date A); v2 (date B) and v3 (date C) registered, each better than the last.
    Lookup models (tests/unit/registry/test_registry.py) whose per-class recall we choose."""
    import pandas as pd

    from pipelines.core.fs import atomic_write_json
    from pipelines.settings import get_settings
    from tests.unit.registry.test_registry import CLASSES, LookupModel

    home = tmp_path / "home"
    monkeypatch.setenv("MELI_HOME", str(home))
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MELI_LAKE_URI"):
        monkeypatch.delenv(var, raising=False)
    settings = get_settings().ensure()
    df = pd.DataFrame(
        [{"listing_id": f"id{c}{k}", "title": f"{c} item {k}", "category": c} for c in CLASSES for k in range(10)]
    )
    dates = {"1": "2026-02-01", "2": "2026-02-02", "3": "2026-02-03"}
    import mlflow

    from pipelines.core.tracking import configure

    configure(settings)
    for recall, (want, run_date) in zip((0.6, 0.8, 0.9), dates.items()):
        d = settings.run_dir(run_date) / "dataset"
        d.mkdir(parents=True)
        df.to_parquet(d / "test.parquet", index=False)
        table = {}
        for c, g in df.groupby("category"):
            for i, t in enumerate(g["title"]):
                table[t] = c if i < round(recall * len(g)) else "WRONG"
        with mlflow.start_run() as run:
            info = mlflow.pyfunc.log_model(name="model", python_model=LookupModel(table), pip_requirements=["mlflow"])
        v = registry_versions.register_challenger(
            settings,
            {"model_uri": info.model_uri, "run_id": run.info.run_id, "model_type": "lookup", "val_macro_recall": 0.0},
            run_date,
        )
        assert v["version"] == want
        atomic_write_json(settings.run_dir(run_date) / "challenger.json", v)
    r = cli(home, "promote", "--run-date", dates["1"], **LOOKUP)
    assert r.returncode == 0 and json.loads(r.stdout)["rule"] == "first_model", r.stderr
    return home, settings, dates


def _aliases(settings) -> tuple:
    from pipelines.registry import decisions

    st = decisions.status(settings)
    return tuple((st[a] or {}).get("version") for a in ("champion", "previous"))


def test_concurrent_promotes_never_promote_twice_against_one_champion(registry_home):
    home, settings, dates = registry_home
    slow = {"MELI_GATE_BOOTSTRAP": 150_000}  # a long decision: the second gate arrives while it runs
    first = start(home, "promote", "--run-date", dates["2"], **slow, **LOOKUP)
    time.sleep(0.5)
    second = start(home, "promote", "--run-date", dates["3"], **slow, **LOOKUP)
    outs = {}
    for name, p in (("v2", first), ("v3", second)):
        out, err = p.communicate(timeout=300)
        outs[name] = (p.returncode, out, err)
    promoted = {
        k: json.loads(o) for k, (rc, o, _) in outs.items() if rc == 0 and json.loads(o)["decision"] == "promoted"
    }
    # never two promotions decided against the same champion
    assert len({d["champion_version"] for d in promoted.values()}) == len(promoted), promoted
    champion, previous = _aliases(settings)
    if set(promoted) == {"v2"}:  # the second gate found the champion moved: it refused, in one line
        assert (champion, previous) == ("2", "1")
        assert "champion moved from 1 to 2" in error_line(subprocess.CompletedProcess([], *outs["v3"]))
    else:  # the second gate evaluated after the first promoted: it compared v3 with v2
        assert promoted["v3"]["champion_version"] == "2" and (champion, previous) == ("3", "2")


@pytest.mark.parametrize("point", ["gate.decided", "gate.previous_moved"])
def test_a_gate_killed_mid_promotion_completes_on_rerun(registry_home, point):
    home, settings, dates = registry_home
    r = cli(home, "promote", "--run-date", dates["2"], MELI_FAULT=point, **LOOKUP)
    assert r.returncode == -signal.SIGKILL
    assert _aliases(settings)[0] == "1"  # the champion never moved
    r = cli(home, "promote", "--run-date", dates["2"], **LOOKUP)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert (d["decision"], d["champion_version"]) == ("promoted", "1")
    assert _aliases(settings) == ("2", "1")


@pytest.mark.parametrize("point", ["approval.decided", "approval.previous_moved"])
def test_an_approval_killed_mid_promotion_completes_when_answered_again(registry_home, point):
    home, settings, dates = registry_home
    r = cli(home, "promote", "--run-date", dates["2"], "--require-approval", **LOOKUP)
    assert r.returncode == 0 and "pending approval" in r.stdout, r.stderr
    r = cli(home, "registry", "approve", "2", "--reason", "ok", MELI_FAULT=point)
    assert r.returncode == -signal.SIGKILL
    assert _aliases(settings)[0] == "1"  # the champion never moved
    r = cli(home, "registry", "approve", "2", "--reason", "ok")  # the same answer, again
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert (d["decision"], d["champion_version"], d["approval"]["by"]) == ("promoted", "1", os_identity())
    assert _aliases(settings) == ("2", "1")
    r = cli(home, "registry", "reject", "2")  # the opposite answer afterwards: refused, one line
    assert r.returncode == 1 and f"already approved by {os_identity()}" in r.stderr
