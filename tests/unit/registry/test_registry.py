"""Champion/challenger gate against a real MLflow registry (SQLite).

Models here are tiny pyfunc test doubles whose errors we choose, so each rule is exercised exactly;
the gate itself is model-agnostic (it only calls pyfunc predict on the test titles).
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from pipelines.registry import comparison, decisions, records, versions
from pipelines.registry import gate as registry
from pipelines.settings import GateRules

RUN_DATE = "2026-11-20"
CLASSES = [f"CAT_{i:02d}" for i in range(20)]


class LookupModel(mlflow.pyfunc.PythonModel):
    """Predicts from a fixed title -> category table (unknown titles -> 'UNKNOWN')."""

    def __init__(self, table: dict[str, str]):
        self.table = table

    def predict(self, context, model_input, params=None):
        return pd.DataFrame({"predicted_category": [self.table.get(t, "UNKNOWN") for t in model_input["title"]]})


@pytest.fixture(autouse=True)
def _no_behaviour_rule(monkeypatch):
    """Lookup doubles know exact titles only: the behaviour rule is tested on its own below."""
    monkeypatch.setenv("MELI_GATE_MIN_BEHAVIOUR_PASS", "0")


@pytest.fixture
def test_rows(settings):
    rows = [{"listing_id": f"id{c}{k}", "title": f"{c} item {k}", "category": c} for c in CLASSES for k in range(10)]
    df = pd.DataFrame(rows)
    d = settings.run_dir(RUN_DATE) / "dataset"
    d.mkdir(parents=True)
    df.to_parquet(d / "test.parquet", index=False)
    return df


def make_version(settings, df, recall_by_class: dict[str, float] | float) -> str:
    """Register a model whose recall on each class is exactly the given value."""
    from pipelines.core.tracking import configure

    configure(settings)
    table = {}
    for c, g in df.groupby("category"):
        r = recall_by_class if isinstance(recall_by_class, float) else recall_by_class.get(c, 1.0)
        hits = round(r * len(g))
        for i, t in enumerate(g["title"]):
            table[t] = c if i < hits else "WRONG"
    with mlflow.start_run() as run:
        info = mlflow.pyfunc.log_model(name="model", python_model=LookupModel(table), pip_requirements=["mlflow"])
    out = versions.register_challenger(
        settings,
        {"model_uri": info.model_uri, "run_id": run.info.run_id, "model_type": "lookup", "val_macro_recall": 0.0},
        RUN_DATE,
    )
    return out["version"]


def run_gate(settings, version, **kw):
    comparison.evaluate(settings, RUN_DATE, version)
    rules = kw.pop(
        "rules",
        GateRules(
            min_improvement=0.002,
            min_macro_recall=0.3,
            max_class_drop=0.2,
            max_share_classes_dropped=0.1,
            bootstrap_samples=100,
            min_behaviour_pass=0.0,
        ),
    )
    return registry.gate(settings, RUN_DATE, version, rules, **kw)


def champion(settings):
    st = decisions.status(settings)
    return st["champion"]["version"] if st["champion"] else None, st["previous"]["version"] if st["previous"] else None


def test_first_run_promotes_then_better_promotes_worse_and_equal_reject(settings, test_rows):
    v1 = make_version(settings, test_rows, 0.7)
    d = run_gate(settings, v1)
    assert (d["decision"], d["rule"]) == ("promoted", "first_model")
    assert d["champion_macro_recall"] is None and d["challenger_macro_recall"] == pytest.approx(0.7)
    assert champion(settings) == (v1, None)

    v2 = make_version(settings, test_rows, 0.8)
    d = run_gate(settings, v2)
    assert (d["decision"], d["rule"]) == ("promoted", "improved")
    assert d["delta"] == pytest.approx(0.1)
    assert d["bootstrap"]["ci_low"] <= d["delta"] <= d["bootstrap"]["ci_high"]
    assert champion(settings) == (v2, v1)

    v3 = make_version(settings, test_rows, 0.7)
    d = run_gate(settings, v3)
    assert (d["decision"], d["rule"]) == ("rejected", "not_better")
    assert champion(settings) == (v2, v1)

    v4 = make_version(settings, test_rows, 0.8)
    d = run_gate(settings, v4)
    assert (d["decision"], d["rule"]) == ("rejected", "not_better")
    assert d["delta"] == pytest.approx(0.0)
    assert champion(settings) == (v2, v1)

    # the decision is recorded on the version, as files, and in the history
    client = mlflow.MlflowClient()
    tags = client.get_model_version(settings.model_name, v4).tags
    assert tags["meli.decision"] == "rejected" and tags["meli.rule"] == "not_better"
    assert (settings.run_dir(RUN_DATE) / "evaluation" / "decision.md").read_text().startswith("# ")
    hist = decisions.history(settings)
    assert [h["decision"] for h in hist] == ["promoted", "promoted", "rejected", "rejected"]
    assert hist[1]["challenger_macro_recall"] and hist[1]["champion_macro_recall"]


def test_guardrail_rejects_a_challenger_that_collapses_on_many_classes(settings, test_rows):
    v1 = make_version(settings, test_rows, 0.7)
    run_gate(settings, v1)
    collapse = {c: (0.3 if i < 4 else 1.0) for i, c in enumerate(CLASSES)}  # mean 0.86 > 0.7
    v2 = make_version(settings, test_rows, collapse)
    d = run_gate(settings, v2)
    assert d["challenger_macro_recall"] > d["champion_macro_recall"]
    assert (d["decision"], d["rule"]) == ("rejected", "class_guardrail")
    assert champion(settings)[0] == v1


def test_floor_force_promote_and_dry_run(settings, test_rows):
    v1 = make_version(settings, test_rows, 0.2)
    d = run_gate(settings, v1)
    assert (d["decision"], d["rule"]) == ("rejected", "below_floor")
    assert champion(settings) == (None, None)

    v2 = make_version(settings, test_rows, 0.9)
    d = run_gate(settings, v2, dry_run=True)
    assert d["decision"] == "would_promote" and d["action"].startswith("none")
    assert champion(settings) == (None, None)

    d = run_gate(settings, v2)
    assert d["decision"] == "promoted"
    v3 = make_version(settings, test_rows, 0.5)
    d = run_gate(settings, v3, force_promote=True)
    assert (d["decision"], d["rule"]) == ("promoted", "force_promote")
    assert champion(settings) == (v3, v2)


def test_rollback_restores_previous_and_is_recorded(settings, test_rows):
    v1 = make_version(settings, test_rows, 0.7)
    run_gate(settings, v1)
    v2 = make_version(settings, test_rows, 0.9)
    run_gate(settings, v2)
    assert champion(settings) == (v2, v1)
    registry.rollback(settings, reason="bad feedback")
    assert champion(settings) == (v1, v2)
    assert decisions.history(settings)[-1]["decision"] == "rollback"
    registry.rollback(settings, to_version=v2)
    assert champion(settings) == (v2, v1)
    with pytest.raises(records.GateError):
        registry.rollback(settings, to_version=v2)


def test_unreachable_registry_fails_and_leaves_alias(settings, test_rows, monkeypatch):
    v1 = make_version(settings, test_rows, 0.7)
    run_gate(settings, v1)
    v2 = make_version(settings, test_rows, 0.9)
    comparison.evaluate(settings, RUN_DATE, v2)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    from pipelines.settings import get_settings

    with pytest.raises(Exception, match="127.0.0.1:9|Connection|connect|API request"):  # noqa: B017
        registry.gate(get_settings(), RUN_DATE, v2)
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert champion(get_settings()) == (v1, None)


def test_champion_moved_since_evaluation_is_refused(settings, test_rows):
    v1 = make_version(settings, test_rows, 0.7)
    run_gate(settings, v1)
    v2 = make_version(settings, test_rows, 0.9)
    comparison.evaluate(settings, RUN_DATE, v2)
    v3 = make_version(settings, test_rows, 0.8)
    mlflow.MlflowClient().set_registered_model_alias(settings.model_name, "champion", v3)
    with pytest.raises(records.GateError, match="champion moved"):
        registry.gate(settings, RUN_DATE, v2)


def _tags(settings, version):
    return mlflow.MlflowClient().get_model_version(settings.model_name, version).tags


def test_gate_retried_after_the_alias_moved_completes_the_promotion(settings, test_rows, monkeypatch):
    v1 = make_version(settings, test_rows, 0.7)
    run_gate(settings, v1)
    v2 = make_version(settings, test_rows, 0.9)
    comparison.evaluate(settings, RUN_DATE, v2)
    real = records.history_event

    def history_down(*a, **k):
        raise RuntimeError("artifact store down")

    monkeypatch.setattr(records, "history_event", history_down)
    with pytest.raises(RuntimeError, match="artifact store down"):
        registry.gate(settings, RUN_DATE, v2)
    assert champion(settings) == (v2, v1)  # the alias moved, the record did not finish
    monkeypatch.setattr(records, "history_event", real)

    d = registry.gate(settings, RUN_DATE, v2)  # Airflow's retry of the gate task
    assert (d["decision"], d["rule"]) == ("promoted", "improved")
    assert d["champion_version"] == v1 and d["delta"] == pytest.approx(0.2)
    assert champion(settings) == (v2, v1)
    assert _tags(settings, v2)["meli.decision"] == "promoted"
    assert [(h["decision"], h["challenger_version"]) for h in decisions.history(settings)] == [
        ("promoted", v1),
        ("promoted", v2),
    ]


def test_rerunning_evaluate_and_gate_after_a_promotion_changes_nothing(settings, test_rows):
    v1 = make_version(settings, test_rows, 0.7)
    run_gate(settings, v1)
    v2 = make_version(settings, test_rows, 0.9)
    first = run_gate(settings, v2)
    again = run_gate(settings, v2)  # cleared evaluate + gate tasks, or `promote` run twice
    assert again == first
    evaluation = comparison.evaluate(settings, RUN_DATE, v2)
    assert evaluation["models"]["champion"]["version"] == v1  # the comparison it was promoted on
    assert champion(settings) == (v2, v1)
    assert _tags(settings, v2)["meli.rule"] == "improved"
    assert [h["decision"] for h in decisions.history(settings)] == ["promoted", "promoted"]


def test_an_interrupted_promotion_says_so_on_disk(settings, test_rows, monkeypatch):
    v1 = make_version(settings, test_rows, 0.9)
    comparison.evaluate(settings, RUN_DATE, v1)

    def registry_down(*a, **k):
        raise RuntimeError("registry down")

    monkeypatch.setattr(mlflow.MlflowClient, "set_registered_model_alias", registry_down)
    with pytest.raises(RuntimeError, match="registry down"):
        registry.gate(settings, RUN_DATE, v1)
    decision = settings.run_dir(RUN_DATE) / "evaluation" / "decision.json"
    assert __import__("json").loads(decision.read_text())["decision"] == "promoting"
    monkeypatch.undo()
    d = registry.gate(settings, RUN_DATE, v1)
    assert (d["decision"], d["rule"]) == ("promoted", "first_model")
    assert champion(settings) == (v1, None)


def test_register_retried_reuses_the_version(settings, test_rows):
    v1 = make_version(settings, test_rows, 0.7)
    mv = mlflow.MlflowClient().get_model_version(settings.model_name, v1)
    again = versions.register_challenger(
        settings,
        {"model_uri": mv.source, "run_id": mv.run_id, "model_type": "lookup", "val_macro_recall": 0.0},
        RUN_DATE,
    )
    assert again["version"] == v1
    assert len(mlflow.MlflowClient().search_model_versions(f"name='{settings.model_name}'")) == 1


def test_rollback_failing_halfway_keeps_serving_the_target(settings, test_rows, monkeypatch):
    v1 = make_version(settings, test_rows, 0.7)
    run_gate(settings, v1)
    v2 = make_version(settings, test_rows, 0.9)
    run_gate(settings, v2)
    real = mlflow.MlflowClient.set_registered_model_alias

    def previous_down(self, name, alias, version):
        if alias == "previous":
            raise RuntimeError("registry down")
        return real(self, name, alias, version)

    monkeypatch.setattr(mlflow.MlflowClient, "set_registered_model_alias", previous_down)
    with pytest.raises(RuntimeError):
        registry.rollback(settings)
    assert champion(settings)[0] == v1


def test_history_lists_the_latest_events(settings, test_rows):
    versions = [make_version(settings, test_rows, r) for r in (0.5, 0.6, 0.7)]
    for v in versions:
        run_gate(settings, v)
    registry.rollback(settings)
    hist = decisions.history(settings, limit=2)
    assert [(h["decision"], h["challenger_version"]) for h in hist] == [
        ("promoted", versions[2]),
        ("rollback", versions[1]),
    ]


def test_evaluation_files_are_replaced_whole_or_not_at_all(settings, test_rows, monkeypatch):
    """A writer that dies mid-file (disk full, killed) never leaves a truncated test_predictions.parquet."""
    v1 = make_version(settings, test_rows, 0.8)
    comparison.evaluate(settings, RUN_DATE, v1)
    path = settings.run_dir(RUN_DATE) / "evaluation" / "test_predictions.parquet"
    before = path.read_bytes()

    def half_then_fail(self, target, *a, **kw):
        Path(target).write_bytes(before[: len(before) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", half_then_fail)
    with pytest.raises(OSError, match=f"^no space left on device writing {path}$"):  # named (issue 31 item 4)
        comparison.evaluate(settings, RUN_DATE, v1)
    assert path.read_bytes() == before
    assert not [p.name for p in path.parent.iterdir() if p.name.startswith(".")]


def test_the_gate_lock_is_an_advisory_lock_in_postgres_mode(settings, monkeypatch):
    """MELI_LOCK_URI names Postgres: two holders of the registry lock exclude each other."""
    import threading

    psycopg2 = pytest.importorskip("psycopg2")
    uri = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
    try:
        psycopg2.connect("postgresql://postgres@127.0.0.1:5432/postgres", connect_timeout=3).close()
    except psycopg2.Error:
        pytest.skip("no Postgres on 127.0.0.1:5432")
    from pipelines.core.locks import LockTimeout
    from pipelines.settings import get_settings

    monkeypatch.setenv("MELI_LOCK_URI", uri)
    monkeypatch.setenv("MELI_LOCK_TIMEOUT_S", "0.5")
    s = get_settings()
    inside, release = threading.Event(), threading.Event()

    def hold():
        with records.registry_lock(s):
            inside.set()
            release.wait(10)

    t = threading.Thread(target=hold)
    t.start()
    assert inside.wait(10)
    try:
        with pytest.raises(LockTimeout, match="advisory lock 'meli-gate:"):
            with records.registry_lock(s):
                pass
    finally:
        release.set()
        t.join()
    with records.registry_lock(s):  # released with its holder
        pass
    assert not s.registry_lock_path.exists()  # no lock file in this mode


def _gate_rules(**kw) -> GateRules:
    base = dict(
        min_improvement=0.002,
        min_macro_recall=0.3,
        max_class_drop=0.2,
        max_share_classes_dropped=0.1,
        bootstrap_samples=100,
        min_behaviour_pass=0.0,
    )
    return GateRules(**{**base, **kw})


def test_a_promotion_waits_for_approval_and_the_approval_moves_the_alias(settings, test_rows):
    v1 = make_version(settings, test_rows, 0.7)
    run_gate(settings, v1)
    v2 = make_version(settings, test_rows, 0.9)
    d = run_gate(settings, v2, require_approval=True)
    assert (d["decision"], d["rule"], d["action"]) == ("pending_approval", "improved", "await approval")
    assert champion(settings) == (v1, None)  # nothing moved yet
    assert _tags(settings, v2)["meli.decision"] == "pending_approval"
    assert registry.gate(settings, RUN_DATE, v2, _gate_rules(), require_approval=True) == d  # a retry: same record

    a = registry.respond(settings, v2, approve=True, reason="checked the flips", by="ana", via="cli")
    assert (a["decision"], a["rule"]) == ("promoted", "improved")
    assert a["approval"]["response"] == "approved" and a["approval"]["by"] == "ana"
    assert champion(settings) == (v2, v1)
    tags = _tags(settings, v2)
    assert (tags["meli.decision"], tags["meli.review"], tags["meli.reviewed_by"]) == ("promoted", "approved", "ana")
    assert tags["meli.review_reason"] == "checked the flips"
    on_disk = json.loads((settings.run_dir(RUN_DATE) / "evaluation" / "decision.json").read_text())
    assert on_disk["approval"]["by"] == "ana" and on_disk["gated_at"] == d["decided_at"]
    hist = [(h["decision"], h["challenger_version"], h["review_by"]) for h in decisions.history(settings)]
    assert hist == [("promoted", v1, ""), ("pending_approval", v2, ""), ("promoted", v2, "ana")]
    # the same answer again (a retried approval task) changes nothing; the opposite one is refused
    assert registry.respond(settings, v2, approve=True, by="ana") == a
    with pytest.raises(records.GateError, match="already approved by ana"):
        registry.respond(settings, v2, approve=False, by="bob")


def test_a_rejection_or_a_timeout_keeps_the_champion(settings, test_rows):
    v1 = make_version(settings, test_rows, 0.7)
    run_gate(settings, v1, require_approval=True)
    r = registry.respond(settings, v1, approve=False, reason="want a second night", by="bob")
    assert (r["decision"], r["rule"]) == ("rejected", "approval_rejected")
    assert "rejected by bob: want a second night" in r["reason"]
    assert champion(settings) == (None, None)
    assert _tags(settings, v1)["meli.reviewed_by"] == "bob"
    v2 = make_version(settings, test_rows, 0.8)
    run_gate(settings, v2, require_approval=True)
    t = registry.respond(settings, v2, approve=False, timed_out=True)
    assert (t["decision"], t["rule"], t["approval"]["response"]) == ("rejected", "approval_timeout", "timeout")
    assert champion(settings) == (None, None)
    v3 = make_version(settings, test_rows, 0.8)
    with pytest.raises(records.GateError, match="has no gate decision on record"):  # v2's record is the date's
        registry.respond(settings, v3, approve=True)
    run_gate(settings, v3, require_approval=True, rules=_gate_rules(min_macro_recall=0.95))
    with pytest.raises(records.GateError, match="not pending approval .*'below_floor'"):
        registry.respond(settings, v3, approve=True)


def test_an_approval_on_a_stale_comparison_is_refused(settings, test_rows):
    v1 = make_version(settings, test_rows, 0.7)
    run_gate(settings, v1)
    v2 = make_version(settings, test_rows, 0.9)
    run_gate(settings, v2, require_approval=True)
    assert registry.respond(settings, v2, approve=True, by="ana")["decision"] == "promoted"
    v3 = make_version(settings, test_rows, 1.0)
    run_gate(settings, v3, require_approval=True)
    registry.rollback(settings, reason="incident")  # champion back to v1 after v3 was gated against v2
    with pytest.raises(records.GateError, match="champion moved from 2 to 1"):
        registry.respond(settings, v3, approve=True, by="ana")
    assert champion(settings)[0] == v1


def test_behaviour_rule_rejects_a_model_that_changes_its_mind_with_the_case(settings, test_rows):
    v1 = make_version(settings, test_rows, 1.0)  # exact-title lookup: upper-cased titles are unknown to it
    d = run_gate(settings, v1, rules=_gate_rules(min_behaviour_pass=0.9))
    assert (d["decision"], d["rule"]) == ("rejected", "behaviour_invariance")
    assert "keep their prediction" in d["reason"]
    ev = json.loads((settings.run_dir(RUN_DATE) / "evaluation" / "evaluation.json").read_text())
    inv = ev["behaviour"]["challenger"]["invariance"]
    assert inv["pass_share"] < 0.9 and inv["by_perturbation"]["upper_case"]["changed"] > 0


def test_the_model_card_states_the_versions_metrics(settings, test_rows):
    from pipelines.registry.card import write_card

    v1 = make_version(settings, test_rows, 0.7)
    first = write_card(settings, v1)["markdown"]  # at registration: nothing evaluated yet
    assert "Not evaluated yet" in first and "## Known limits" in first
    run_gate(settings, v1)
    v2 = make_version(settings, test_rows, {c: (0.5 if c == "CAT_03" else 0.9) for c in CLASSES})
    d = run_gate(settings, v2)
    card = write_card(settings, v2)
    md = card["markdown"]
    sections = [ln for ln in md.splitlines() if ln.startswith("## ")]
    assert sections == [
        "## Status",
        "## Data",
        "## Validation (Great Expectations)",
        "## Training",
        "## Evaluation on the frozen test rows",
        "## Per-category recall",
        "## Frequent confusions",
        "## Behavioural checks",
        "## Shadow scoring",
        "## Known limits",
    ]
    tags = _tags(settings, v2)
    assert f"| challenger | {v2} | {float(tags['meli.challenger_macro_recall']):.4f} |" in md
    assert f"| champion | {v1} | {d['champion_macro_recall']:.4f} |" in md
    b = d["bootstrap"]
    assert f"CI [{b['ci_low']:.4f}, {b['ci_high']:.4f}]" in md
    assert "| CAT_03 | 0.5000 |" in md  # the worst category, with its recall
    assert "| CAT_03 | WRONG |" in md  # its mistakes are the most frequent confusion
    assert tags["meli.model_card"] == card["md"] and Path(card["html"]).read_text().startswith("<!doctype html>")
    assert "<table>" in Path(card["html"]).read_text()
    arts = [a.path for a in mlflow.MlflowClient().list_artifacts(_run_of(settings, v2), "model_card")]
    assert sorted(arts) == ["model_card/model_card.html", "model_card/model_card.md"]


def _run_of(settings, version):
    return mlflow.MlflowClient().get_model_version(settings.model_name, version).run_id


def test_the_cli_stops_at_pending_approval_and_registry_approve_answers(settings, test_rows, capsys):
    from pipelines.flows.approval import os_identity
    from pipelines.flows.cli import main

    v1 = make_version(settings, test_rows, 0.7)
    assert main(["promote", "--run-date", RUN_DATE, "--version", v1, "--require-approval"]) == 0
    out = capsys.readouterr().out
    assert f"pending approval: {settings.model_name} v{v1}" in out
    assert "test macro-recall" in out and f"registry approve {v1}" in out
    assert champion(settings) == (None, None)
    assert main(["registry", "card", v1]) == 0
    assert "human review: **pending approval**" in capsys.readouterr().out
    assert main(["registry", "approve", v1, "--reason", "looks right"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["decision"] == "promoted" and d["approval"]["by"] == os_identity() and d["approval"]["via"] == "cli"
    assert champion(settings) == (v1, None)
    assert main(["registry", "reject"]) == 2  # no VERSION: a usage error, nothing done
    assert "needs a VERSION" in capsys.readouterr().err


def test_the_approval_task_applies_a_timeout_as_a_rejection(settings, test_rows):
    """What the scheduler's timeout sweep hands the approval task: the default (Reject), nobody."""
    from datetime import UTC, datetime
    from types import SimpleNamespace

    from pipelines.flows.approval import approval_operator

    v1 = make_version(settings, test_rows, 0.7)
    d = run_gate(settings, v1, require_approval=True)
    op = approval_operator(task_id="approve_promotion", gate_task_id="gate", timeout_h=24)
    assert (op.defaults, op.options, op.response_timeout.total_seconds()) == (["Reject"], ["Approve", "Reject"], 86400)
    context = {
        "ti": SimpleNamespace(xcom_pull=lambda task_ids, key=None: d),
        "dag_run": SimpleNamespace(dag_id="meli_retrain", run_id="manual__x"),
    }
    event = {
        "chosen_options": ["Reject"],
        "params_input": {"reason": ""},
        "responded_at": datetime.now(UTC),
        "responded_by_user": None,
        "timedout": True,
    }
    op.execute_complete(context, event)
    after = json.loads((settings.run_dir(RUN_DATE) / "evaluation" / "decision.json").read_text())
    assert (after["decision"], after["rule"], after["approval"]["response"]) == (
        "rejected",
        "approval_timeout",
        "timeout",
    )
    assert champion(settings) == (None, None)


class KnownLabelsModel(LookupModel):
    """A lookup double that, like our bundles, says which categories it was trained on."""

    def __init__(self, table: dict[str, str], labels: list[str]):
        super().__init__(table)
        import types

        self.bundle = types.SimpleNamespace(labels=list(labels))


def _known_labels_champion(settings, model: KnownLabelsModel) -> str:
    """Register ``model`` and make it the champion (forced); its version."""
    from pipelines.core.tracking import configure

    configure(settings)
    with mlflow.start_run() as run:
        info = mlflow.pyfunc.log_model(name="model", python_model=model, pip_requirements=["mlflow"])
    v1 = versions.register_challenger(
        settings,
        {"model_uri": info.model_uri, "run_id": run.info.run_id, "model_type": "lookup", "val_macro_recall": 0.0},
        RUN_DATE,
    )["version"]
    run_gate(settings, v1, force_promote=True)
    return v1


def test_a_champion_that_never_saw_the_test_categories_is_not_compared_a_person_decides(settings, test_rows):
    """Issue 31 item 8: every test row in a category the champion never saw: its recall is 0 by
    construction, and `improved` would promote on a comparison that means nothing."""
    v1 = _known_labels_champion(settings, KnownLabelsModel({}, ["OLD_SEGMENT_A", "OLD_SEGMENT_B"]))
    v2 = make_version(settings, test_rows, 0.8)
    d = run_gate(settings, v2)
    assert (d["decision"], d["rule"], d["action"]) == ("pending_approval", "incomparable", "await approval")
    assert f"100% of the {len(test_rows)} test rows are in categories champion v{v1} never saw" in d["reason"]
    assert champion(settings) == (v1, None)  # nothing moved: a person decides
    ev = json.loads((settings.run_dir(RUN_DATE) / "evaluation" / "evaluation.json").read_text())
    assert ev["models"]["champion"]["unseen_test_share"] == 1.0
    a = registry.respond(settings, v2, approve=True, reason="new catalog segment", by="ana")
    assert a["decision"] == "promoted" and champion(settings) == (v2, v1)


def test_the_incomparable_rule_applies_above_its_share_only():
    ev = {
        "test_rows": 100,
        "models": {
            "challenger": {"version": "2", "macro_recall": 0.8},
            "champion": {"version": "1", "macro_recall": 0.5, "unseen_test_share": 0.4},
        },
    }
    per_class = {"challenger": {"A": 0.8}, "champion": {"A": 0.5}}
    assert comparison.decide(ev, per_class, _gate_rules(), None)[1] == "improved"
    ev["models"]["champion"]["unseen_test_share"] = 0.6
    promote, rule, why = comparison.decide(ev, per_class, _gate_rules(), None)
    assert (promote, rule) == (True, "incomparable") and "60% of the 100 test rows" in why
    assert comparison.decide(ev, per_class, _gate_rules(max_incomparable_share=0.7), None)[1] == "improved"
    assert comparison.decide(ev, per_class, _gate_rules(), None, force_promote=True)[1] == "force_promote"


def test_a_batch_of_new_categories_is_incomparable_though_the_test_split_is_mostly_old(settings):
    """Audit N3: three earlier partitions in the window and a run-date batch that is 100% categories the
    champion never saw: over the whole test split only 25% are new (under the 50% limit), but the rule
    measures the batch's labelled rows and asks a person; both shares are recorded."""
    old, new = ["OLD_A", "OLD_B"], ["NEW_A", "NEW_B"]
    dates = ["2026-11-17", "2026-11-18", "2026-11-19", RUN_DATE]
    rows = [
        {"listing_id": f"{d}-{c}-{k}", "title": f"{c} item {d} {k}", "category": c, "ingest_date": d}
        for d in dates
        for c in (new if d == RUN_DATE else old)
        for k in range(10)
    ]
    df = pd.DataFrame(rows)
    d = settings.run_dir(RUN_DATE) / "dataset"
    d.mkdir(parents=True)
    df.to_parquet(d / "test.parquet", index=False)
    df[df["ingest_date"] == RUN_DATE].to_parquet(d / "train.parquet", index=False)  # the batch's other rows
    table = {t: c for t, c in zip(df["title"], df["category"]) if c in old}
    v1 = _known_labels_champion(settings, KnownLabelsModel(table, old))
    v2 = make_version(settings, df, 0.9)
    d = run_gate(settings, v2)
    ev = json.loads((settings.run_dir(RUN_DATE) / "evaluation" / "evaluation.json").read_text())
    assert ev["models"]["champion"]["unseen_test_share"] == 0.25  # the whole test split: under the limit
    assert ev["models"]["champion"]["unseen_batch_share"] == 1.0 and ev["batch_rows"] == 40
    assert (d["decision"], d["rule"]) == ("pending_approval", "incomparable"), d["reason"]
    assert "100% of the 40 labelled rows of this run date's batch" in d["reason"]
    assert (d["unseen_batch_share"], d["unseen_test_share"]) == (1.0, 0.25)
    assert champion(settings) == (v1, None)


# ---- issue 35 item 4: the deployment's approval is a floor; who may answer -------------------------
def _decision_on_disk(settings):
    return json.loads((settings.run_dir(RUN_DATE) / "evaluation" / "decision.json").read_text())


def test_the_deployments_approval_is_a_floor_a_run_cannot_lower(settings, test_rows, monkeypatch, capsys):
    """MELI_REQUIRE_APPROVAL=1: a run's require_approval=False plus force_promote (the DAG's Params,
    the CLI's flags) still stops at pending_approval, and no alias moves."""
    from pipelines.flows.cli import main
    from pipelines.flows.retrain import step_gate
    from pipelines.flows.stages import Challenger
    from pipelines.settings import get_settings

    v1 = make_version(settings, test_rows, 0.7)
    assert run_gate(settings, v1)["decision"] == "promoted"  # no approval required yet
    monkeypatch.setenv("MELI_REQUIRE_APPROVAL", "1")
    s = get_settings()
    v2 = make_version(s, test_rows, 0.5)  # worse: only force_promote would promote it
    comparison.evaluate(s, RUN_DATE, v2)
    d = step_gate(s, RUN_DATE, Challenger(version=v2), None, force_promote=True, require_approval=False).to_dict()
    assert (d["decision"], d["rule"], d["action"]) == ("pending_approval", "force_promote", "await approval")
    assert (d["require_approval"], d["approval_required_by"]) == (True, "deployment")
    assert _decision_on_disk(s)["approval_required_by"] == "deployment"
    assert champion(s) == (v1, None)

    v3 = make_version(s, test_rows, 0.5)
    argv = ["promote", "--run-date", RUN_DATE, "--version", v3, "--force-promote", "--no-require-approval"]
    assert main(argv) == 0
    assert f"pending approval: {s.model_name} v{v3}" in capsys.readouterr().out
    assert champion(s) == (v1, None)


def test_a_run_can_add_approval_and_the_record_says_so(settings, test_rows):
    v1 = make_version(settings, test_rows, 0.7)
    d = run_gate(settings, v1, require_approval=True)
    assert (d["decision"], d["approval_required_by"]) == ("pending_approval", "run")
    v2 = make_version(settings, test_rows, 0.2)
    assert run_gate(settings, v2)["approval_required_by"] == ""


def test_the_approvers_are_the_approval_tasks_assigned_users(settings, test_rows, monkeypatch):
    """MELI_APPROVERS becomes the HITL request's assigned_users, without the user who triggered the
    run; an answer by anyone else is not applied (where the auth manager lets everyone answer)."""
    from datetime import UTC, datetime
    from types import SimpleNamespace

    from airflow.providers.standard.operators import hitl
    from airflow.sdk.exceptions import TaskAwaitingInput

    from pipelines.flows.approval import approval_operator

    monkeypatch.setenv("MELI_APPROVERS", "ana, bob ,carla")
    v1 = make_version(settings, test_rows, 0.7)
    d = run_gate(settings, v1, require_approval=True)
    requests = []
    monkeypatch.setattr(hitl, "upsert_hitl_detail", lambda **kw: requests.append(kw))
    op = approval_operator(task_id="approve_promotion", gate_task_id="gate", timeout_h=24)

    def context(triggered_by):
        return {
            "ti": SimpleNamespace(xcom_pull=lambda task_ids, key=None: d),
            "task_instance": SimpleNamespace(id="ti-1"),
            "dag_run": SimpleNamespace(dag_id="meli_retrain", run_id="manual__x", triggering_user_name=triggered_by),
        }

    with pytest.raises(TaskAwaitingInput):
        op.execute(context("bob"))  # bob triggered: ana and carla answer
    assert requests[-1]["assigned_users"] == [{"id": "ana", "name": "ana"}, {"id": "carla", "name": "carla"}]
    with pytest.raises(TaskAwaitingInput):
        op.execute(context(None))  # the nightly schedule: every approver
    assert [u["id"] for u in requests[-1]["assigned_users"]] == ["ana", "bob", "carla"]

    def answer(user):
        return {
            "chosen_options": ["Approve"],
            "params_input": {"reason": "checked"},
            "responded_at": datetime.now(UTC),
            "responded_by_user": {"id": user, "name": user},
        }

    for stranger in ("mallory", "bob"):  # not an approver; the approver who triggered the run
        with pytest.raises(PermissionError, match=f"answer of {stranger} was not applied"):
            op.execute_complete(context("bob"), answer(stranger))
        assert _decision_on_disk(settings)["decision"] == "pending_approval" and champion(settings) == (None, None)
    op.execute_complete(context("bob"), answer("carla"))
    after = _decision_on_disk(settings)
    assert after["decision"] == "promoted" and champion(settings) == (v1, None)
    assert {k: after["approval"][k] for k in ("by", "via", "triggered_by")} == {
        "by": "carla",
        "via": "airflow",
        "triggered_by": "bob",
    }
    assert _tags(settings, v1)["meli.reviewed_by"] == "carla"


def test_who_may_answer_without_a_list_or_with_a_lone_approver(settings, monkeypatch):
    from pipelines.flows.approval import hitl_assignees
    from pipelines.settings import get_settings

    users, why = hitl_assignees(settings, "ana")
    assert users is None and "any user allowed" in why  # no MELI_APPROVERS: Airflow's DAG permissions decide
    monkeypatch.setenv("MELI_APPROVERS", "ana")
    users, why = hitl_assignees(get_settings(), "ana")
    assert users == [{"id": "ana", "name": "ana"}] and "only approver" in why  # never an empty list (= anyone)


def test_the_cli_answers_as_its_os_identity_and_only_an_approver_may(settings, test_rows, monkeypatch, capsys):
    from pipelines.flows.approval import os_identity
    from pipelines.flows.cli import main

    me = os_identity()
    for var in ("USER", "LOGNAME", "USERNAME"):
        monkeypatch.setenv(var, "mallory")  # what getpass.getuser() believes; not who runs the command
    v1 = make_version(settings, test_rows, 0.7)
    run_gate(settings, v1, require_approval=True)
    assert main(["registry", "approve", v1, "--by", "ana"]) == 2  # no free-text identity
    assert f"--by is not accepted: an answer is recorded as the OS login running the command ({me})" in (
        capsys.readouterr().err
    )
    monkeypatch.setenv("MELI_APPROVERS", "ana,bob")
    for action in ("approve", "reject"):
        assert main(["registry", action, v1]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{me} may not approve or reject promotions: not in MELI_APPROVERS" in err
    assert _decision_on_disk(settings)["decision"] == "pending_approval" and champion(settings) == (None, None)
    with pytest.raises(PermissionError):  # the registry refuses it too, whatever calls it
        registry.respond(get_settings_now(), v1, approve=True, by="mallory")
    monkeypatch.setenv("MELI_APPROVERS", f"ana,{me}")
    assert main(["registry", "approve", v1, "--reason", "ok"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert (d["decision"], d["approval"]["by"]) == ("promoted", me) and me != "mallory"
    assert champion(settings) == (v1, None)


def get_settings_now():
    from pipelines.settings import get_settings

    return get_settings()


def test_history_is_the_models_own_and_a_mistyped_model_is_an_error(settings, test_rows, monkeypatch, capsys):
    import dataclasses

    from pipelines.flows.cli import main
    from pipelines.registry.decisions import NoSuchModel

    v1 = make_version(settings, test_rows, 0.7)
    run_gate(settings, v1)
    other = dataclasses.replace(settings, model_name="other-classifier")  # a second model, same store
    w1 = make_version(other, test_rows, 0.8)
    run_gate(other, w1)
    # an event recorded before events named their model: the default model's
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(f"{settings.experiment}-promotions")
    old = client.create_run(exp.experiment_id, tags={"meli.decision": "rollback", "meli.challenger_version": "9"})
    client.set_terminated(old.info.run_id)
    assert [(h["decision"], h["challenger_version"]) for h in decisions.history(settings)] == [
        ("promoted", v1),
        ("rollback", "9"),
    ]
    assert [(h["decision"], h["challenger_version"]) for h in decisions.history(other)] == [("promoted", w1)]
    assert decisions.history(settings, limit=1)[0]["decision"] == "rollback"
    # a mistyped MELI_MODEL_NAME: an error, as `registry status` says, not the real model's events
    typo = dataclasses.replace(settings, model_name="meli-title-clasifier")
    with pytest.raises(NoSuchModel, match="'meli-title-clasifier' does not exist"):
        decisions.history(typo)
    monkeypatch.setenv("MELI_MODEL_NAME", "meli-title-clasifier")
    capsys.readouterr()
    assert main(["registry", "history"]) == 1
    out = capsys.readouterr()
    assert out.out == "" and "registered model 'meli-title-clasifier' does not exist" in out.err


def test_descriptions_and_the_gate_log_read_as_plain_text(settings, test_rows):
    from pipelines.core.tracking import GATE_PENDING
    from pipelines.registry.decisions import decision_note, decision_text
    from pipelines.registry.records import decision_description

    # a CLI retrain: its parent run's description loses "added here" once the decision is added
    v1 = make_version(settings, test_rows, 0.7)  # (and configures MLflow's store)
    with mlflow.start_run() as parent:
        mlflow.set_tag("mlflow.note.content", f"Retraining on the lake as of {RUN_DATE}.{GATE_PENDING}")
    d = run_gate(settings, v1, parent_run_id=parent.info.run_id)
    note = mlflow.MlflowClient().get_run(parent.info.run_id).data.tags["mlflow.note.content"]
    assert note.startswith(f"Retraining on the lake as of {RUN_DATE}.\n\nGate: **PROMOTED**"), note
    assert "added here" not in note and note.endswith("CLI run.")
    description = mlflow.MlflowClient().get_model_version(settings.model_name, v1).description
    assert description.endswith("CLI run.") and "DAG run -" not in description
    assert decision_description({**d, "dag_run_id": "manual__1"}).endswith("DAG run manual__1.")
    # the gate's log line is plain text; the note (Markdown) escapes
    d = {**d, "reason": "macro-recall >= the floor [0.3] * 1"}
    assert "\\" not in decision_text(d) and "macro-recall >= the floor [0.3] * 1" in decision_text(d)
    assert "\\>=" in decision_note(d)
    task = (Path(__file__).resolve().parents[3] / "pipelines" / "flows" / "dag_tasks.py").read_text()
    assert "print(decision_text(d))" in task and "print(decision_note(" not in task  # the gate task's log
