"""The command line as a new user meets it: every option's default in --help, the README's command
list complete, the resolved settings printed."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest

from pipelines.flows.cli import main
from pipelines.flows.cli_parser import build_parser

README = (Path(__file__).resolve().parents[3] / "README.md").read_text()


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
    assert re.search(r"--epochs EPOCHS\s+Epochs of a full run(?:(?!\n  --).)*\(default: 15\)", train, re.S)
    assert "(default: champion)" in _subparsers(build_parser())["score"].format_help()


def _flag_help(p: argparse.ArgumentParser) -> dict[str, str]:
    """Each option's help as --help prints it, joined onto one line (argparse wraps after a hyphen)."""
    text = re.sub(r"-\s+", "-", " ".join(p.format_help().split()))
    out = {}
    for action in p._actions:
        if action.option_strings and action.help not in (None, argparse.SUPPRESS):
            out[action.dest] = re.sub(r"-\s+", "-", " ".join(p._get_formatter()._expand_help(action).split()))
            assert out[action.dest] in text, action.dest
    return out


def test_help_of_train_retrain_and_tune_shows_each_declared_default():
    """Issue 32: the flags are generated from the one declaration (pipelines/config.py ``declare``):
    each field's help and its default, in --help."""
    from dataclasses import fields

    from pipelines.config import TrainConfig, declared
    from pipelines.settings import RULE_OVERRIDES, GateRules
    from pipelines.training.tune import TuneConfig

    def shown(v):
        return ",".join(v) if isinstance(v, list) else ("empty" if v == "" else str(v))

    subs = _subparsers(build_parser())
    train_defaults = {f.name: shown(getattr(TrainConfig(), f.name)) for f in fields(TrainConfig)}
    for name in ("train", "retrain", "tune"):
        helps = _flag_help(subs[name])
        want = dict(train_defaults)
        if name == "tune":  # --models is the study's (TuneConfig: mlp)
            want |= {k: shown(getattr(TuneConfig(), k)) for k in declared(TuneConfig) if k != "seed"}
        if name == "retrain":
            want |= {k: shown(getattr(GateRules(), k)) for k in RULE_OVERRIDES}
        for dest, default in want.items():
            assert dest in helps, (name, dest)
            assert helps[dest].endswith(f"(default: {default})"), (name, dest, helps[dest])
        for dest, (_, s) in declared(TrainConfig).items():
            if name == "tune" and dest == "models":
                continue
            assert helps[dest].startswith(re.sub(r"-\s+", "-", " ".join(s.help.split()))), (name, dest)
    assert "--models {mlp,cnn,bilstm}[,...]" in subs["train"].format_help()
    assert "(default: mlp,cnn,bilstm)" in _flag_help(subs["train"])["models"]
    assert _flag_help(subs["tune"])["models"].endswith("(default: mlp)")


def test_gate_rule_flags_are_checked_against_the_forms_bounds():
    from pipelines.flows.cli_parser import gate_rules_from_args

    ap = build_parser()
    assert gate_rules_from_args(ap.parse_args(["promote", "--min-improvement", "-0.5"]))["min_improvement"] == -0.5
    with pytest.raises(ValueError, match="min_macro_recall must be <= 1"):
        gate_rules_from_args(ap.parse_args(["promote", "--min-macro-recall", "5"]))


def test_tune_flags_build_the_study_config():
    from pipelines.flows.cli_parser import train_config_from_args
    from pipelines.training.tune import TuneConfig

    args = build_parser().parse_args(["tune", "--models", "cnn", "--startup-trials", "0", "--seed", "3"])
    assert args.models == "cnn" and args.startup_trials == 0 and args.trials is None
    assert TuneConfig(models=args.models, startup_trials=0).models == ["cnn"]
    assert train_config_from_args(args).seed == 3


def test_train_and_retrain_default_to_the_dags_training_defaults():
    """One source of defaults: with no flags the CLI trains what the DAG trains (every model type, the
    ensemble candidate, the sentence features), i.e. TrainConfig(); the DAG's form reads the same
    (tests/integration/test_dags.py)."""
    from pipelines.config import MODEL_TYPES, TrainConfig
    from pipelines.flows.cli_parser import train_config_from_args

    for argv in (["train"], ["retrain", "listings.jsonl.gz"]):
        cfg = train_config_from_args(build_parser().parse_args(argv))
        assert cfg == TrainConfig(), argv
        assert cfg.models == list(MODEL_TYPES) and cfg.ensemble and cfg.sentence_encoder == "use"
    cfg = train_config_from_args(build_parser().parse_args(["train", "--models", "cnn", "--sentence-encoder", "none"]))
    assert cfg.models == ["cnn"] and cfg.sentence_encoder == "none"


def test_readme_lists_every_command_and_its_flags():
    block = README.split("## Command line", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    for name in _subparsers(build_parser()):
        assert f"meli {name}" in block, name
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

    import pipelines.data.ingest
    import pipelines.features.embedding
    from pipelines.config import TrainConfig
    from pipelines.flows.retrain import run_all

    def no_work(*a, **kw):
        raise AssertionError("work started before the training parameters were checked")

    monkeypatch.setattr(pipelines.data.ingest, "ingest", no_work)
    monkeypatch.setattr(pipelines.features.embedding, "train_fasttext", no_work)
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

    from pipelines.features.sentence import WordEncoder
    from pipelines.flows import cli

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


def test_a_full_disk_at_the_bundle_write_is_one_line_and_leaves_no_run_running(
    settings, synthetic_jsonl, monkeypatch, capsys
):
    """Audit D1: torch.save on a full disk raises RuntimeError ('iostream error'), not ENOSPC, and the
    store then cannot record the runs' end either ('database or disk is full'). The error is the
    first failure, in one line naming the file; no run stays RUNNING: the leases stay behind, so the
    next start marks the model's run and the parent FAILED."""
    import sqlite3
    import sys

    import mlflow
    import pytest
    import torch

    from pipelines.core import fs, tracking
    from pipelines.core.fs import NoSpaceLeft
    from pipelines.flows import cli

    full = {"on": False}
    real_save, real_terminated = torch.save, mlflow.MlflowClient.set_terminated

    def save(obj, f, *a, **kw):
        if str(f).endswith("weights.pt"):
            full["on"] = True
            raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 4901888 vs 4901776")
        return real_save(obj, f, *a, **kw)

    def set_terminated(self, run_id, *a, **kw):
        if full["on"]:
            raise mlflow.exceptions.MlflowException(
                "(sqlite3.OperationalError) database or disk is full", error_code="INTERNAL_ERROR"
            )
        return real_terminated(self, run_id, *a, **kw)

    monkeypatch.setattr(torch, "save", save)
    monkeypatch.setattr(mlflow.MlflowClient, "set_terminated", set_terminated)
    monkeypatch.setattr(fs, "no_space_at", lambda path: full["on"], raising=False)  # os.statvfs: nothing free
    src = synthetic_jsonl(600)
    monkeypatch.setattr(sys, "argv", ["pipelines", "retrain", str(src), "--run-date", "2026-11-01", *TINY])
    with pytest.raises(SystemExit) as exit_:
        cli.entrypoint()
    assert exit_.value.code == 1
    bundle = settings.run_dir("2026-11-01") / "models" / "mlp" / "bundle"
    err = capsys.readouterr().err.strip().splitlines()
    assert [ln for ln in err if ln.startswith("error:")] == [
        f"error: no space left on device writing {bundle}/weights.pt"
    ]
    assert "Traceback" not in "\n".join(err)

    full["on"] = False  # space again: the next start marks both runs FAILED
    mlflow.set_tracking_uri(settings.tracking_uri)
    assert len(tracking.fail_abandoned_runs(settings)) == 2
    runs = mlflow.search_runs(search_all_experiments=True)
    assert sorted(runs["status"]) == ["FAILED", "FAILED"], runs[["tags.mlflow.runName", "status"]]
    # the store's own "database or disk is full" is the no-space line naming the store, but never
    # hides the write that failed first
    store_full = sqlite3.OperationalError("database or disk is full")
    assert cli.one_line(store_full) == f"no space left on device writing MLflow store {settings.tracking_uri}"
    try:
        try:
            raise NoSpaceLeft(bundle / "weights.pt")
        except OSError:
            raise store_full from None
    except sqlite3.OperationalError as exc:
        exc.__suppress_context__ = False
        assert cli.one_line(exc) == f"no space left on device writing {bundle}/weights.pt"


def test_a_closed_pipe_ends_quietly(tmp_path):
    """Audit N4: `python -m pipelines settings | head` printed 'error: [Errno 32] Broken pipe'. A reader
    gone before the output is written is no error: nothing on stderr, exit status 141 (128 + SIGPIPE)."""
    import os
    import subprocess
    import sys

    r_fd, w_fd = os.pipe()
    os.close(r_fd)  # the reader has left before the first write
    env = {**os.environ, "MELI_HOME": str(tmp_path / "h"), "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    p = subprocess.run(
        [sys.executable, "-m", "pipelines", "settings"], stdout=w_fd, stderr=subprocess.PIPE, text=True, env=env
    )
    os.close(w_fd)
    assert (p.returncode, p.stderr) == (141, "")


def test_retrain_with_a_lost_store_fails_before_it_ingests(settings, synthetic_jsonl):
    """Audit N1: with the store gone under a home that holds model cards, `retrain` (and `train`)
    fail on the store first: nothing is ingested or committed to the lake."""
    import pytest

    from pipelines.config import TrainConfig
    from pipelines.core.tracking import StoreMissing
    from pipelines.flows.retrain import run_all

    (settings.cards_dir / "v1.md").parent.mkdir(parents=True, exist_ok=True)
    (settings.cards_dir / "v1.md").write_text("# v1\n")
    src = synthetic_jsonl(600)
    with pytest.raises(StoreMissing, match="is missing"):
        run_all(settings, [str(src)], "2026-11-01", TrainConfig(models=["mlp"]))
    with pytest.raises(StoreMissing, match="is missing"):
        main(["train", "--run-date", "2026-11-01", *TINY])
    assert not settings.listings_dir.exists() or not any(settings.listings_dir.iterdir())


def test_a_train_without_its_gate_leaves_a_finished_run_and_promote_finishes_it_again(settings, synthetic_jsonl):
    """`train` stops before the gate: its parent run must not read RUNNING for ever (a kill leaves
    RUNNING for the next start to mark FAILED; a finished command does not); `promote` reopens it."""
    import mlflow

    src = synthetic_jsonl(600)
    assert main(["ingest", str(src), "--run-date", "2026-11-01"]) == 0
    assert main(["train", "--run-date", "2026-11-01", *TINY]) == 0
    client = mlflow.MlflowClient(settings.tracking_uri)
    exp = client.get_experiment_by_name(settings.experiment)
    [parent] = client.search_runs([exp.experiment_id], "tags.`meli.stage` = 'retrain'")
    assert parent.info.status == "FINISHED"
    assert main(["promote", "--run-date", "2026-11-01"]) == 0
    run = client.get_run(parent.info.run_id)
    assert run.info.status == "FINISHED" and run.data.tags.get("meli.decision") in ("promoted", "rejected")
