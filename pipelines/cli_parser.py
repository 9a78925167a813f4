"""``python -m pipelines``: the same functions the DAGs call, from a shell.

Every command honours $MELI_HOME (and the other settings in pipelines/settings.py); without
--run-date, commands use today's date (UTC).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import fields
from datetime import UTC, datetime
from pathlib import Path

from pipelines.settings import get_settings


def today() -> str:
    return datetime.now(UTC).date().isoformat()


def _date(value: str) -> str:
    try:
        return datetime.strptime(value, "%Y-%m-%d").date().isoformat()
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"run date must be YYYY-MM-DD, got {value!r}") from exc


def _print(obj) -> None:
    print(json.dumps(obj, indent=2, default=str))


class _Help(argparse.RawDescriptionHelpFormatter):
    """Every option's help ends with its default (options left unset show the default they resolve to)."""

    def _get_help_string(self, action):
        h = action.help or ""
        d = action.default
        if "default" in h or d is None or d is False or d is argparse.SUPPRESS or not action.option_strings:
            return h
        return f"{h} (default: %(default)s)".strip()


def _add_train_flags(p: argparse.ArgumentParser) -> None:
    from pipelines.config import TrainConfig

    g = p.add_argument_group("training hyperparameters (defaults from TrainConfig)")
    defaults = TrainConfig()
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        value = getattr(defaults, f.name)
        shown = ",".join(value) if isinstance(value, (list, tuple)) else value
        if f.type in ("bool", bool):
            g.add_argument(
                flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=f"(default: {shown})"
            )
        elif f.name == "models":
            g.add_argument(flag, dest=f.name, default=None, help=f"comma-separated: mlp,cnn,bilstm (default: {shown})")
        else:
            typ = {"int": int, "float": float}.get(str(f.type), str)
            g.add_argument(flag, dest=f.name, type=typ, default=None, help=f"(default: {shown})")


def _train_cfg(args):
    from pipelines.config import TrainConfig

    return TrainConfig.from_dict({f.name: getattr(args, f.name, None) for f in fields(TrainConfig)})


def _add_gate_flags(p: argparse.ArgumentParser) -> None:
    from pipelines.settings import GateRules

    rules = GateRules()  # MELI_GATE_* resolved
    p.add_argument("--force-promote", action="store_true", help="promote whatever the rules say")
    p.add_argument("--dry-run", action="store_true", help="decide and record, but move no alias")
    p.add_argument(
        "--require-approval",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a promotion waits as 'pending approval' until `registry approve|reject VERSION` "
        f"(default: MELI_REQUIRE_APPROVAL, now {get_settings().require_approval})",
    )
    for name, what in (
        ("min_improvement", "minimum macro-recall gain over the champion"),
        ("min_macro_recall", "absolute macro-recall floor"),
        ("max_class_drop", "a category 'collapses' if its recall drops more than this"),
        ("max_share_classes_dropped", "reject if more than this share of categories collapse"),
        ("min_behaviour_pass", "reject below this share passing the behavioural checks"),
    ):
        flag = "--" + name.replace("_", "-")
        p.add_argument(flag, type=float, default=None, help=f"{what} (default: {getattr(rules, name)})")


def _gate_rules(args) -> dict:
    from pipelines.settings import RULE_OVERRIDES

    return {k: getattr(args, k) for k in RULE_OVERRIDES}


def _parser_class():
    class Parser(argparse.ArgumentParser):
        def __init__(self, *a, **kw):
            kw.setdefault("formatter_class", _Help)
            super().__init__(*a, **kw)

    return Parser


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m pipelines", description=__doc__, formatter_class=_Help)
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging, and tracebacks on errors")
    sub = ap.add_subparsers(dest="cmd", required=True, parser_class=_parser_class())

    sub.add_parser("settings", help="print the resolved settings")

    p = sub.add_parser("demo-data", help="write SYNTHETIC MeLi-like listings (DiploDatos jsonl[.gz])")
    p.add_argument("out", help="output path (.jsonl or .jsonl.gz)")
    p.add_argument("--rows", type=int, default=2000, help="listings to write")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same file)")
    p.add_argument("--dirty", type=int, default=0, help="broken lines to mix in (shows quarantine)")

    p = sub.add_parser("ingest", help="ingest files into the lake partition of a run date")
    p.add_argument("sources", nargs="+", help="input files or glob patterns")
    p.add_argument("--run-date", type=_date, default=None, help="YYYY-MM-DD (default: today, UTC)")
    p.add_argument(
        "--format", default="auto", choices=["auto", "jsonl", "challenge_csv", "csv", "parquet"], help="input format"
    )
    p.add_argument(
        "--allow-empty",
        action="store_true",
        help="commit the partition even if the input holds no rows (default: refuse, the partition stays)",
    )

    p = sub.add_parser("lake", help="what readers of the lake see: partitions, rows, versions")
    p.add_argument("action", choices=["status"])
    p.add_argument("--run-date", type=_date, default=None, help="only this partition (default: all)")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser(
        "validate",
        help="run the GX suites on a partition, or preflight a raw input file; exit 1 on critical failure",
    )
    p.add_argument(
        "path",
        nargs="?",
        help="a lake partition dir (ingest_date=YYYY-MM-DD), or a raw input file to check before it lands "
        "(ingested into a scratch lake; nothing is written to the real lake); default: --run-date's partition",
    )
    p.add_argument("--run-date", type=_date, default=None, help="the partition's date (default: today, UTC)")
    p.add_argument(
        "--format", default="auto", choices=["auto", "jsonl", "challenge_csv", "csv", "parquet"], help="input format"
    )

    p = sub.add_parser("train", help="prepare the dataset, train the embedding and classifiers, register the best")
    p.add_argument("--run-date", type=_date, default=None, help="YYYY-MM-DD (default: today, UTC)")
    _add_train_flags(p)

    p = sub.add_parser(
        "tune",
        help="an Optuna study over the training recipe on the lake's train/validation splits (never test); "
        "its best trials become a recipe (train/retrain --recipe tuned)",
    )
    p.add_argument(
        "--run-date", type=_date, default=None, help="the lake snapshot as of this date (default: the newest partition)"
    )
    p.add_argument("--trials", type=int, default=20, help="trials per model type, over every worker and restart")
    p.add_argument("--budget-s", type=float, default=7200.0, help="wall-clock budget of this call, seconds")
    p.add_argument("--pruner", default="median", choices=["median", "hyperband", "none"], help="pruning on each epoch")
    p.add_argument("--startup-trials", type=int, default=2, help="median pruner: trials never pruned first")
    p.add_argument("--warmup-epochs", type=int, default=1, help="median pruner: epochs never pruned first")
    p.add_argument("--max-epochs", type=int, default=0, help="epochs per trial (0 = --epochs, TrainConfig's)")
    p.add_argument("--workers", type=int, default=1, help="trial processes side by side on this machine")
    p.add_argument("--study", default=None, help="study name (default: meli-tune-<run date>; same name = resume)")
    _add_train_flags(p)  # the base recipe (--models: the types to tune, default mlp)

    p = sub.add_parser("promote", help="evaluate the challenger vs the champion and apply the gate")
    p.add_argument("--run-date", type=_date, default=None, help="YYYY-MM-DD (default: today, UTC)")
    p.add_argument("--version", default=None, help="challenger version (default: the one `train` registered)")
    _add_gate_flags(p)

    p = sub.add_parser("retrain", help="ingest SOURCES, validate, train, evaluate and gate in one process")
    p.add_argument("sources", nargs="+", help="input files or glob patterns")
    p.add_argument("--run-date", type=_date, default=None, help="YYYY-MM-DD (default: today, UTC)")
    p.add_argument(
        "--format", default="auto", choices=["auto", "jsonl", "challenge_csv", "csv", "parquet"], help="input format"
    )
    _add_train_flags(p)
    _add_gate_flags(p)

    p = sub.add_parser("score", help="score listings with a registered model into Parquet")
    p.add_argument("input", help="a file (jsonl[.gz], CSV, Parquet) or a lake partition dir")
    p.add_argument(
        "--output",
        default=None,
        help="output .parquet (default: $MELI_HOME/adhoc/scored/<input>-<UTC time>.parquet; "
        "with --run-date: the lake partition lake/scored/run_date=D/)",
    )
    p.add_argument("--model", default="champion", help="alias or version number")
    p.add_argument(
        "--run-date",
        type=_date,
        default=None,
        help="write the lake's scored partition of this date, as the DAG does (default: none, see --output)",
    )
    p.add_argument(
        "--format", default="auto", choices=["auto", "jsonl", "challenge_csv", "csv", "parquet"], help="input format"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar (log lines instead)")
    p.add_argument(
        "--shadow",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also score with the newest registered version above the served one (lake/shadow/run_date=D/, or "
        "<output stem>.shadow-vN.parquet beside --output) and write an agreement report (default: MELI_SHADOW, on)",
    )

    p = sub.add_parser(
        "monitor",
        help="drift of a scored batch against its model's reference, with a label-free macro-recall estimate "
        "(exit 0: within thresholds, 3: drifted)",
    )
    p.add_argument("scored", help="a scored .parquet file or a lake/scored/run_date=D partition")
    p.add_argument("--run-date", type=_date, default=None, help="the batch's date in the report (default: today)")
    p.add_argument("--no-record", action="store_true", help="print the figures only: no report, MLflow run or history")
    p.add_argument("--json", action="store_true", help="print the whole report as JSON")

    p = sub.add_parser("summary", help="what a run produced: decision, partition, Data Docs, MLflow run, scores")
    p.add_argument("--run-date", type=_date, default=None, help="YYYY-MM-DD (default: today, UTC)")

    p = sub.add_parser(
        "registry", help="champion status, promotion history, rollback, approve/reject a pending promotion, model card"
    )
    p.add_argument("action", choices=["status", "history", "rollback", "approve", "reject", "card"])
    p.add_argument("version", nargs="?", default=None, help="the version to approve, reject or show the card of")
    p.add_argument("--to-version", default=None, help="rollback target (default: alias 'previous')")
    p.add_argument(
        "--reason",
        default=None,
        help="recorded with the rollback, approval or rejection (default: rollback: "
        "'operator rollback', approve/reject: none)",
    )
    p.add_argument("--by", default=None, help="who approves or rejects (default: the login name)")
    p.add_argument("--html", action="store_true", help="card: print the path of its HTML page instead")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    return ap


def _history_table(rows: list[dict]) -> str:
    if not rows:
        return "no promotion decisions recorded yet"
    cols = [
        "decided_at",
        "decision",
        "rule",
        "challenger_version",
        "champion_version",
        "challenger_macro_recall",
        "champion_macro_recall",
        "delta",
    ]
    short = {
        "challenger_version": "chall_v",
        "champion_version": "champ_v",
        "challenger_macro_recall": "chall_mr",
        "champion_macro_recall": "champ_mr",
    }

    def cell(c, v):
        if c == "decided_at":
            return v[:19]
        if c in ("challenger_macro_recall", "champion_macro_recall", "delta") and v not in ("", "None"):
            return f"{float(v):+.4f}" if c == "delta" else f"{float(v):.4f}"
        return v or "-"

    data = [[cell(c, r.get(c, "")) for c in cols] for r in rows]
    heads = [short.get(c, c) for c in cols]
    widths = [max(len(h), *(len(d[i]) for d in data)) for i, h in enumerate(heads)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths))  # noqa: E731
    return "\n".join([line(heads), line(["-" * w for w in widths])] + [line(d) for d in data])


def _lake_table(st: dict) -> str:
    if not st["partitions"]:
        return f"no committed partitions under {st['root']}"
    cols = ["ingest_date", "version", "rows", "quarantined", "committed_at"]
    data = [[str(p.get(c) if p.get(c) is not None else "-")[:19] for c in cols] for p in st["partitions"]]
    widths = [max(len(c), *(len(d[i]) for d in data)) for i, c in enumerate(cols)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths))  # noqa: E731
    rows = [line(d) + (f"  ERROR: {p['error']}" if p.get("error") else "") for d, p in zip(data, st["partitions"])]
    return "\n".join([f"lake {st['root']}", line(cols), line(["-" * w for w in widths]), *rows])


def run_summary(settings, run_date: str) -> str:
    """The human summary `make demo` prints; raises if an expected output is missing."""
    import pyarrow.parquet as pq

    from pipelines.lake import partition_dir, resolve

    decision_path = settings.run_dir(run_date) / "evaluation" / "decision.json"
    if not decision_path.exists():
        raise FileNotFoundError(f"no gate decision for {run_date} at {decision_path}")
    d = json.loads(decision_path.read_text())
    chall_path = settings.run_dir(run_date) / "challenger.json"
    chall = json.loads(chall_path.read_text()) if chall_path.exists() else {}
    kind = chall.get("model_type", "?") if str(chall.get("version")) == str(d["challenger_version"]) else "?"
    if kind == "ensemble" and chall.get("members"):
        kind = "ensemble of " + "+".join(chall["members"])
    report = json.loads((settings.home / "validation" / run_date / "report.json").read_text())
    scored = settings.scored_dir / f"run_date={run_date}"
    try:
        files = sorted(resolve(scored).glob("*.parquet"))
    except FileNotFoundError:
        files = []
    scored_rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    if not scored_rows:
        raise FileNotFoundError(f"no scored rows under {scored}")
    champ = (
        "n/a (no champion before this run)"
        if d["champion_macro_recall"] is None
        else (f"{d['champion_macro_recall']:.4f} (v{d['champion_version']})")
    )
    plan_path = settings.run_dir(run_date) / "embedding" / "warm.json"
    plan = json.loads(plan_path.read_text()) if plan_path.exists() else {"mode": "full", "reason": "no warm plan"}
    lines = [
        f"== meli-retrain summary for {run_date} (MELI_HOME={settings.home}) ==",
        f"decision:            {d['decision'].upper()} by rule '{d['rule']}': {d['reason']}",
        f"training mode:       {plan['mode']}: {plan['reason']}",
        f"challenger:          v{d['challenger_version']} ({kind}) "
        f"test macro-recall {d['challenger_macro_recall']:.4f}",
        f"champion:            {champ}",
        f"lake partition:      {partition_dir(settings.listings_dir, run_date)}",
        f"validation:          {report['passed']}/{report['evaluated']} expectations passed, "
        f"{len(report['warnings'])} warnings",
        f"Data Docs index:     {report['data_docs_index']}",
        f"MLflow run id:       {d.get('mlflow_run_id') or 'n/a'} (tracking: {settings.tracking_uri})",
        f"scored Parquet:      {scored} ({scored_rows} rows)",
    ]
    from pipelines.card import card_paths

    card = card_paths(settings, d["challenger_version"])["html"]
    if card.exists():
        lines.append(f"model card:          {card}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("mlflow", "alembic", "great_expectations", "gensim", "urllib3", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    settings = get_settings()
    run_date = getattr(args, "run_date", None) or today()

    if args.cmd == "settings":
        _print(settings.as_dict())
    elif args.cmd == "demo-data":
        from pipelines.synthetic import write_jsonl

        path = write_jsonl(args.out, args.rows, args.seed, args.dirty)
        print(f"wrote {args.rows} SYNTHETIC listings (+{args.dirty} broken lines) to {path}")
    elif args.cmd == "ingest":
        from pipelines.retrain import step_ingest

        _print(step_ingest(settings, args.sources, run_date, args.format, allow_empty=args.allow_empty))
    elif args.cmd == "lake":
        from pipelines.lake import status

        st = status(settings.listings_dir, args.run_date)
        print(json.dumps(st, indent=2) if args.json else _lake_table(st))
        if args.run_date and not st["partitions"]:
            print(f"error: no committed partition ingest_date={args.run_date} under {st['root']}", file=sys.stderr)
            return 1
    elif args.cmd == "validate":
        from pipelines.validate import ValidationFailed, summary_lines, validate_file, validate_partition

        raw = None
        if args.path:
            path = Path(args.path)
            if not path.exists():
                print(f"error: {args.path}: no such file or lake partition", file=sys.stderr)
                return 2
            if path.is_dir() and path.name.startswith("ingest_date="):
                run_date = _date(path.name.split("=", 1)[1])
            elif path.is_dir():
                print(
                    f"error: {args.path} is a directory but not a lake partition (ingest_date=YYYY-MM-DD)",
                    file=sys.stderr,
                )
                return 2
            else:
                raw = path
        try:
            if raw is not None:
                report = validate_file(settings, raw, run_date, args.format)
            else:
                report = validate_partition(settings, run_date)
        except ValidationFailed as exc:
            print("\n".join(summary_lines(exc.report)))
            return 1
        print("\n".join(summary_lines(report)))
    elif args.cmd == "train":
        from pipelines.retrain import step_embedding, step_ensemble, step_prepare, step_register, step_train_all
        from pipelines.validate import load_report

        cfg = _train_cfg(args)
        try:
            validation = load_report(settings, run_date)
        except FileNotFoundError:
            validation = None
        dataset = step_prepare(settings, run_date, validation, {"meli.trigger": "cli"})
        emb = step_embedding(settings, dataset, cfg)
        trained = step_train_all(settings, dataset, emb, cfg)
        results = step_ensemble(settings, dataset, trained, cfg)
        challenger = step_register(settings, results, run_date, parent_run_id=dataset["parent_run_id"])
        _print({"trained": results, "challenger": challenger})
    elif args.cmd == "tune":
        from pipelines.tune import TuneConfig, latest_run_date, tune

        if args.recipe not in (None, "default"):
            print("error: tune searches around TrainConfig's defaults; --recipe is for train/retrain", file=sys.stderr)
            return 2
        tcfg = TuneConfig(
            models=args.models or ["mlp"],
            trials=args.trials,
            budget_s=args.budget_s,
            pruner=args.pruner,
            startup_trials=args.startup_trials,
            warmup_epochs=args.warmup_epochs,
            max_epochs=args.max_epochs,
            study=args.study or "",
            workers=args.workers,
        )
        out = tune(settings, args.run_date or latest_run_date(settings), tcfg, _train_cfg(args))
        _print({**out["summary"], "recipe": out["recipe"]["id"], "recipe_path": str(settings.recipes_dir)})
    elif args.cmd == "promote":
        from pipelines.retrain import step_evaluate, step_gate

        info_path = settings.run_dir(run_date) / "challenger.json"
        info = json.loads(info_path.read_text()) if info_path.exists() else {}
        version = args.version or info.get("version")
        if not version:
            print(f"error: no challenger for {run_date}: run `train` first or pass --version", file=sys.stderr)
            return 2
        challenger = {"version": str(version)}
        step_evaluate(settings, run_date, challenger)
        d = step_gate(
            settings,
            run_date,
            challenger,
            info.get("parent_run_id"),
            args.force_promote,
            args.dry_run,
            require_approval=args.require_approval,
            **_gate_rules(args),
        )
        _print(d)
        _pending_hint(settings, d)
    elif args.cmd == "retrain":
        from pipelines.retrain import run_all

        out = run_all(
            settings,
            args.sources,
            run_date,
            _train_cfg(args),
            args.format,
            args.force_promote,
            args.dry_run,
            require_approval=args.require_approval,
            **_gate_rules(args),
        )
        d = out["decision"]
        _print(
            {
                "decision": d["decision"],
                "rule": d["rule"],
                "reason": d["reason"],
                "challenger_version": d["challenger_version"],
                "partition": out["ingest"]["partition"],
                "data_docs": out["validation"]["data_docs_index"],
                "mlflow_run": out["dataset"]["parent_run_id"],
            }
        )
        _pending_hint(settings, d)
    elif args.cmd == "score":
        from pipelines.score import score

        output = args.output
        if output is None and args.run_date is None:  # ad hoc: never replaces the nightly partition
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
            stem = Path(args.input.rstrip("/")).name.split(".")[0] or "input"
            output = settings.home / "adhoc" / "scored" / f"{stem}-{stamp}.parquet"
        r = score(
            settings,
            args.input,
            output,
            args.model,
            args.format,
            run_date,
            progress=not args.no_progress,
            shadow=args.shadow,
        )
        _print(r.to_dict())
    elif args.cmd == "monitor":
        from pipelines.monitor import DRIFT_EXIT, monitor_batch, one_line

        report = monitor_batch(settings, args.scored, run_date, record=not args.no_record)
        print(json.dumps(report, indent=2, default=str) if args.json else one_line(report))
        return DRIFT_EXIT if report["status"] == "drift" else 0
    elif args.cmd == "summary":
        print(run_summary(settings, run_date))
    elif args.cmd == "registry":
        from pipelines import registry

        if args.action == "status":
            _print(registry.status(settings))
        elif args.action == "history":
            rows = registry.history(settings)
            print(json.dumps(rows, indent=2) if args.json else _history_table(rows))
        elif args.action == "rollback":
            _print(registry.rollback(settings, args.to_version, args.reason or "operator rollback"))
        else:
            if not args.version:
                print(f"error: registry {args.action} needs a VERSION", file=sys.stderr)
                return 2
            from pipelines.card import write_card

            if args.action == "card":
                card = write_card(settings, args.version)
                print(card["html"] if args.html else card["markdown"], end="" if not args.html else "\n")
                return 0
            import getpass

            d = registry.respond(
                settings,
                args.version,
                approve=args.action == "approve",
                reason=args.reason or "",
                by=args.by or getpass.getuser(),
                via="cli",
            )
            write_card(settings, args.version)
            _print(d)
    return 0


def _pending_hint(settings, d: dict) -> None:
    """A promotion waiting for a person: the evidence, and the two commands that answer it."""
    if d["decision"] != "pending_approval":
        return
    from pipelines.approval import approval_body
    from pipelines.card import card_paths

    v = d["challenger_version"]
    print(f"\npending approval: {settings.model_name} v{v}\n")
    print(approval_body(settings, d, {"Model card": str(card_paths(settings, v)["html"])}))
    print(
        f"\nanswer with: python -m pipelines registry approve {v} --reason '...'"
        f"  |  python -m pipelines registry reject {v} --reason '...'"
    )


def one_line(exc: BaseException) -> str:
    """An exception as one line for an operator: what failed and where (file, URI), no traceback."""
    import errno

    msg = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, OSError) and exc.filename is None and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        msg = f"{msg} (under {get_settings().home})"
    mod = type(exc).__module__.split(".")[0]
    if mod in ("sqlalchemy", "mlflow", "alembic", "requests", "urllib3", "sqlite3"):
        msg = f"MLflow store {get_settings().tracking_uri}: {msg}"
    return msg[:2000]


def entrypoint() -> None:
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:  # every failure is one line on stderr; -v adds the traceback
        logging.getLogger("pipelines").debug("failed", exc_info=True)
        print(f"error: {one_line(exc)}", file=sys.stderr)
        sys.exit(1)
