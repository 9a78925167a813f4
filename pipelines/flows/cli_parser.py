"""``python -m pipelines``: the same functions the DAGs call, from a shell.

Every command honours $MELI_HOME (and the other settings in pipelines/settings.py); without
--run-date, commands use today's date (UTC).
"""

from __future__ import annotations

import argparse
from dataclasses import fields
from datetime import datetime

from pipelines.config import INPUT_FORMATS
from pipelines.settings import get_settings

# The module docstring above is the CLI's --help description (``build_parser`` passes ``__doc__``).


def _date(value: str) -> str:
    try:
        return datetime.strptime(value, "%Y-%m-%d").date().isoformat()
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"run date must be YYYY-MM-DD, got {value!r}") from exc


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

    _add_data_commands(sub)
    _add_training_commands(sub)
    _add_serving_commands(sub)
    for choice in sub._choices_actions:  # `COMMAND --help` says what the command does, as the list does
        p = sub.choices[choice.dest]
        p.description = p.description or choice.help
    return ap


def _add_data_commands(sub) -> None:
    """settings, demo-data, ingest, lake, validate."""
    sub.add_parser(
        "settings",
        help="print the resolved settings as JSON: every MELI_* variable's value (or its default), the MLflow "
        "tracking and registry URIs, the gate, validation and monitor thresholds (README: Configuration)",
    )

    p = sub.add_parser("demo-data", help="write SYNTHETIC MeLi-like listings (DiploDatos jsonl[.gz])")
    p.add_argument("out", help="output path (.jsonl or .jsonl.gz)")
    p.add_argument("--rows", type=int, default=2000, help="listings to write")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same file)")
    p.add_argument("--dirty", type=int, default=0, help="broken lines to mix in (shows quarantine)")

    p = sub.add_parser("ingest", help="ingest files into the lake partition of a run date")
    p.add_argument("sources", nargs="+", help="input files or glob patterns")
    p.add_argument("--run-date", type=_date, default=None, help="YYYY-MM-DD (default: today, UTC)")
    p.add_argument("--format", default="auto", choices=INPUT_FORMATS, help="input format")
    p.add_argument(
        "--allow-empty",
        action="store_true",
        help="commit the partition even if the input holds no rows (default: refuse, the partition stays)",
    )

    p = sub.add_parser(
        "lake",
        help="what readers of the lake see: each listings partition's committed version, rows, quarantined "
        "rows, validation outcome and commit time",
    )
    p.add_argument("action", choices=["status"], help="status: the table (or --json)")
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
    p.add_argument("--format", default="auto", choices=INPUT_FORMATS, help="input format")


def _add_training_commands(sub) -> None:
    """train, tune, promote, retrain."""
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
    p.add_argument("--format", default="auto", choices=INPUT_FORMATS, help="input format")
    _add_train_flags(p)
    _add_gate_flags(p)


def _add_serving_commands(sub) -> None:
    """score, monitor, summary, registry."""
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
    p.add_argument("--format", default="auto", choices=INPUT_FORMATS, help="input format")
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
    p.add_argument(
        "action",
        choices=["status", "history", "rollback", "approve", "reject", "card"],
        help="status: champion, previous and every version (a table; --json for machines); history: the "
        "promotion history with who approved and why",
    )
    p.add_argument("version", nargs="?", default=None, help="the version to approve, reject or show the card of")
    p.add_argument("--to-version", default=None, help="rollback target (default: alias 'previous')")
    p.add_argument(
        "--reason",
        default=None,
        help="recorded with the rollback, approval or rejection (default: rollback: "
        "'operator rollback', approve/reject: none); approve/reject are recorded as the OS login "
        "running the command, which must be in MELI_APPROVERS when that is set",
    )
    # approve/reject are recorded as the OS login running the command (pipelines/flows/approval.py
    # os_identity); --by is kept only to refuse it with a clear message
    p.add_argument("--by", default=None, help=argparse.SUPPRESS)
    p.add_argument("--html", action="store_true", help="card: print the path of its HTML page instead")
    p.add_argument("--json", action="store_true", help="machine-readable output")
