"""``python -m pipelines``: one small function per subcommand, each calling the same functions the
DAGs call; ``main`` dispatches to them. The argument parser (and the --help text) is in
pipelines/flows/cli_parser.py; ``build_parser`` is importable from here as before.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import fields
from datetime import UTC, datetime
from pathlib import Path

from pipelines.flows.cli_parser import build_parser, gate_rules_from_args, parse_date_arg, train_config_from_args
from pipelines.settings import get_settings


def today() -> str:
    return datetime.now(UTC).date().isoformat()


def _print(obj) -> None:
    print(json.dumps(obj, indent=2, default=str))


def _table(heads: list[str], data: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(d[i]) for d in data)) for i, h in enumerate(heads)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths)).rstrip()  # noqa: E731
    return [line(heads), line(["-" * w for w in widths])] + [line(d) for d in data]


def _status_table(st: dict) -> str:
    """``registry status`` for a person: who serves, the rollback target, every version's decision."""

    def alias(a: str) -> str:
        v = st.get(a)
        if not v:
            return f"{a + ':':10s}none"
        mr = f", test macro-recall {float(v['macro_recall']):.4f}" if v.get("macro_recall") else ""
        return f"{a + ':':10s}v{v['version']} ({v.get('model_type') or '?'}, run date {v.get('run_date') or '?'}{mr})"

    out = [f"model {st['model_name']} ({st['tracking_uri']})", alias("champion"), alias("previous")]
    if not st["versions"]:
        return "\n".join(out + ["no versions registered yet"])
    cols = ["version", "run_date", "model_type", "decision", "macro_recall", "review"]

    def cell(v: dict, c: str) -> str:
        x = v.get(c) or "-"
        return f"{float(x):.4f}" if c == "macro_recall" and x != "-" else str(x)[:40]

    data = [[cell(v, c) for c in cols] for v in st["versions"]]
    return "\n".join(out + [""] + _table(cols, data))


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
        "review_response",
        "review_by",
        "reason",
    ]
    short = {
        "review_response": "review",
        "review_by": "by",
        "reason": "why",
        "challenger_version": "chall_v",
        "champion_version": "champ_v",
        "challenger_macro_recall": "chall_mr",
        "champion_macro_recall": "champ_mr",
    }

    def cell(c, v, r=None):
        if c == "decided_at":
            return v[:19]
        if c in ("challenger_macro_recall", "champion_macro_recall", "delta") and v not in ("", "None"):
            return f"{float(v):+.4f}" if c == "delta" else f"{float(v):.4f}"
        if c == "reason":  # a review's own reason when there is one, else the gate's
            return (r.get("review_reason") or v or "-")[:70]
        return v or "-"

    data = [[cell(c, r.get(c, ""), r) for c in cols] for r in rows]
    return "\n".join(_table([short.get(c, c) for c in cols], data))


def _lake_table(st: dict) -> str:
    if not st["partitions"]:
        return f"no committed partitions under {st['root']}"
    cols = ["ingest_date", "version", "rows", "quarantined", "validation", "committed_at"]
    data = [[str(p.get(c) if p.get(c) is not None else "-")[:19] for c in cols] for p in st["partitions"]]
    widths = [max(len(c), *(len(d[i]) for d in data)) for i, c in enumerate(cols)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths))  # noqa: E731
    rows = [line(d) + (f"  ERROR: {p['error']}" if p.get("error") else "") for d, p in zip(data, st["partitions"])]
    return "\n".join([f"lake {st['root']}", line(cols), line(["-" * w for w in widths]), *rows])


def champion_line(d: dict) -> str:
    """Who serves after the decision: the challenger when promoted (and the one it replaced), else the champion."""
    before = (
        "none before this run"
        if d["champion_macro_recall"] is None
        else f"v{d['champion_version']} (test macro-recall {d['champion_macro_recall']:.4f})"
    )
    if d["decision"] == "promoted":  # the challenger serves now; the one it replaced is 'previous'
        if d["champion_macro_recall"] is None:
            return f"v{d['challenger_version']} (this run's challenger, promoted: the first champion)"
        return f"v{d['challenger_version']} (this run's challenger, promoted); it replaced {before}"
    return f"{before}, unchanged" if d["champion_macro_recall"] is not None else "none (nothing promoted)"


def run_summary(settings, run_date: str) -> str:
    """The human summary `make demo` prints; raises if an expected output is missing (scores are not
    expected: a run that was not scored yet says so)."""
    import pyarrow.parquet as pq

    from pipelines.data.lake import partition_dir, resolve
    from pipelines.flows.retrain import skipped_run

    skipped = skipped_run(settings, run_date)
    if skipped is not None:
        return _skipped_summary(settings, run_date, skipped)
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
    if scored_rows:
        scored_line = f"{scored} ({scored_rows} rows)"
    else:  # a CLI retrain gates and stops: scoring is its own step
        listings = partition_dir(settings.listings_dir, run_date)
        scored_line = f"not scored yet (meli score {listings} --run-date {run_date} / the meli_score DAG)"
    champ = champion_line(d)
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
        f"scored Parquet:      {scored_line}",
    ]
    from pipelines.registry.card import card_paths

    card = card_paths(settings, d["challenger_version"])["html"]
    if card.exists():
        lines.append(f"model card:          {card}")
    return "\n".join(lines)


def _skipped_summary(settings, run_date: str, s: dict) -> str:
    """The summary of a run that trained nothing (pipelines/flows/retrain.py record_skip)."""
    return "\n".join(
        [
            f"== meli-retrain summary for {run_date} (MELI_HOME={settings.home}) ==",
            f"decision:            SKIPPED by rule '{s['rule']}': {s['reason']}",
            f"champion:            v{s['champion_version']} (unchanged)"
            if s.get("champion_version")
            else "champion:            none",
            f"MLflow run id:       {s.get('mlflow_run_id') or 'n/a'} (tracking: {settings.tracking_uri})",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("mlflow", "alembic", "great_expectations", "gensim", "urllib3", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not args.verbose:  # its ERROR log (a traceback) of a store error it raises anyway: one line is ours
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    settings = get_settings()
    run_date = getattr(args, "run_date", None) or today()
    return _COMMANDS[args.cmd](settings, args, run_date)


def _cmd_settings(settings, args, run_date: str) -> int:
    _print(settings.as_dict())
    return 0


def _cmd_demo_data(settings, args, run_date: str) -> int:
    from pipelines.data.synthetic import write_jsonl

    path = write_jsonl(args.out, args.rows, args.seed, args.dirty)
    print(f"wrote {args.rows} SYNTHETIC listings (+{args.dirty} broken lines) to {path}")
    return 0


def _cmd_ingest(settings, args, run_date: str) -> int:
    from pipelines.flows.retrain import step_ingest

    _print(step_ingest(settings, args.sources, run_date, args.format, allow_empty=args.allow_empty).to_dict())
    return 0


def _cmd_lake(settings, args, run_date: str) -> int:
    from pipelines.data.lake import status

    st = status(settings.listings_dir, args.run_date)
    print(json.dumps(st, indent=2) if args.json else _lake_table(st))
    if args.run_date and not st["partitions"]:
        print(f"error: no committed partition ingest_date={args.run_date} under {st['root']}", file=sys.stderr)
        return 1
    return 0


def _cmd_validate(settings, args, run_date: str) -> int:
    from pipelines.data.validate import ValidationFailed, summary_lines, validate_file, validate_partition

    raw = None
    if args.path:
        path = Path(args.path)
        if not path.exists():
            print(f"error: {args.path}: no such file or lake partition", file=sys.stderr)
            return 2
        if path.is_dir() and path.name.startswith("ingest_date="):
            run_date = parse_date_arg(path.name.split("=", 1)[1])
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
    return 0


def _cmd_train(settings, args, run_date: str) -> int:
    from pipelines.core.tracking import check_store
    from pipelines.flows.retrain import step_embedding, step_ensemble, step_prepare, step_register, step_train_all
    from pipelines.training.runs import finish_parent

    cfg = train_config_from_args(args)
    check_store(settings)  # a lost store fails before anything is validated or recorded
    # validates what was never validated (as the DAG does), then reads only versions that passed
    dataset = step_prepare(settings, run_date, None, {"meli.trigger": "cli"})
    emb = step_embedding(settings, dataset, cfg)
    if emb.is_skipped:
        print(f"skipped: {emb.skipped['reason']}")
        return 0
    trained = step_train_all(settings, dataset, emb, cfg)
    results = step_ensemble(settings, dataset, trained, cfg)
    challenger = step_register(settings, results, run_date, parent_run_id=dataset.parent_run_id)
    # this command stops before the gate: the parent run is done (FINISHED) until `promote` reopens it
    finish_parent(settings, dataset.parent_run_id)
    _print({"trained": [r.to_dict() for r in results], "challenger": challenger.to_dict()})
    return 0


def _cmd_tune(settings, args, run_date: str) -> int:
    from pipelines.training.tune import TuneConfig, latest_run_date, tune

    if args.recipe not in (None, "default"):
        print("error: tune searches around TrainConfig's defaults; --recipe is for train/retrain", file=sys.stderr)
        return 2
    # the study's flags (add_flags: None = not set); --seed is the base recipe's (TrainConfig's)
    names = [f.name for f in fields(TuneConfig) if f.name != "seed"]
    tcfg = TuneConfig(**{k: getattr(args, k) for k in names if getattr(args, k, None) is not None})
    out = tune(settings, args.run_date or latest_run_date(settings), tcfg, train_config_from_args(args))
    _print({**out["summary"], "recipe": out["recipe"]["id"], "recipe_path": str(settings.recipes_dir)})
    return 0


def _cmd_promote(settings, args, run_date: str) -> int:
    from pipelines.flows.retrain import step_evaluate, step_gate
    from pipelines.flows.stages import Challenger

    info_path = settings.run_dir(run_date) / "challenger.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    version = args.version or info.get("version")
    if not version:
        print(f"error: no challenger for {run_date}: run `train` first or pass --version", file=sys.stderr)
        return 2
    challenger = Challenger(version=str(version))
    step_evaluate(settings, run_date, challenger)
    d = step_gate(
        settings,
        run_date,
        challenger,
        info.get("parent_run_id"),
        args.force_promote,
        args.dry_run,
        require_approval=args.require_approval,
        **gate_rules_from_args(args),
    )
    _print(d.to_dict())
    _pending_hint(settings, d.to_dict())
    return 0


def _cmd_retrain(settings, args, run_date: str) -> int:
    from pipelines.flows.retrain import run_all

    out = run_all(
        settings,
        args.sources,
        run_date,
        train_config_from_args(args),
        args.format,
        args.force_promote,
        args.dry_run,
        require_approval=args.require_approval,
        **gate_rules_from_args(args),
    )
    if out.get("skipped"):
        print(f"skipped: {out['skipped']['reason']}")
        return 0
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
    return 0


def _cmd_score(settings, args, run_date: str) -> int:
    from pipelines.flows.scoring import score_listings
    from pipelines.serving.score import adhoc_output

    output = args.output
    if output is None and args.run_date is None:  # ad hoc: never replaces the nightly partition
        output = adhoc_output(settings, args.input)
    r = score_listings(
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
    return 0


def _cmd_monitor(settings, args, run_date: str) -> int:
    from pipelines.monitoring.batch import DRIFT_EXIT, monitor_batch, one_line

    report = monitor_batch(settings, args.scored, run_date, record=not args.no_record)
    print(json.dumps(report, indent=2, default=str) if args.json else one_line(report))
    return DRIFT_EXIT if report["status"] == "drift" else 0


def _cmd_summary(settings, args, run_date: str) -> int:
    from pipelines.core.tracking import check_store

    check_store(settings)  # the summary names the store's run: a lost store is an error, as elsewhere
    print(run_summary(settings, run_date))
    return 0


def _cmd_registry(settings, args, run_date: str) -> int:
    from pipelines.registry import decisions
    from pipelines.registry import gate as registry

    if args.action in ("status", "history"):
        from pipelines.registry.decisions import NoSuchModel

        try:
            if args.action == "status":
                st = decisions.status(settings)
                print(json.dumps(st, indent=2, default=str) if args.json else _status_table(st))
            else:
                rows = decisions.history(settings)
                print(json.dumps(rows, indent=2) if args.json else _history_table(rows))
        except NoSuchModel as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    elif args.action == "rollback":
        _print(registry.rollback(settings, args.to_version, args.reason or "operator rollback"))
    else:
        if not args.version:
            print(f"error: registry {args.action} needs a VERSION", file=sys.stderr)
            return 2
        from pipelines.registry.card import write_card

        if args.action == "card":
            card = write_card(settings, args.version)
            print(card["html"] if args.html else card["markdown"], end="" if not args.html else "\n")
            return 0
        from pipelines.flows.approval import os_identity
        from pipelines.registry.gate import check_approver

        who = os_identity()
        if args.by is not None:
            print(
                f"error: --by is not accepted: an answer is recorded as the OS login running the command ({who})",
                file=sys.stderr,
            )
            return 2
        try:
            check_approver(settings, who)
            d = registry.respond(
                settings, args.version, approve=args.action == "approve", reason=args.reason or "", by=who, via="cli"
            )
        except PermissionError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        write_card(settings, args.version)
        _print(d)
    return 0


_COMMANDS = {
    "settings": _cmd_settings,
    "demo-data": _cmd_demo_data,
    "ingest": _cmd_ingest,
    "lake": _cmd_lake,
    "validate": _cmd_validate,
    "train": _cmd_train,
    "tune": _cmd_tune,
    "promote": _cmd_promote,
    "retrain": _cmd_retrain,
    "score": _cmd_score,
    "monitor": _cmd_monitor,
    "summary": _cmd_summary,
    "registry": _cmd_registry,
}


def _pending_hint(settings, d: dict) -> None:
    """A promotion waiting for a person: the evidence, and the two commands that answer it."""
    if d["decision"] != "pending_approval":
        return
    from pipelines.flows.approval import approval_body
    from pipelines.registry.card import card_paths

    v = d["challenger_version"]
    print(f"\npending approval: {settings.model_name} v{v}\n")
    print(approval_body(settings, d, {"Model card": str(card_paths(settings, v)["html"])}))
    print(f"\nanswer with: meli registry approve {v} --reason '...'  |  meli registry reject {v} --reason '...'")


def one_line(exc: BaseException) -> str:
    """An exception as one line for an operator: what failed and where (file, URI), no traceback."""
    full = _disk_full(exc)
    if full is not None:  # whatever wrapped it: the full disk and the file it was writing
        return full
    msg = " ".join(str(exc).split()) or type(exc).__name__
    mod = type(exc).__module__.split(".")[0]
    if mod in ("sqlalchemy", "mlflow", "alembic", "requests", "urllib3", "sqlite3"):
        msg = f"MLflow store {get_settings().tracking_uri}: {msg}"
    return msg[:2000]


STORE_FULL = "database or disk is full"  # SQLite's SQLITE_FULL, as sqlite3/SQLAlchemy/MLflow word it


def _disk_full(exc: BaseException) -> str | None:
    """``no space left on device writing <path>`` when ``exc`` or what it wraps is a full disk: the
    innermost such error (the first write that failed, e.g. a model bundle's, not the MLflow store's
    failure to record the run's end after it), the store named when SQLite itself is full."""
    from pipelines.core.fs import NoSpaceLeft, disk_full

    seen: set[int] = set()
    found = None
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, NoSpaceLeft):  # names the file; what it wraps is the same failure, unnamed
            return str(exc)
        if isinstance(exc, (OSError, RuntimeError)) and disk_full(
            exc, getattr(exc, "filename", None) or get_settings().home
        ):
            found = str(NoSpaceLeft(getattr(exc, "filename", None) or f"under {get_settings().home}"))
        elif STORE_FULL in str(exc):
            found = str(NoSpaceLeft(f"MLflow store {get_settings().tracking_uri}"))
        exc = exc.__cause__ or exc.__context__
    return found


SIGPIPE_EXIT = 141  # 128 + SIGPIPE: what a shell reports for a writer whose reader left (`yes | head`)


def entrypoint() -> None:
    """Run ``main``; every failure is one ``error:`` line on stderr (``-v`` adds the traceback).
    A reader that closes the pipe early (``python -m pipelines settings | head``) is no error: the
    rest of the output is dropped quietly and the exit status is 141, as for a command killed by
    SIGPIPE (a shell with ``pipefail`` sees it; plain pipelines report the reader's status)."""
    try:
        code = main()
        sys.stdout.flush()  # a closed pipe shows here, inside the handler, not at interpreter exit
        sys.exit(code)
    except BrokenPipeError:
        _quiet_stdout()
        sys.exit(SIGPIPE_EXIT)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:  # every failure is one line on stderr; -v adds the traceback
        logging.getLogger(__name__).debug("failed", exc_info=True)
        print(f"error: {one_line(exc)}", file=sys.stderr)
        sys.exit(1)


def _quiet_stdout() -> None:
    """stdout to /dev/null, so that Python's final flush of what is left does not fail again
    (the recipe in Python's signal module documentation, "Note on SIGPIPE")."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass
