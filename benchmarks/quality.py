"""Quality benchmark (issue 5): test macro-recall of each model type on the real MeLi sample, side by
side with a TF-IDF word+char LinearSVC baseline trained on the same split, in the same run.

    .venv/bin/python -m benchmarks.quality [--models mlp,cnn,bilstm] [--epochs N] [--data PATH]

Everything goes through the project's own code, in a temporary MELI_HOME: ``ingest`` (the lake's
deterministic hash split, train/validation/test = 75/10/15 by listing id), ``prepare_dataset``,
``train_embedding``, then ``train_classifier`` per model type, two side by side in worker processes
as the DAG's mapped train tasks run (real MLflow, SQLite in the temp home; early stopping on
validation macro-recall and the refit on train + validation, as in production). Each logged model is downloaded from
MLflow and loaded as the serving ``Bundle``; the TEST split is scored with ``Bundle.predict`` (batch
inference, tokenization included). The baseline is fitted on the same train split (raw lowercased
titles) and scored on the same test rows. Nothing here is tuned on the test split.

The device follows TrainConfig.device (``--device``, default auto: CUDA when available). On CUDA the
types share the GPU side by side as on the CPU (a step at batch 64 is launch-bound: the GPU idles
most of it), the baseline fits in another process meanwhile, and the run then trains each model one
selection epoch on the CPU and scores the test split with the same bundle on the CPU, to report
training samples/s and scoring titles/s GPU vs CPU. Writes
benchmarks/results/quality-<device>.md (cpu or cuda).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from benchmarks.common import cpu_name
from pipelines.core.fs import sha256_file
from pipelines.core.system import train_threads

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
REAL = (
    Path(os.environ.get("MELI_SHARED_DATA", REPO.parent / "shared" / "data" / "meli2019")) / "spanish.sample.jsonl.gz"
)
RUN_DATE = "2019-06-30"  # any fixed date: the lake partition and run directory of this benchmark

log = logging.getLogger("benchmarks.quality")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.quality", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--models", default="mlp,cnn,bilstm", help="comma-separated: mlp,cnn,bilstm")
    ap.add_argument("--epochs", type=int, default=None, help="max epochs (default: TrainConfig's)")
    ap.add_argument("--embedding-epochs", type=int, default=None, help="default: TrainConfig's")
    ap.add_argument(
        "--seed",
        type=int,
        default=None,
        help="TrainConfig's seed (FastText and torch); runs differing only in it are summarised together",
    )
    ap.add_argument("--data", default=str(REAL), help="labelled listings (any format ingest reads)")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument(
        "--parallel",
        type=int,
        default=None,
        help="model types trained side by side on the CPU, as the DAG's mapped train tasks "
        "(default: MELI_TRAIN_CONCURRENCY, 2); each gets cores // this many torch threads",
    )
    ap.add_argument(
        "--sentence",
        default=None,
        help="comma-separated sentence_encoder variants trained side by side in this run, the first the "
        "challenger's (default: TrainConfig's, then none: each type with and without the pretrained vectors)",
    )
    ap.add_argument("--no-baseline", action="store_true", help="skip the LinearSVC baseline")
    ap.add_argument("--keep", default=None, help="use (and keep) this MELI_HOME instead of a temp dir")
    ap.add_argument("--out", default=str(RESULTS), help="directory of the markdown result")
    return ap.parse_args(argv)


def machine() -> str:
    import torch

    text = f"{platform.node()} ({cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, "
    text += f"{torch.get_num_threads()} threads"
    if torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name(0)}"
    return text + ")"


def load_served_bundle(model_uri: str, device: str, dest: Path):
    """The logged pyfunc's bundle, downloaded from MLflow (what serving loads)."""
    import mlflow

    from pipelines.model.bundle import Bundle

    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(dest)))
    bundle_dir = next(p for p in (local / "artifacts" / "bundle", local / "bundle") if p.is_dir())
    return Bundle(bundle_dir, device=device)


def score_test(bundle, titles: list[str], y_true: list[str]) -> dict:
    from pipelines.model.metrics import accuracy, macro_recall

    bundle.predict(titles[:256])  # warm-up (lazy init, CUDA context)
    t0 = time.perf_counter()
    pred = bundle.predict(titles)["predicted_category"].tolist()
    seconds = time.perf_counter() - t0
    return {
        "macro_recall": macro_recall(y_true, pred),
        "accuracy": accuracy(y_true, pred),
        "titles_per_s": len(titles) / seconds,
    }


def run_baseline(train, test) -> dict:
    """TF-IDF word (1,2) + char_wb (2,5) n-grams, sublinear tf, LinearSVC (sklearn defaults)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import FeatureUnion, make_pipeline
    from sklearn.svm import LinearSVC

    from pipelines.model.metrics import accuracy, macro_recall

    feats = FeatureUnion(
        [
            ("word", TfidfVectorizer(analyzer="word", ngram_range=(1, 2), sublinear_tf=True, lowercase=True)),
            ("char", TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, lowercase=True)),
        ]
    )
    clf = make_pipeline(feats, LinearSVC())
    lower = lambda titles: [str(t).lower() for t in titles]  # noqa: E731
    t0 = time.perf_counter()
    clf.fit(lower(train["title"]), train["category"])
    fit_s = time.perf_counter() - t0
    titles = lower(test["title"])
    t0 = time.perf_counter()
    pred = clf.predict(titles)
    pred_s = time.perf_counter() - t0
    y = test["category"].tolist()
    return {
        "model": "TF-IDF word+char LinearSVC (baseline)",
        "device": "cpu",
        "test_macro_recall": macro_recall(y, list(pred)),
        "test_accuracy": accuracy(y, list(pred)),
        "train_s": fit_s,
        "titles_per_s": len(titles) / pred_s,
    }


def start_baseline(train, test):
    """The baseline in a worker process (a Future), while the model types train on the GPU."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
    future = pool.submit(run_baseline, train[["title", "category"]].copy(), test[["title", "category"]].copy())
    pool.shutdown(wait=False)  # the worker exits once the baseline is done
    return future


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("mlflow", "alembic", "gensim", "urllib3", "great_expectations"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _train_one(
    dataset_dir: str, embedding_dir: str, kind: str, cfg_dict: dict, threads: int, run_date: str
) -> tuple[dict, float]:
    """One model type in a worker process (MELI_HOME is inherited): its result and wall seconds."""
    setup_logging()
    from pipelines.config import TrainConfig
    from pipelines.features.embedding import embedding_digests
    from pipelines.settings import get_settings
    from pipelines.training.train import train_classifier

    t0 = time.perf_counter()
    res = train_classifier(
        get_settings(),
        dataset_dir,
        embedding_dir,
        kind,
        TrainConfig(**cfg_dict),
        run_date=run_date,
        threads=threads,
        embedding_sha256=embedding_digests(embedding_dir),  # the embedding this benchmark just trained
    )
    return res, time.perf_counter() - t0


def train_all(
    settings, dataset_dir, embedding_dir, cfg, side_by_side: int, threads: int, run_date: str = RUN_DATE
) -> list[tuple[dict, float]]:
    """Every model type, ``side_by_side`` at a time in worker processes (as the DAG's mapped train
    tasks run), each with ``threads`` torch threads; results in ``cfg.models`` order."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    args = [(str(dataset_dir), str(embedding_dir), kind, cfg.to_dict(), threads, run_date) for kind in cfg.models]
    if side_by_side <= 1:
        return [_train_one(*a) for a in args]
    log.info("training %s, %d side by side, %d torch threads each", cfg.models, side_by_side, threads)
    from pipelines.core.tracking import configure

    configure(settings)  # create the MLflow store and experiment once, not racing in every worker
    ctx = multiprocessing.get_context("spawn")  # no forked torch/OpenMP state
    cost = {"bilstm": 0, "cnn": 1, "mlp": 2}  # slowest first: the last one to start is the quickest
    with ProcessPoolExecutor(max_workers=side_by_side, mp_context=ctx) as pool:
        futures = {a[2]: pool.submit(_train_one, *a) for a in sorted(args, key=lambda a: cost.get(a[2], 0))}
        return [futures[kind].result() for kind in cfg.models]


def _metric(run_id: str, key: str):
    import mlflow

    return mlflow.get_run(run_id).data.metrics.get(key)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    data = Path(args.data).resolve()
    if not data.is_file():
        print(f"error: no data file at {data} (pass --data)", file=sys.stderr)
        return 2
    home = Path(args.keep).resolve() if args.keep else Path(tempfile.mkdtemp(prefix="meli-quality-"))
    os.environ["MELI_HOME"] = str(home)
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MELI_LAKE_URI"):
        os.environ.pop(var, None)  # never log the benchmark into a real tracking server
    if args.parallel:  # one source for the trainings at once: Settings (threads per training follow it)
        os.environ["MELI_TRAIN_CONCURRENCY"] = str(args.parallel)

    from pipelines.config import TrainConfig
    from pipelines.core.system import pick_device
    from pipelines.data.ingest import ingest
    from pipelines.features.embedding import embedding_config, prepare_dataset, read_split, train_embedding
    from pipelines.features.text import TextConfig
    from pipelines.settings import get_settings
    from pipelines.training.train import train_classifier, train_ensemble

    overrides = {"models": args.models, "device": args.device}
    if args.epochs:
        overrides["epochs"] = args.epochs
    if args.embedding_epochs:
        overrides["embedding_epochs"] = args.embedding_epochs
    if args.seed is not None:
        overrides["seed"] = args.seed
    cfg = TrainConfig(**overrides)
    device = pick_device(cfg.device)
    t_start = time.perf_counter()
    try:
        settings = get_settings().ensure()
        ing = ingest([data], RUN_DATE, settings)
        from pipelines.data.validate import validate_pending

        validate_pending(settings, RUN_DATE)  # only partitions that passed validation are trained on
        ds = prepare_dataset(settings, RUN_DATE)
        train_df, test_df = read_split(ds["dir"], "train"), read_split(ds["dir"], "test")
        t0 = time.perf_counter()
        emb = train_embedding(ds["dir"], embedding_config(cfg, ds["counts"]["train"]), TextConfig(), cfg.seed)
        emb_s = time.perf_counter() - t0
        from pipelines.features.encoded import encode_dataset

        titles, y_test = test_df["title"].tolist(), test_df["category"].tolist()
        variants = [v.strip() for v in (args.sentence or f"{cfg.sentence_encoder},none").split(",") if v.strip()]
        variants = list(dict.fromkeys(variants))

        rows, compare, walls, challengers = [], [], {}, {}
        # On one GPU too: a training step at batch 64 is ~1 ms of GPU work behind ~10 ms of Python and
        # kernel launches, so the types share the GPU as they share the CPU's cores.
        side_by_side = min(settings.train_concurrency, len(cfg.models))
        threads = train_threads(settings, side_by_side) if device.type == "cpu" else 0
        baseline = None
        if device.type == "cuda" and not args.no_baseline:  # the CPU's cores are idle meanwhile
            baseline = start_baseline(train_df, test_df)
        for vi, variant in enumerate(variants):
            vcfg = TrainConfig(**{**cfg.to_dict(), "sentence_encoder": variant})
            run_date = RUN_DATE if vi == 0 else f"{RUN_DATE}-{variant}"
            ds_dir = Path(ds["dir"])
            if vi:  # each variant its own run dir: its own encoded splits beside the same dataset
                ds_dir = Path(settings.run_dir(run_date)) / "dataset"
                shutil.copytree(ds["dir"], ds_dir, dirs_exist_ok=True)
            t0 = time.perf_counter()
            # as the DAG's embedding task: once, before the trainings (word vectors cached across runs)
            enc = encode_dataset(ds_dir, emb["dir"], variant, settings.sentence_cache_dir)
            encode_s = time.perf_counter() - t0
            label = (lambda kind: kind) if vi == 0 else (lambda kind, v=variant: f"{kind} (sentence_encoder={v})")
            t0 = time.perf_counter()
            trained = train_all(settings, ds_dir, emb["dir"], vcfg, side_by_side, threads, run_date)
            train_wall_s = time.perf_counter() - t0
            v_rows = []
            for kind, (res, train_s) in zip(vcfg.models, trained, strict=True):
                bundle = load_served_bundle(res["model_uri"], str(device), home / "served" / run_date / kind)
                scored = score_test(bundle, titles, y_test)
                client = __import__("mlflow").MlflowClient()
                hist = client.get_metric_history(res["run_id"], "val_macro_recall")
                refit = client.get_metric_history(res["run_id"], "refit_train_loss")
                row = {
                    "model": label(kind),
                    "device": res["device"],
                    "val_macro_recall": res["val_macro_recall"],
                    "test_macro_recall": scored["macro_recall"],
                    "test_accuracy": scored["accuracy"],
                    "epochs": f"{res['best_epoch']}/{len(hist)}" + (f" + {len(refit)}" if refit else ""),
                    "train_s": train_s,
                    "train_samples_per_s": _metric(res["run_id"], "train_samples_per_s"),
                    "titles_per_s": scored["titles_per_s"],
                }
                v_rows.append(row)
                log.info("%s: %s", row["model"], row)
                if device.type == "cuda" and vi == 0:  # the same work on the CPU, for the GPU vs CPU comparison
                    # one selection epoch, no refit: train samples/s counts the selection pass only
                    cpu_cfg = TrainConfig(**{**vcfg.to_dict(), "device": "cpu", "epochs": 1, "patience": 1})
                    cpu_cfg.refit = False
                    cpu_res = train_classifier(
                        settings,
                        ds_dir,
                        emb["dir"],
                        kind,
                        cpu_cfg,
                        run_date=run_date + "-cpu",
                        embedding_sha256=emb["sha256"],
                    )
                    cpu_bundle = load_served_bundle(res["model_uri"], "cpu", home / "served-cpu" / kind)
                    compare.append(
                        {
                            "model": kind,
                            "gpu_train": row["train_samples_per_s"],
                            "cpu_train": _metric(cpu_res["run_id"], "train_samples_per_s"),
                            "gpu_score": row["titles_per_s"],
                            "cpu_score": score_test(cpu_bundle, titles, y_test)["titles_per_s"],
                        }
                    )
                del bundle
            if len(trained) >= 2 and vcfg.ensemble:  # the mean of the trained models: one more candidate
                t0 = time.perf_counter()
                ens = train_ensemble(settings, ds_dir, [r for r, _ in trained], None, run_date)
                ens_s = time.perf_counter() - t0
                bundle = load_served_bundle(ens["model_uri"], str(device), home / "served" / run_date / "ensemble")
                scored = score_test(bundle, titles, y_test)
                v_rows.append(
                    {
                        "model": label("ensemble (" + "+".join(ens["members"]) + ")"),
                        "device": ens["device"],
                        "val_macro_recall": ens["val_macro_recall"],
                        "test_macro_recall": scored["macro_recall"],
                        "test_accuracy": scored["accuracy"],
                        "train_s": train_wall_s + ens_s,
                        "titles_per_s": scored["titles_per_s"],
                    }
                )
                log.info("ensemble: %s", v_rows[-1])
                train_wall_s += ens_s
            best = max(v_rows, key=lambda r: r["val_macro_recall"])
            challengers[variant] = dict(best)
            best["model"] += " = challenger" if vi == 0 else " = its challenger"
            log.info("%s challenger (best on validation): %s", variant, best["model"])
            walls[variant] = {"encode_s": encode_s, "train_s": train_wall_s, "sentence_s": enc.get("sentence_s", 0)}
            rows += v_rows
        train_wall_s = walls[variants[0]]["train_s"]
        if not args.no_baseline:
            rows.append(baseline.result() if baseline else run_baseline(train_df, test_df))
        total_s = time.perf_counter() - t_start

        table = render_table(rows)
        base = rows[-1]["test_macro_recall"] if not args.no_baseline else None
        for vi, (variant, ch) in enumerate(challengers.items()):
            best = ch["test_macro_recall"]
            table += (
                f"\n\n{'Challenger' if vi == 0 else 'With sentence_encoder=' + variant + ', the challenger would be'} "
                f"(chosen on validation): {ch['model']}, test macro-recall {best:.4f}"
                + (f" vs baseline {base:.4f} ({best - base:+.4f})" if base is not None else "")
                + (f"; target >= {TARGET} and above the baseline: " if vi == 0 and base is not None else "")
                + (("met" if best >= TARGET and best > base else "NOT met") if vi == 0 and base is not None else "")
                + "."
            )
        default_wall = walls[variants[0]]
        table += (
            f"\n\nThe default set ({', '.join(cfg.models)}"
            f"{' + ensemble' if cfg.ensemble else ''}, sentence_encoder={variants[0]}) took "
            f"{(default_wall['encode_s'] + default_wall['train_s']) / 60:.1f} min: encoding the splits "
            f"{default_wall['encode_s']:.0f} s (of which word vectors {default_wall['sentence_s']:.0f} s), "
            f"training {default_wall['train_s'] / 60:.1f} min (target < 45 min)."
        )
        print(table)
        out = Path(args.out) / f"quality-{device.type}.md"
        out.parent.mkdir(parents=True, exist_ok=True)
        training = {
            "side_by_side": side_by_side,
            "threads": threads,
            "wall_s": train_wall_s,
        }
        runs = record_run(Path(args.out) / f"quality-{device.type}-runs.jsonl", argv, cfg, challengers, rows, walls)
        table += "\n\n" + summarize_runs(runs, cfg)
        out.write_text(report(args, argv, data, ing, ds, emb, emb_s, cfg, table, compare, total_s, training))
        print(f"\nwrote {out} (total {total_s / 60:.1f} min)", file=sys.stderr)
    finally:
        if not args.keep:
            shutil.rmtree(home, ignore_errors=True)
    return 0


TARGET = 0.955


def record_run(path: Path, argv, cfg, challengers: dict, rows: list[dict], walls: dict) -> list[dict]:
    """Append this run to the runs file (every run of the benchmark, none picked); return the runs
    made with this run's configuration."""
    import json

    keys = ("model", "val_macro_recall", "test_macro_recall")
    entry = {
        "date": date.today().isoformat(),
        "machine": machine(),
        "argv": list(argv if argv is not None else sys.argv[1:]),
        "config": cfg.to_dict(),
        "challengers": {
            v: {k: c[k] for k in ("model", "val_macro_recall", "test_macro_recall")} for v, c in challengers.items()
        },
        "rows": [{k: r.get(k) for k in keys} for r in rows],
        "walls": walls,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fh.write(json.dumps(entry) + "\n")
    runs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    same = lambda c: {k: v for k, v in c.items() if k != "seed"}  # noqa: E731  (seeds are the repeats)
    return [r for r in runs if same(r["config"]) == same(entry["config"])]


def summarize_runs(runs: list[dict], cfg) -> str:
    """Mean and spread of the challenger's test macro-recall over every recorded run of this config."""
    import statistics

    lines = [
        f"## Every run of this configuration ({len(runs)}, from `{RESULTS.name}/quality-<device>-runs.jsonl`)",
        "",
        "| variant | runs | challenger test macro-recall: mean | min | max | stdev | each run |",
        "|---|---|---|---|---|---|---|",
    ]
    variants = list(dict.fromkeys(v for r in runs for v in r["challengers"]))
    for v in variants:
        xs = [r["challengers"][v]["test_macro_recall"] for r in runs if v in r["challengers"]]
        sd = f"{statistics.stdev(xs):.4f}" if len(xs) > 1 else "-"
        each = ", ".join(f"{x:.4f}" for x in xs)
        lines.append(
            f"| sentence_encoder={v} | {len(xs)} | {statistics.mean(xs):.4f} | {min(xs):.4f} | {max(xs):.4f} | {sd} "
            f"| {each} |"
        )
    return "\n".join(lines)


def render_table(rows: list[dict]) -> str:
    def f(v, fmt):
        return "-" if v is None else format(v, fmt)

    lines = [
        "| model | device | test macro-recall | test accuracy | val macro-recall | best/run epochs "
        "| train s | train samples/s | score titles/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['device']} | {r['test_macro_recall']:.4f} | {r['test_accuracy']:.4f} "
            f"| {f(r.get('val_macro_recall'), '.4f')} | {r.get('epochs', '-')} | {r['train_s']:.0f} "
            f"| {f(r.get('train_samples_per_s'), ',.0f')} | {r['titles_per_s']:,.0f} |"
        )
    return "\n".join(lines)


def report(args, argv, data, ing, ds, emb, emb_s, cfg, table, compare, total_s, training) -> str:
    command = ".venv/bin/python -m benchmarks.quality " + " ".join(argv if argv is not None else sys.argv[1:])
    c = ds["counts"]
    parts = [
        f"# Quality benchmark ({'GPU' if compare else 'CPU'})",
        "",
        f"{date.today().isoformat()} on {machine()}",
        "",
        f"Command: `{command.strip()}`",
        "",
        f"Data: `{data.name}` (sha256 {sha256_file(data)[:16]}), {ing.rows_read:,} rows read, "
        f"{ing.rows_written:,} kept ({ing.rows_quarantined} quarantined: {ing.reasons}), "
        f"{ds['num_categories']} categories. Split (the lake's hash of listing_id): "
        f"train {c['train']:,} / validation {c['validation']:,} / test {c['test']:,}.",
        "",
        f"Embedding: gensim FastText on the train split, {emb['vocab_size']:,} words, {emb_s:.0f} s. "
        f"Training config: {', '.join(f'{k}={v}' for k, v in cfg.to_dict().items() if k != 'models')}.",
        "",
        "Test metrics are on the test split only, from the model downloaded from MLflow and loaded as the "
        "serving Bundle (`Bundle.predict`, tokenization included, batch inference). Early stopping and every "
        "setting were chosen on validation macro-recall; `val macro-recall` is the selection pass's (train "
        "split only). `best/run epochs`: best epoch / epochs run before early stopping (+ refit epochs on "
        "train + validation, whose model is the one served and tested). `train s` is the wall time of "
        "`train_classifier` (encoding, both passes, per-epoch validation, MLflow logging); `train samples/s` "
        "counts the selection pass's epochs only. "
        f"Model types trained {training['side_by_side']} side by side (as the DAG's mapped train tasks"
        f"{', sharing the one GPU' if compare else ''}), "
        f"{training['threads'] or 'default'} torch CPU thread(s) each; all of them took "
        f"{training['wall_s'] / 60:.1f} min of wall time. "
        "The baseline is fitted on the same train split (raw lowercased titles) and predicts the same "
        "test rows (its titles/s excludes nothing: vectorizing + predict).",
        "",
        table,
        "",
    ]
    if compare:
        parts += [
            "## GPU vs CPU",
            "",
            "Training samples/s: the GPU run (its selection pass, the types side by side on the GPU) vs one "
            "CPU epoch of the same model and config, alone on all the machine's cores. Scoring "
            "titles/s: the same bundle on the test split, on the GPU and on the CPU.",
            "",
            "| model | train samples/s GPU | train samples/s CPU | speed-up | score titles/s GPU "
            "| score titles/s CPU | speed-up |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in compare:
            parts.append(
                f"| {r['model']} | {r['gpu_train']:,.0f} | {r['cpu_train']:,.0f} | "
                f"{r['gpu_train'] / r['cpu_train']:.1f}x | {r['gpu_score']:,.0f} | {r['cpu_score']:,.0f} | "
                f"{r['gpu_score'] / r['cpu_score']:.1f}x |"
            )
        parts.append("")
    parts.append(f"Total benchmark wall time: {total_s / 60:.1f} min (ingest, embedding, all models, baseline).")
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    sys.exit(main())
