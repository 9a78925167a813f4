"""The command line as a new user meets it: every option's default in --help, the README's command
list complete, the resolved settings printed."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from pipelines.cli import build_parser, main

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def _subparsers(ap: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (sub,) = [a for a in ap._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def test_help_shows_every_default():
    for name, p in _subparsers(build_parser()).items():
        for action in p._actions:
            if not action.option_strings or action.dest == "help" or isinstance(action, argparse._StoreTrueAction):
                continue
            if action.help == argparse.SUPPRESS:  # a hidden flag kept only to refuse it (registry --by)
                continue
            help_text = p._get_formatter()._expand_help(action) if action.help else ""
            assert "default" in help_text, (name, action.option_strings, help_text)
    train = _subparsers(build_parser())["train"].format_help()
    assert re.search(r"--epochs EPOCHS\s+\(default: 15\)", train)
    assert "(default: champion)" in _subparsers(build_parser())["score"].format_help()


def test_train_and_retrain_default_to_the_dags_training_defaults():
    """One source of defaults: with no flags the CLI trains what the DAG trains (every model type, the
    ensemble candidate, the sentence features), i.e. TrainConfig(); the DAG's form reads the same
    (tests/integration/test_dags.py)."""
    from pipelines.cli import _train_cfg
    from pipelines.config import MODEL_TYPES, TrainConfig

    for argv in (["train"], ["retrain", "listings.jsonl.gz"]):
        cfg = _train_cfg(build_parser().parse_args(argv))
        assert cfg == TrainConfig(), argv
        assert cfg.models == list(MODEL_TYPES) and cfg.ensemble and cfg.sentence_encoder == "use"
    cfg = _train_cfg(build_parser().parse_args(["train", "--models", "cnn", "--sentence-encoder", "none"]))
    assert cfg.models == ["cnn"] and cfg.sentence_encoder == "none"


def test_readme_lists_every_command_and_its_flags():
    block = README.split("## Command line", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    for name in _subparsers(build_parser()):
        assert f"python -m pipelines {name}" in block, name
    for flag in (
        "summary",
        "score INPUT",
        "--format",
        "--run-date",
        "--no-progress",
        "promote",
        "--version",
        "registry",
        "--json",
        "--reason",
        "lake status",
        "--allow-empty",
    ):
        assert flag in block, flag


def test_settings_show_the_resolved_registry_uri(settings, capsys):
    assert main(["settings"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["registry_uri"] == shown["tracking_uri"] == f"sqlite:///{settings.home / 'mlflow' / 'mlflow.db'}"
