"""``python -m pipelines``: one small function per subcommand, each calling the same functions the
DAGs call; ``main`` dispatches to them. The argument parser (and the --help text) is in
pipelines/cli_parser.py; ``build_parser`` is importable from here as before.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path

from pipelines.cli_parser import _date
from pipelines.cli_parser import _gate_rules as _gate_rules
from pipelines.cli_parser import _train_cfg as _train_cfg
from pipelines.cli_parser import build_parser as build_parser
from pipelines.settings import get_settings


def today() -> str:
    return datetime.now(UTC).date().isoformat()


def _print(obj) -> None:
    print(json.dumps(obj, indent=2, default=str))


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
    return _COMMANDS[args.cmd](settings, args, run_date)


def _cmd_settings(settings, args, run_date: str) -> int:
    _print(settings.as_dict())
    return 0


def _cmd_demo_data(settings, args, run_date: str) -> int:
    from pipelines.synthetic import write_jsonl

    path = write_jsonl(args.out, args.rows, args.seed, args.dirty)
    print(f"wrote {args.rows} SYNTHETIC listings (+{args.dirty} broken lines) to {path}")
    return 0


def _cmd_ingest(settings, args, run_date: str) -> int:
    from pipelines.retrain import step_ingest

    _print(step_ingest(settings, args.sources, run_date, args.format, allow_empty=args.allow_empty))
    return 0


def _cmd_lake(settings, args, run_date: str) -> int:
    from pipelines.lake import status

    st = status(settings.listings_dir, args.run_date)
    print(json.dumps(st, indent=2) if args.json else _lake_table(st))
    if args.run_date and not st["partitions"]:
        print(f"error: no committed partition ingest_date={args.run_date} under {st['root']}", file=sys.stderr)
        return 1
    return 0


def _cmd_validate(settings, args, run_date: str) -> int:
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
    return 0


def _cmd_train(settings, args, run_date: str) -> int:
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
    return 0


def _cmd_tune(settings, args, run_date: str) -> int:
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
    return 0


def _cmd_promote(settings, args, run_date: str) -> int:
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
    return 0


def _cmd_retrain(settings, args, run_date: str) -> int:
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
    return 0


def _cmd_score(settings, args, run_date: str) -> int:
    from pipelines.score import adhoc_output, score

    output = args.output
    if output is None and args.run_date is None:  # ad hoc: never replaces the nightly partition
        output = adhoc_output(settings, args.input)
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
    return 0


def _cmd_monitor(settings, args, run_date: str) -> int:
    from pipelines.monitor import DRIFT_EXIT, monitor_batch, one_line

    report = monitor_batch(settings, args.scored, run_date, record=not args.no_record)
    print(json.dumps(report, indent=2, default=str) if args.json else one_line(report))
    return DRIFT_EXIT if report["status"] == "drift" else 0


def _cmd_summary(settings, args, run_date: str) -> int:
    print(run_summary(settings, run_date))
    return 0


def _cmd_registry(settings, args, run_date: str) -> int:
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
        from pipelines.approval import check_approver, os_identity

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
