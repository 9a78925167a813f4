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


TINY = ["--models", "mlp", "--epochs", "1", "--embedding-epochs", "1", "--embedding-dim", "16", "--bucket", "2000"]
TINY += ["--no-refit", "--no-ensemble"]


def test_bad_training_parameters_fail_before_any_work(settings, synthetic_jsonl, monkeypatch):
    """--lr -1 used to fail in the optimizer after ingest, validation, FastText and encoding."""
    import pytest

    import pipelines.features
    import pipelines.ingest
    from pipelines.config import TrainConfig
    from pipelines.retrain import run_all

    def no_work(*a, **kw):
        raise AssertionError("work started before the training parameters were checked")

    monkeypatch.setattr(pipelines.ingest, "ingest", no_work)
    monkeypatch.setattr(pipelines.features, "train_fasttext", no_work)
    src = str(synthetic_jsonl(100))
    for flags, what in ((["--lr", "-1"], "lr"), (["--embedding-lr", "nan"], "embedding_lr")):
        with pytest.raises(ValueError, match=f"^{what} must be"):
            main(["retrain", src, *TINY, *flags])
        with pytest.raises(ValueError, match=f"^{what} must be"):
            main(["train", *TINY, *flags])
    cfg = TrainConfig(models=["mlp"])
    cfg.lr = -1.0  # set after construction: run_all checks again before it ingests
    with pytest.raises(ValueError, match="^lr must be"):
        run_all(settings, [src], "2026-11-01", cfg)


def test_a_full_disk_is_one_line_naming_the_file_no_temp_file_and_a_failed_run(
    settings, synthetic_jsonl, monkeypatch, capsys
):
    """ENOSPC while the sentence-vector cache is written (issue 31 item 4): the error names the file,
    the cache's temp file is gone, and the retraining's parent MLflow run is FAILED, not FINISHED."""
    import errno
    import sys

    import mlflow
    import numpy as np
    import pytest

    from pipelines import cli
    from pipelines.sentence import WordEncoder

    monkeypatch.setattr(WordEncoder, "encode_words", lambda self, ws: np.zeros((len(ws), self.dim), np.float16))
    real_save = np.save

    def save(file, arr, *a, **kw):
        if "cache/sentence" in str(getattr(file, "name", file)):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(file, arr, *a, **kw)

    monkeypatch.setattr(np, "save", save)
    src = synthetic_jsonl(600)
    argv = ["pipelines", "retrain", str(src), "--run-date", "2026-11-01", *TINY, "--sentence-encoder", "use"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_:
        cli.entrypoint()
    assert exit_.value.code == 1
    cache = settings.sentence_cache_dir / f"use-{WordEncoder('use', threads=1).version}"
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: no space left on device writing {cache / 'vectors.npy'}"
    )
    assert not list(cache.glob(".*")), "a temp file of the cache was left behind"
    mlflow.set_tracking_uri(settings.tracking_uri)
    runs = mlflow.search_runs(search_all_experiments=True, filter_string="tags.`meli.stage` = 'retrain'")
    assert runs["status"].tolist() == ["FAILED"]
