"""Scale benchmark: the stages of a nightly run at catalog volume, full and warm.

    .venv/bin/python -m benchmarks.scale [--rows 1000000] [--new-rows 50000]
        [--rss-rows 5000000] [--out benchmarks/results/scale.md]

Real titles from the shared MeLi 2019 sample replicated to ``--rows`` (each copy's titles suffixed
with a copy counter, as ``benchmarks.ingest`` does: every row distinct), ingested as one partition;
then the **full run, measured**: every stage of a run with the DAG defaults, each in a fresh
subprocess (wall time and peak RSS from os.wait4 of that child): ingest, validate, prepare,
embedding (FastText, its epochs by data size), encode, every model type as the DAG trains them (its
planned epochs, validation checks, early stopping and refit policy; 2 trainings side by side, 1
torch thread each), register, evaluate, gate. After the trainings, each type's **engine speed**:
one training alone on every core for ``--probe-batches`` batches. The warm night starts from the
full run's model.

Then the **warm night**: ``--new-rows`` new distinct titles as the next day's partition, and the
whole nightly run with the DAG defaults (mode auto, which picks warm): every stage timed, the
trainings side by side as in the DAG, and scoring the new partition with the champion.

The **5M** full run is extrapolated from the measured one: FastText and every training scaled by
the samples the cost policy gives them at 5M (planned epochs x rows) over those it gave them here.

``--rss-rows``: a training task's peak RSS at that many titles (ingest, prepare, encode at that
size, then ``train_classifier`` with every step of its flow but only the first 50 batches of each
epoch: memory does not grow with epochs). ``fasttext-numpy2`` (benchmark-only: installed on demand
with pip) trains supervised on the same train split, 2 threads, as the CPU reference.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.common import cpu_name
from benchmarks.ingest import _templates
from pipelines.features import batches

REPO = Path(__file__).resolve().parent.parent
DATE, NEXT = "2026-11-01", "2026-11-02"
QUIET = {"MLFLOW_LOGGING_LEVEL": "WARNING", "PYTHONWARNINGS": "ignore", "GX_ANALYTICS_ENABLED": "false"}


def write_input(path: Path, rows: int, first_copy: int = 0) -> str:
    """``rows`` lines of DiploDatos jsonl.gz; copy k (from ``first_copy``) appends ' k' to titles."""
    templates, origin = _templates()
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1) as gz:
        written, copy = 0, first_copy
        while written < rows:
            take = min(len(templates), rows - written)
            tag = b"" if copy == 0 else b" %d" % copy
            gz.write(b"".join(h + tag + q + s + b"\n" for h, q, s in templates[:take]))
            written += take
            copy += 1
    return origin


# ------------------------------------------------------------------------------------------
# Children: one stage each, `python -m benchmarks.scale --child STAGE HOME ARGS_JSON`
# ------------------------------------------------------------------------------------------
def _state(home: Path, name: str, value=None):
    path = home / "bench" / f"{name}.json"
    if value is None:
        return json.loads(path.read_text())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, default=str))
    return value


def child(stage: str, home: Path, args: dict) -> dict:
    import logging

    logging.basicConfig(level=logging.WARNING)
    from pipelines.config import TrainConfig
    from pipelines.flows import retrain
    from pipelines.settings import get_settings

    s = get_settings()
    cfg = TrainConfig.from_dict(args.get("cfg") or {"models": ["mlp", "cnn", "bilstm"]})
    date = args.get("date", DATE)
    if stage == "ingest":
        return retrain.step_ingest(s, [args["src"]], date).to_dict()
    if stage == "validate":
        return {
            k: v for k, v in retrain.step_validate(s, date).to_dict().items() if k in ("success", "passed", "evaluated")
        }
    if stage == "prepare":
        return _state(home, f"dataset-{date}", retrain.step_prepare(s, date, None).to_dict())
    if stage == "embedding":
        return _state(
            home, f"embedding-{date}", retrain.step_embedding(s, _state(home, f"dataset-{date}"), cfg).to_dict()
        )
    if stage == "train":
        if args.get("max_batches"):  # the RSS probe: every step of the flow, fewer batches per epoch
            full = batches.length_bucketed_batches
            batches.length_bucketed_batches = lambda *a, **k: full(*a, **k)[: args["max_batches"]]
        ds, emb = _state(home, f"dataset-{date}"), _state(home, f"embedding-{date}")
        r = retrain.step_train(s, ds, emb, args["kind"], cfg, side_by_side=args.get("side_by_side", 1)).to_dict()
        import mlflow

        client = mlflow.MlflowClient()
        hist = client.get_metric_history(r["run_id"], "epoch_samples_per_s")
        r["epoch_samples_per_s"] = [h.value for h in sorted(hist, key=lambda h: h.step)]
        m = client.get_run(r["run_id"]).data
        r["policy"] = {k: m.metrics.get(k) for k in ("planned_epochs", "checks_per_epoch", "val_check_rows")}
        r["policy"]["checks_run"] = len(hist)
        r["policy"]["refit"] = m.tags.get("meli.refit", "")
        r["samples_per_s"] = m.metrics.get("train_samples_per_s")
        return _state(home, f"{args.get('name', 'train')}-{date}-{args['kind']}", r)
    if stage == "register":
        ds = _state(home, f"dataset-{date}")
        trained = [_state(home, f"train-{date}-{k}") for k in cfg.models]
        results = retrain.step_ensemble(s, ds, trained, cfg)
        return _state(
            home, f"challenger-{date}", retrain.step_register(s, results, date, "", ds["parent_run_id"]).to_dict()
        )
    if stage == "evaluate":
        return retrain.step_evaluate(s, date, _state(home, f"challenger-{date}")).to_dict()
    if stage == "gate":
        ds = _state(home, f"dataset-{date}")
        force = bool(args.get("force"))  # the one-epoch parent run is made champion whatever its score
        d = retrain.step_gate(s, date, _state(home, f"challenger-{date}"), ds["parent_run_id"], force_promote=force)
        return {"decision": d.decision, "rule": d.rule}
    if stage == "score":
        from pipelines.data.lake import resolve
        from pipelines.serving.score import score

        r = score(s, str(resolve(s.listings_dir / f"ingest_date={date}")), run_date=date, progress=False)
        return r.to_dict()
    if stage == "fasttext":
        return _state(
            home, "fasttext", fasttext_reference(home, _state(home, f"dataset-{date}"), args.get("epochs", 5))
        )
    raise ValueError(stage)


def fasttext_reference(home: Path, dataset: dict, epochs: int) -> dict:
    """fastText supervised (the C++ library) on the same train split, our tokens, 2 threads."""
    import fasttext
    import pyarrow.parquet as pq

    from pipelines.features.text import tokenize

    t = pq.read_table(Path(dataset["dir"]) / "train.parquet", columns=["title", "category"])
    path = home / "bench" / "fasttext-train.txt"
    with open(path, "w") as fh:
        for title, cat in zip(t.column("title").to_pylist(), t.column("category").to_pylist(), strict=True):
            fh.write(f"__label__{cat} {' '.join(tokenize(title or ''))}\n")
    t0 = time.perf_counter()
    fasttext.train_supervised(str(path), epoch=epochs, thread=2, minn=3, maxn=5, dim=100, bucket=100_000, verbose=0)
    seconds = time.perf_counter() - t0
    return {
        "rows": t.num_rows,
        "epochs": epochs,
        "seconds": round(seconds, 1),
        "samples_per_s": t.num_rows * epochs / seconds,
    }


# ------------------------------------------------------------------------------------------
# Parent: run children, measure, write the tables
# ------------------------------------------------------------------------------------------
class Runner:
    def __init__(self, home: Path, threads: int = 0):
        self.home = home
        self.env = {**os.environ, **QUIET, "MELI_HOME": str(home), "PYTHONPATH": str(REPO)}
        if threads:
            self.env["MELI_TORCH_THREADS"] = str(threads)

    def start(self, stage: str, **args) -> tuple[subprocess.Popen, float]:
        cmd = [sys.executable, "-m", "benchmarks.scale", "--child", stage, str(self.home), json.dumps(args)]
        log = open(self.home / "bench" / f"{stage}-{args.get('kind', '')}-{args.get('date', DATE)}.log", "w")
        return subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT), time.perf_counter()

    def wait(self, started: tuple[subprocess.Popen, float], name: str) -> dict:
        proc, t0 = started
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        if os.waitstatus_to_exitcode(status) != 0:
            logs = sorted((self.home / "bench").glob("*.log"), key=lambda p: p.stat().st_mtime)[-1].read_text()[-3000:]
            raise RuntimeError(f"stage {name} failed:\n{logs}")
        return {"stage": name, "wall_s": round(wall, 1), "rss_gb": round(usage.ru_maxrss / 1024**2, 2)}

    def run(self, stage: str, **args) -> dict:
        out = self.wait(self.start(stage, **args), stage)
        print(f"  {out['stage']:<28} {out['wall_s']:>8.1f} s  {out['rss_gb']:>6.2f} GB", flush=True)
        return out

    def trainings(self, kinds: list[str], date: str, cfg: dict, at_once: int = 2) -> list[dict]:
        """The DAG's mapped train tasks: ``at_once`` side by side, 1 torch thread each."""
        pending, running, done = list(kinds), [], []
        t0 = time.perf_counter()
        while pending or running:
            while pending and len(running) < at_once:
                k = pending.pop(0)
                running.append((k, self.start("train", kind=k, date=date, cfg=cfg, side_by_side=at_once)))
            k, started = running.pop(0)
            m = self.wait(started, f"train {k}")
            print(f"  {m['stage']:<28} {m['wall_s']:>8.1f} s  {m['rss_gb']:>6.2f} GB", flush=True)
            done.append(m | {"kind": k, "result": _state(self.home, f"train-{date}-{k}")})
        wall = time.perf_counter() - t0
        print(f"  {'trainings (wall)':<28} {wall:>8.1f} s", flush=True)
        return done + [
            {"stage": "trainings (wall)", "wall_s": round(wall, 1), "rss_gb": max(d["rss_gb"] for d in done)}
        ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--new-rows", type=int, default=50_000)
    p.add_argument("--rss-rows", type=int, default=0, help="also a training task's peak RSS at this size (0 = skip)")
    p.add_argument("--models", default="mlp,cnn,bilstm")
    p.add_argument("--probe-batches", type=int, default=400, help="batches of each engine-speed probe (0 = skip)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "scale.md")
    p.add_argument("--keep", type=Path, help="work directory to keep (default: a temp dir, deleted)")
    p.add_argument("--rss-only", action="store_true", help="only the --rss-rows memory probe")
    p.add_argument("--render", type=Path, help="re-render --out from this report (.json) and exit")
    p.add_argument("--child", nargs=3, metavar=("STAGE", "HOME", "ARGS"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.render:
        a.out.write_text(render(json.loads(a.render.read_text())))
        return 0
    if a.child:
        stage, home, args = a.child
        child(stage, Path(home), json.loads(args))
        return 0
    if a.rss_only:  # the memory probe alone (its own report beside --out)
        work = a.keep or Path(tempfile.mkdtemp(prefix="meli-scale-rss-"))
        work.mkdir(parents=True, exist_ok=True)
        rep = {"started": datetime.now(UTC).isoformat(timespec="seconds"), "rss": rss_probe(work, a.rss_rows)}
        out = a.out.with_name(a.out.stem + "-rss")
        out.with_suffix(".json").write_text(json.dumps(rep, indent=2, default=str))
        lines = [f"# A training task's peak RSS at {a.rss_rows:,} titles", "", f"{rep['started'][:10]} on "
                 f"{platform.node()} ({cpu_name()}, {os.cpu_count()} cores), `python -m benchmarks.scale "
                 f"--rss-only --rss-rows {a.rss_rows}`", "", *_table(rep["rss"]["stages"])]  # fmt: skip
        out.with_suffix(".md").write_text("\n".join(lines) + "\n")
        print(f"wrote {out.with_suffix('.md')}")
        return 0
    from pipelines.config import TrainConfig

    kinds = a.models.split(",")
    work = a.keep or Path(tempfile.mkdtemp(prefix="meli-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    report = {"rows": a.rows, "new_rows": a.new_rows, "started": datetime.now(UTC).isoformat(timespec="seconds")}
    report["load"] = {"start": round(os.getloadavg()[0], 2)}
    report["probe_batches"] = a.probe_batches
    t_all = time.perf_counter()

    # ---- the 1M-row lake: the full run with the DAG defaults, measured (the warm night's parent) ----
    home = work / "home"
    (home / "bench").mkdir(parents=True, exist_ok=True)
    r = Runner(home)
    src = work / "lake.jsonl.gz"
    report["origin"] = write_input(src, a.rows)
    print(f"full run at {a.rows:,} rows ({report['origin']}), DAG defaults", flush=True)
    defaults = {"models": kinds}
    t_full = time.perf_counter()
    full = [r.run("ingest", src=str(src)), r.run("validate"), r.run("prepare"), r.run("embedding", cfg=defaults)]
    emb = _state(home, f"embedding-{DATE}")
    trains = r.trainings(kinds, DATE, defaults)
    probe_s = 0.0
    if a.probe_batches:  # each type alone on every core (not part of the run: its time is taken out)
        t0 = time.perf_counter()
        probe = {"models": kinds, "epochs": 1, "refit": False}
        report["engine"] = [
            r.run("train", kind=k, cfg=probe, max_batches=a.probe_batches, name="probe")
            | {"result": _state(home, f"probe-{DATE}-{k}")}
            for k in kinds
        ]
        probe_s = time.perf_counter() - t0
    full += trains + [r.run("register", cfg=defaults), r.run("evaluate"), r.run("gate", force=True)]
    report["full"] = {
        "stages": full,
        "embedding": emb,
        "dataset": _state(home, f"dataset-{DATE}"),
        "wall_s": round(time.perf_counter() - t_full - probe_s, 1),
        "kinds": kinds,
    }
    try:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "fasttext-numpy2"], check=True, timeout=600)
        report["fasttext"] = r.run("fasttext") | {"result": None}
        report["fasttext"]["result"] = json.loads((home / "bench" / "fasttext.json").read_text())
    except Exception as exc:  # the reference is optional: say why it is missing
        report["fasttext"] = {"error": str(exc)[:300]}

    # ---- the warm night: new rows, the whole nightly run with the DAG defaults ---------------
    new_src = work / "night.jsonl.gz"
    write_input(new_src, a.new_rows, first_copy=a.rows // 44_000 + 1000)
    print(f"warm night: {a.new_rows:,} new rows on the {a.rows:,}-row lake (DAG defaults, mode auto)", flush=True)
    t0 = time.perf_counter()
    night = [
        r.run("ingest", src=str(new_src), date=NEXT),
        r.run("validate", date=NEXT),
        r.run("prepare", date=NEXT),
        r.run("embedding", date=NEXT, cfg=defaults),
    ]
    night += r.trainings(kinds, NEXT, defaults)
    night += [r.run("register", date=NEXT, cfg=defaults), r.run("evaluate", date=NEXT), r.run("gate", date=NEXT)]
    night.append(r.run("score", date=NEXT))
    report["warm"] = {
        "stages": night,
        "wall_s": round(time.perf_counter() - t0, 1),
        "embedding": _state(home, f"embedding-{NEXT}"),
    }

    # ---- a training task's peak RSS at --rss-rows ---------------------------------------------
    if a.rss_rows:
        report["rss"] = rss_probe(work, a.rss_rows)

    report["total_min"] = round((time.perf_counter() - t_all) / 60, 1)
    report["load"]["end"] = round(os.getloadavg()[0], 2)
    report["defaults"] = TrainConfig().to_dict()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    (a.out.with_suffix(".json")).write_text(json.dumps(report, indent=2, default=str))
    a.out.write_text(render(report))
    print(f"wrote {a.out}")
    if not a.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 0


def rss_probe(work: Path, rows: int) -> dict:
    """A training task's peak RSS at ``rows`` titles: ingest, validate, prepare, embedding (FastText 1
    epoch: the probe measures memory, not time), then a BiLSTM training task with every step of its
    flow (checks, the whole-split scoring of the kept weights, the bundle) but 50 batches an epoch."""
    big = work / "big"
    (big / "bench").mkdir(parents=True, exist_ok=True)
    rb = Runner(big, threads=2)
    bsrc = work / "big.jsonl.gz"
    write_input(bsrc, rows)
    print(f"training task RSS at {rows:,} rows", flush=True)
    cfg = {"models": ["bilstm"], "embedding_epochs": 1}
    rss = [rb.run("ingest", src=str(bsrc)), rb.run("validate"), rb.run("prepare"), rb.run("embedding", cfg=cfg)]
    rss.append(rb.run("train", kind="bilstm", cfg=cfg, max_batches=50))
    bsrc.unlink(missing_ok=True)
    return {"rows": rows, "stages": rss, "dataset": _state(big, f"dataset-{DATE}")}


def _table(stages: list[dict]) -> list[str]:
    out = ["| stage | wall s | peak RSS GB | notes |", "|---|---|---|---|"]
    for s in stages:
        note = ""
        res = s.get("result") or {}
        if res.get("epoch_samples_per_s"):
            sps = res["epoch_samples_per_s"]
            pol = res.get("policy") or {}
            note = f"{res.get('mode', 'full')}, {res.get('train_rows', 0):,} rows"
            if pol.get("planned_epochs"):
                note += (
                    f", {pol['planned_epochs']:.0f} epochs planned x {pol['checks_per_epoch']:.0f} checks, "
                    f"{pol['checks_run']} run (best {res.get('best_epoch')}), refit {pol.get('refit', '')}"
                )
            note += f"; samples/s per check: {min(sps):,.0f}-{max(sps):,.0f}"
        out.append(f"| {s['stage']} | {s['wall_s']:,.1f} | {s['rss_gb']:.2f} | {note} |")
    return out


def extrapolate(rep: dict, rows: int) -> dict:
    """The full run at ``rows`` titles from the measured one: FastText and each training scaled by the
    samples the cost policy gives them there over the samples they had here (no early stopping assumed
    there), the DAG's two training slots replayed in order, every other stage linear in rows."""
    import math

    from pipelines.config import TrainConfig
    from pipelines.features.embedding import embedding_epochs
    from pipelines.training.loop import planned_epochs

    cfg = TrainConfig(**{k: v for k, v in rep.get("defaults", {}).items() if k in TrainConfig.__dataclass_fields__})
    counts = rep["full"]["dataset"]["counts"]
    scale = rows / rep["rows"]
    train_here, train_there = counts["train"], round(counts["train"] * scale)
    stages = {s["stage"]: s for s in rep["full"]["stages"]}
    emb = rep["full"]["embedding"]
    ft_here = emb.get("seconds", 0.0)
    ft_there = ft_here * embedding_epochs(cfg, train_there) * train_there / (emb.get("epochs") or 1) / train_here
    other = sum(s["wall_s"] for name, s in stages.items() if name not in ("embedding", "trainings (wall)")
                and not name.startswith("train "))  # fmt: skip
    other += stages["embedding"]["wall_s"] - ft_here  # encoding the splits
    per_type = {}
    for name, s in stages.items():
        if not name.startswith("train "):
            continue
        res, pol = s["result"], s["result"].get("policy") or {}
        samples_here = pol.get("checks_run", 1) / max(pol.get("checks_per_epoch") or 1, 1) * train_here
        refit_here = (pol.get("refit") or "").startswith("yes")
        samples_here *= 2 if refit_here else 1
        there = planned_epochs(cfg, train_there) * train_there
        per_type[res["model_type"]] = s["wall_s"] * there / max(samples_here, 1)
    slots, wall = [0.0, 0.0], 0.0
    for kind in rep["full"].get("kinds", list(per_type)):
        i = slots.index(min(slots))
        slots[i] += per_type.get(kind, 0.0)
    wall = max(slots)
    total = other * scale + ft_there + wall
    return {
        "rows": rows,
        "fasttext_s": ft_there,
        "fasttext_epochs": embedding_epochs(cfg, train_there),
        "epochs": planned_epochs(cfg, train_there),
        "trainings": per_type,
        "trainings_wall_s": wall,
        "other_s": other * scale,
        "total_h": total / 3600,
        "ceil_note": math.ceil(total / 60),
    }


def render(rep: dict) -> str:
    """The Markdown page (also re-rendered from the .json by ``--render``)."""
    load = rep.get("load", {})
    lines = [
        "# Scale benchmark (CPU)",
        "",
        f"{rep['started'][:10]} on {platform.node()} ({cpu_name()}, {os.cpu_count()} cores), "
        f"`python -m benchmarks.scale --rows {rep['rows']} --new-rows {rep['new_rows']}"
        + (f" --rss-rows {rep['rss']['rows']}" if rep.get("rss") else "")
        + f"`; {rep['origin']}; "
        f"total {rep['total_min']} min. Load average (1 min) at the start {load.get('start', '?')}, at the end "
        f"{load.get('end', '?')}.",
        "",
        f"## Full run at {rep['rows']:,} rows, DAG defaults: {rep['full']['wall_s'] / 60:.1f} min, measured",
        "",
        *_table(rep["full"]["stages"]),
    ]
    emb = rep["full"]["embedding"]
    lines += [
        "",
        f"Embedding stage: FastText {emb.get('seconds', 0):,.0f} s ({emb.get('epochs', '?')} epochs by data size), "
        f"encoding {emb.get('encoded', {}).get('seconds', 0):,.1f} s.",
    ]
    if rep.get("engine"):
        lines += [
            "",
            "## Engine speed: one training alone on both cores (the same data, after the run's trainings)",
            "",
            "| type | samples/s | batches |",
            "|---|---|---|",
        ]
        for e in rep["engine"]:
            lines.append(f"| {e['result']['model_type']} | {e['result'].get('samples_per_s') or 0:,.0f} | "
                         f"{rep.get('probe_batches', '')} |")  # fmt: skip
    ft = rep.get("fasttext", {})
    if ft.get("result"):
        x = ft["result"]
        lines += [
            "",
            f"fastText supervised (fasttext-numpy2, 2 threads, {x['epochs']} epochs, same train split, our tokens): "
            f"{x['samples_per_s']:,.0f} samples/s.",
        ]
    if rep.get("warm"):
        lines += [
            "",
            f"## Warm night: {rep['new_rows']:,} new rows on the lake, DAG defaults (mode auto): "
            f"{rep['warm']['wall_s'] / 60:.1f} min",
            "",
            *_table(rep["warm"]["stages"]),
            "",
            f"Plan: {rep['warm']['embedding'].get('plan', {}).get('reason', '')}",
        ]
    for rows in (5_000_000,):
        x = extrapolate(rep, rows)
        lines += [
            "",
            f"## Full run at {rows:,} rows, extrapolated from the measured one: {x['total_h']:.1f} h",
            "",
            f"FastText {x['fasttext_epochs']} epochs {x['fasttext_s'] / 60:.0f} min; every type {x['epochs']} epochs: "
            + ", ".join(f"{k} {v / 60:.0f} min" for k, v in x["trainings"].items())
            + f", two at a time: {x['trainings_wall_s'] / 60:.0f} min; the other stages x{rows / rep['rows']:g}: "
            f"{x['other_s'] / 60:.0f} min.",
        ]
    if rep.get("rss"):
        lines += ["", f"## A training task at {rep['rss']['rows']:,} rows", "", *_table(rep["rss"]["stages"])]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_NOFILE, (4096, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    sys.exit(main())
