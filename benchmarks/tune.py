"""Tuning benchmark (issue 23): an Optuna study on the real MeLi sample, the best trial vs the default recipe.

    .venv/bin/python -m benchmarks.tune [--models mlp] [--trials 20] [--max-epochs 6]
        [--workers 2] [--budget-min 60] [--keep DIR]

Through the project's code in a temporary MELI_HOME: ``ingest`` of the sample (the lake's hash split
75/10/15), then ``pipelines.training.tune``: the study prepares its splits + FastText once, ``--workers``
processes run trials side by side against the SQLite Optuna storage (TPE, median pruning on each
epoch's validation macro-recall; trial 0 = TrainConfig's defaults, the "default recipe"). Each trial
is appended to ``benchmarks/results/tune-trials.jsonl`` as it finishes (a stopped run keeps them).
After the study, the recipe is made from the best trial, and both recipes' served models are trained
ONCE each exactly as a retrain would (TrainConfig's epochs, early stopping, refit on train +
validation), side by side, and each scores the test split ONCE (the serving Bundle). The test split
is never read during the study. Writes ``benchmarks/results/tune.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from benchmarks.quality import REAL, RESULTS, load_served_bundle, machine, score_test, setup_logging

RUN_DATE = "2019-06-30"
log = logging.getLogger("benchmarks.tune")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.tune", description=__doc__)
    ap.add_argument("--models", default="mlp")
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--max-epochs", type=int, default=6, help="epochs per trial (early stopping within)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--budget-min", type=float, default=60.0, help="wall-clock budget of the study")
    ap.add_argument("--data", default=str(REAL))
    ap.add_argument("--keep", default=None, help="use (and keep) this MELI_HOME")
    ap.add_argument("--out", default=str(RESULTS))
    return ap.parse_args(argv)


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return str(os.getloadavg())


def _worker(run_date: str, tcfg_dict: dict, threads: int, trials_log: str, worker: int) -> None:
    setup_logging()
    from pipelines.settings import get_settings
    from pipelines.training.tune import TuneConfig, run_worker

    def on_trial(kind, trial) -> None:
        row = {
            "kind": kind,
            "number": trial.number,
            "state": trial.state.name,
            "value": trial.value,
            "last_epoch": max(trial.intermediate_values, default=0),
            "curve": [round(trial.intermediate_values[k], 4) for k in sorted(trial.intermediate_values)],
            "params": trial.params,
            "seconds": (trial.datetime_complete - trial.datetime_start).total_seconds()
            if trial.datetime_complete
            else None,
            "pid": os.getpid(),
        }
        with open(trials_log, "a") as fh:
            fh.write(json.dumps(row, default=str) + "\n")

    run_worker(get_settings(), run_date, TuneConfig(**tcfg_dict), threads, on_trial=on_trial, worker=worker)


def _final(kind: str, recipe: dict | None, info: dict, threads: int) -> dict:
    """One recipe's served model, trained as a retrain trains it (epochs, early stopping, refit)."""
    setup_logging()
    from pipelines.config import TrainConfig, apply_recipe
    from pipelines.features.embedding import embedding_digests
    from pipelines.settings import get_settings
    from pipelines.training.train import train_classifier

    base = TrainConfig(**{**info["base"], "models": [kind], "recipe": "default"})
    cfg = apply_recipe(base, kind, recipe)
    name = recipe["id"] if recipe else "default"
    t0 = time.perf_counter()
    # the study's own embedding, as the study's prepare recorded it (a benchmark run by a shell user: its files)
    digests = embedding_digests(info["embedding_dir"])
    res = train_classifier(
        get_settings(),
        info["dataset_dir"],
        info["embedding_dir"],
        kind,
        cfg,
        run_date=f"final-{name}",
        threads=threads,
        embedding_sha256=digests,
    )
    return {**res, "recipe": name, "wall_s": time.perf_counter() - t0, "cfg": cfg.to_dict()}


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logging()
    data = Path(args.data).resolve()
    home = Path(args.keep).resolve() if args.keep else Path(tempfile.mkdtemp(prefix="meli-tune-"))
    os.environ["MELI_HOME"] = str(home)
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MELI_LAKE_URI", "MELI_TUNE_STORAGE"):
        os.environ.pop(var, None)
    load_before = uptime()
    out_dir = Path(args.out)
    trials_log = out_dir / "tune-trials.jsonl"
    out_dir.mkdir(parents=True, exist_ok=True)
    trials_log.write_text("")

    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    from pipelines.config import TrainConfig
    from pipelines.data.ingest import ingest
    from pipelines.settings import get_settings
    from pipelines.training.tune import TuneConfig, make_recipe, prepare, summary

    t_start = time.perf_counter()
    settings = get_settings().ensure()
    ing = ingest([data], RUN_DATE, settings)
    models = [m for m in args.models.split(",") if m]
    tcfg = TuneConfig(
        models=models,
        trials=args.trials,
        budget_s=args.budget_min * 60,
        max_epochs=args.max_epochs,
        startup_trials=3,
        warmup_epochs=2,
        workers=args.workers,
    )
    base = TrainConfig(models=models)
    t0 = time.perf_counter()
    info = prepare(settings, RUN_DATE, tcfg, base)
    prep_s = time.perf_counter() - t0
    threads = max(1, (os.cpu_count() or 1) // args.workers)
    log.info("study prepared in %.0f s: %s; %d workers x %d threads", prep_s, info["counts"], args.workers, threads)
    t0 = time.perf_counter()
    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(max_workers=args.workers, mp_context=ctx) as pool:
        tc = {**tcfg.__dict__, "budget_s": max(1.0, tcfg.budget_s - prep_s)}
        futs = [pool.submit(_worker, RUN_DATE, tc, threads, str(trials_log), i) for i in range(args.workers)]
        for f in futs:
            f.result()
    study_s = time.perf_counter() - t0
    recipe = make_recipe(settings, RUN_DATE, tcfg)
    summ = summary(settings, RUN_DATE, tcfg)
    log.info("study done in %.1f min: %s", study_s / 60, summ)

    # both recipes' served models once each, side by side; the test split scored once each
    t0 = time.perf_counter()
    finals = {}
    with ProcessPoolExecutor(max_workers=2, mp_context=ctx) as pool:
        for kind in models:
            futs = {
                name: pool.submit(_final, kind, r, info, threads) for name, r in (("default", None), ("tuned", recipe))
            }
            finals[kind] = {name: f.result() for name, f in futs.items()}
    final_s = time.perf_counter() - t0
    from pipelines.features.embedding import read_split

    test = read_split(info["dataset_dir"], "test")
    titles, y = test["title"].tolist(), test["category"].tolist()
    scores = {}
    for kind, by in finals.items():
        for name, res in by.items():
            bundle = load_served_bundle(res["model_uri"], "cpu", home / "served" / kind / name)
            scores[(kind, name)] = score_test(bundle, titles, y)
            del bundle
    total_s = time.perf_counter() - t_start
    load_after = uptime()
    rows = [json.loads(line) for line in trials_log.read_text().splitlines() if line.strip()]
    md = render(args, argv, data, ing, info, tcfg, summ, recipe, rows, finals, scores, prep_s, study_s, final_s,
                total_s, load_before, load_after)  # fmt: skip
    (out_dir / "tune.md").write_text(md)
    print(md)
    if not args.keep:
        shutil.rmtree(home, ignore_errors=True)
    return 0


def render(args, argv, data, ing, info, tcfg, summ, recipe, rows, finals, scores, prep_s, study_s, final_s,
           total_s, load_before, load_after) -> str:  # fmt: skip
    c = info["counts"]
    cmd = "nice -n 5 .venv/bin/python -m benchmarks.tune " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        "# Tuning benchmark (CPU)",
        "",
        f"{date.today().isoformat()} on {machine()}",
        "",
        f"Command: `{cmd.strip()}`",
        "",
        f"Load: before `{load_before}`; after `{load_after}` (a 2-core machine shared with other engineers).",
        "",
        f"Data: `{data.name}`, {ing.rows_written:,} rows kept; the study's split (the lake's hash of listing_id): "
        f"train {c['train']:,} / validation {c['validation']:,} / test {c['test']:,}. Prepared once for the "
        f"study (splits, FastText, encoded arrays) in {prep_s:.0f} s.",
        "",
        f"Study: models {','.join(tcfg.models)}, {tcfg.trials} trials, TPE (seed {tcfg.seed}), median pruning "
        f"(not in the first {tcfg.startup_trials} trials, nor before epoch {tcfg.warmup_epochs + 1}) on each epoch's "
        f"validation macro-recall, {info['epochs']} epochs per trial (cosine schedule over them, early stopping "
        f"within), no refit in trials, {tcfg.workers} workers side by side on one SQLite storage. Trial 0 = the "
        f"default recipe (TrainConfig's values of the searched fields). Study wall time {study_s / 60:.1f} min.",
        "",
        "| trial | state | val macro-recall (last reported) | epochs | s | params |",
        "|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r["kind"], r["number"])):
        val = r["value"] if r["value"] is not None else (r["curve"][-1] if r["curve"] else None)
        p = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in r["params"].items())
        lines.append(
            f"| {r['kind']} {r['number']} | {r['state'].lower()} | {'-' if val is None else f'{val:.4f}'} "
            f"| {r['last_epoch']} | {r['seconds'] or 0:.0f} | {p} |"
        )
    lines += ["", "## Default recipe vs tuned recipe", ""]
    lines += [
        "Validation: the study's (selection pass, "
        f"{info['epochs']} epochs). Test: each recipe's served model trained once after the study as a retrain "
        "trains it (TrainConfig's epochs and patience, early stopping on validation, refit on train + "
        f"validation; {final_s / 60:.1f} min for both, side by side), the test split scored once each "
        "with the serving Bundle.",
        "",
        "| model | recipe | val macro-recall (study) | val macro-recall (final selection pass) | test macro-recall "
        "| test accuracy | best epoch |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind, by in finals.items():
        s = summ[kind]
        for name, res in by.items():
            sc = scores[(kind, name)]
            vstudy = s["default_val_macro_recall"] if name == "default" else s["best_val_macro_recall"]
            trial = s["default_trial"] if name == "default" else s["best_trial"]
            label = f"default (trial {trial})" if name == "default" else f"tuned `{recipe['id']}` (trial {trial})"
            lines.append(
                f"| {kind} | {label} | {vstudy:.4f} | {res['val_macro_recall']:.4f} | {sc['macro_recall']:.4f} "
                f"| {sc['accuracy']:.4f} | {res['best_epoch']} |"
            )
        lines += ["", f"Tuned parameters ({kind}): `{json.dumps(recipe['params'][kind])}`", ""]
    lines.append(
        f"Trial counts: { {k: summ[k]['trials'] for k in tcfg.models} }. Total wall time {total_s / 60:.1f} min."
    )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
