"""``python -m pipelines``: the same functions the DAGs call, from a shell.

Every command honours $MELI_HOME (and the other settings in pipelines/settings.py); without
--run-date, commands use today's date (UTC).
"""

from __future__ import annotations

import argparse
from dataclasses import fields
from datetime import datetime

from pipelines.config import INPUT_FORMATS, RunOptions, TrainConfig, declared, field_default, help_of, json_type
from pipelines.settings import RULE_OVERRIDES, GateRules, get_settings

# The module docstring above is the CLI's --help description (``build_parser`` passes ``__doc__``).


def parse_date_arg(value: str) -> str:
    """A ``--run-date`` value as ``YYYY-MM-DD``; else argparse's error."""
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


def add_flags(g, obj, skip=()) -> None:
    """One flag per declared field of the dataclass (or instance) ``obj`` (pipelines/config.py ``declare``),
    but ``skip``: its type, help and default from the declaration (an instance's values as the defaults).
    Every flag defaults to None (= not set: the dataclass's default applies, and a recipe may set it)."""
    for name, (f, s) in declared(obj if isinstance(obj, type) else type(obj)).items():
        if name in skip:
            continue
        value = field_default(f) if isinstance(obj, type) else getattr(obj, name)
        shown = ",".join(value) if isinstance(value, (list, tuple)) else value
        shown = "empty" if shown == "" else shown
        flag = "--" + name.replace("_", "-")
        kind = json_type(f)
        kw = {"dest": name, "default": None, "help": f"{s.help} (default: {shown})".replace("%", "%%")}
        if kind == "boolean":
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["type"] = {"integer": int, "number": float}.get(kind, str)
            if s.choices:  # shown, checked by the dataclass (one line naming the field)
                kw["metavar"] = "{" + ",".join(s.choices) + "}" + ("[,...]" if kind == "array" else "")
        g.add_argument(flag, **kw)


def _add_train_flags(p: argparse.ArgumentParser, skip=()) -> None:
    g = p.add_argument_group("training hyperparameters (defaults from TrainConfig)")
    add_flags(g, TrainConfig, skip)


def train_config_from_args(args) -> TrainConfig:
    """The TrainConfig of a train/retrain/tune command line: the flags set, TrainConfig's defaults for the rest."""
    return TrainConfig.from_dict({f.name: getattr(args, f.name, None) for f in fields(TrainConfig)})


def _add_gate_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--force-promote", action="store_true", help=help_of(RunOptions, "force_promote"))
    p.add_argument("--dry-run", action="store_true", help=help_of(RunOptions, "dry_run"))
    p.add_argument(
        "--require-approval",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a promotion waits as 'pending approval' until `registry approve|reject VERSION` "
        f"(default: MELI_REQUIRE_APPROVAL, now {get_settings().require_approval})",
    )
    g = p.add_argument_group("gate rules (defaults from MELI_GATE_*)")
    add_flags(g, GateRules(), skip=set(declared(GateRules)) - set(RULE_OVERRIDES))  # MELI_GATE_* resolved


def gate_rules_from_args(args) -> dict:
    """The gate rules a promote/retrain command line overrides (None: the MELI_GATE_* value), each checked
    against its declared bound (the trigger form's)."""
    rules = {k: getattr(args, k) for k in RULE_OVERRIDES}
    for name, (_, s) in declared(GateRules).items():
        if rules.get(name) is not None and s.bound is not None:
            s.bound.check(name, rules[name])
    return rules


def _parser_class():
    class Parser(argparse.ArgumentParser):
        def __init__(self, *a, **kw):
            kw.setdefault("formatter_class", _Help)
            super().__init__(*a, **kw)

    return Parser


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="meli", description=__doc__, formatter_class=_Help)
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
    p.add_argument("--run-date", type=parse_date_arg, default=None, help="YYYY-MM-DD (default: today, UTC)")
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
    p.add_argument("--run-date", type=parse_date_arg, default=None, help="only this partition (default: all)")
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
    p.add_argument("--run-date", type=parse_date_arg, default=None, help="the partition's date (default: today, UTC)")
    p.add_argument("--format", default="auto", choices=INPUT_FORMATS, help="input format")


def _add_training_commands(sub) -> None:
    """train, tune, promote, retrain."""
    from pipelines.training.tune import TuneConfig

    p = sub.add_parser("train", help="prepare the dataset, train the embedding and classifiers, register the best")
    p.add_argument("--run-date", type=parse_date_arg, default=None, help="YYYY-MM-DD (default: today, UTC)")
    _add_train_flags(p)

    p = sub.add_parser(
        "tune",
        help="an Optuna study over the training recipe on the lake's train/validation splits (never test); "
        "its best trials become a recipe (train/retrain --recipe tuned)",
    )
    p.add_argument(
        "--run-date",
        type=parse_date_arg,
        default=None,
        help="the lake snapshot as of this date (default: the newest partition)",
    )
    g = p.add_argument_group("the study (defaults from TuneConfig)")
    add_flags(g, TuneConfig, skip=("seed",))
    _add_train_flags(p, skip=("models",))  # the base recipe (--models: the study's, the types to tune)

    p = sub.add_parser("promote", help="evaluate the challenger vs the champion and apply the gate")
    p.add_argument("--run-date", type=parse_date_arg, default=None, help="YYYY-MM-DD (default: today, UTC)")
    p.add_argument("--version", default=None, help="challenger version (default: the one `train` registered)")
    _add_gate_flags(p)

    p = sub.add_parser("retrain", help="ingest SOURCES, validate, train, evaluate and gate in one process")
    p.add_argument("sources", nargs="+", help="input files or glob patterns")
    p.add_argument("--run-date", type=parse_date_arg, default=None, help="YYYY-MM-DD (default: today, UTC)")
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
        type=parse_date_arg,
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
    p.add_argument(
        "--run-date", type=parse_date_arg, default=None, help="the batch's date in the report (default: today)"
    )
    p.add_argument("--no-record", action="store_true", help="print the figures only: no report, MLflow run or history")
    p.add_argument("--json", action="store_true", help="print the whole report as JSON")

    p = sub.add_parser("summary", help="what a run produced: decision, partition, Data Docs, MLflow run, scores")
    p.add_argument("--run-date", type=parse_date_arg, default=None, help="YYYY-MM-DD (default: today, UTC)")

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
