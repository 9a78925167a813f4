"""Champion/challenger gate in the MLflow model registry, with an audit trail and rollback.

* The challenger and the current champion are scored on the same frozen test rows (the champion is
  re-scored, never trusted from an old metric). Macro-recall decides; accuracy, per-class recall
  and a paired-bootstrap CI of the difference are recorded.
* Promotion is one alias move of ``champion``; the old champion keeps ``previous``.
* Every decision (and every rollback) is written as tags on the model version, a JSON + Markdown
  report, and a run in the ``<experiment>-promotions`` MLflow experiment: the promotion history,
  readable from any machine that reaches the tracking server (``python -m pipelines registry history``).
* Every alias move is journaled first (``$MELI_HOME/registry/journal/``): a process killed between the
  move and its record leaves an entry that the next registry command completes (``replay_journal``),
  so the history never misses a change of ``champion``.

This module holds what moves the aliases and records it (``gate``, ``respond``, ``rollback``); the
comparison and its rules are in pipelines/registry/comparison.py, the read-back views (decision reports,
``status``, ``history``) in pipelines/registry/decisions.py, and the client, aliases, lock and version
registration in pipelines/registry/versions.py. Their names are importable from here as before.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from pipelines.core import faults
from pipelines.core.fs import atomic_write_json, read_json
from pipelines.core.tracking import CHAMPION, PREVIOUS, alias_version
from pipelines.registry.comparison import PERSON_DECIDES, decide
from pipelines.registry.records import (
    GateError,
    journal_begin,
    record_decision,
    record_rollback,
    registry_client,
    registry_lock,
    replay_locked,
)
from pipelines.settings import GateRules, Settings

log = logging.getLogger(__name__)


def gate(
    settings: Settings,
    run_date: str,
    challenger_version: str,
    rules: GateRules | None = None,
    force_promote: bool = False,
    dry_run: bool = False,
    dag_run_id: str = "",
    parent_run_id: str | None = None,
    require_approval: bool = False,
    dag_id: str = "",
) -> dict:
    """Decide and (unless dry_run) apply: move ``champion`` to the challenger or leave it. With
    ``require_approval`` a promotion is recorded as ``pending_approval`` and no alias moves until
    ``respond`` (a person, through the Airflow approval task or ``registry approve|reject``).

    The deployment's ``MELI_REQUIRE_APPROVAL`` is a floor: a run (DAG Param, CLI flag) can add approval,
    never remove it, and ``force_promote`` then waits for a person too. The record says who required it
    (``approval_required_by``: "deployment" or "run")."""
    rules = rules or settings.gate
    required_by = "deployment" if settings.require_approval else ("run" if require_approval else "")
    if settings.require_approval and not require_approval:
        log.info("approval required by the deployment (MELI_REQUIRE_APPROVAL): the run's opt-out is ignored")
    client = registry_client(settings)
    eval_dir = settings.run_dir(run_date) / "evaluation"
    evaluation = json.loads((eval_dir / "evaluation.json").read_text())
    if evaluation["models"]["challenger"]["version"] != str(challenger_version):
        raise GateError(
            f"evaluation.json is for version {evaluation['models']['challenger']['version']}, "
            f"not {challenger_version}; re-run evaluate"
        )
    per_class = json.loads((eval_dir / "per_class_recall.json").read_text())
    with registry_lock(settings):  # decide and move the alias with no other gate in between
        replay_locked(settings, client)  # a gate killed before it recorded its move: recorded first
        return _gate_locked(
            settings,
            client,
            run_date,
            challenger_version,
            rules,
            evaluation,
            per_class,
            eval_dir,
            force_promote,
            dry_run,
            dag_run_id,
            parent_run_id,
            required_by,
            dag_id=dag_id,
        )


def _gate_locked(
    settings: Settings,
    client,
    run_date: str,
    challenger_version: str,
    rules: GateRules,
    evaluation: dict,
    per_class: dict,
    eval_dir: Path,
    force_promote: bool,
    dry_run: bool,
    dag_run_id: str,
    parent_run_id: str | None,
    required_by: str = "",
    dag_id: str = "",
) -> dict:
    """``required_by``: who requires a person's approval of a promotion ("deployment", "run"; "" = nobody)."""
    require_approval = bool(required_by)
    name = settings.model_name
    champ_now = alias_version(client, name, CHAMPION)
    champ_now_v = str(champ_now.version) if champ_now else None
    prior = read_json(eval_dir / "decision.json")
    if (
        champ_now_v == str(challenger_version)
        and prior is not None
        and prior.get("challenger_version") == str(challenger_version)
        and prior.get("decision") in ("promoting", "promoted")
    ):  # a retry (or re-run) after this gate moved the alias: finish its record, decide nothing anew
        log.info("v%s was promoted by this gate at %s; completing its record", challenger_version, prior["decided_at"])
        decision = {**prior, "decision": "promoted"}
        record_decision(settings, client, decision, eval_dir, parent_run_id or prior.get("mlflow_run_id") or None)
        return decision
    if (
        prior is not None
        and prior.get("challenger_version") == str(challenger_version)
        and prior.get("champion_at_evaluation", prior.get("champion_version")) == champ_now_v
        and (prior.get("decision") == "pending_approval" or prior.get("approval"))
    ):  # a retry of a gate that asked for approval, or one already answered: the same decision stands
        log.info("v%s: %s at %s; not deciding again", challenger_version, prior["decision"], prior["decided_at"])
        record_decision(settings, client, prior, eval_dir, parent_run_id or prior.get("mlflow_run_id") or None)
        return prior
    if champ_now_v not in (evaluation.get("champion_at_evaluation"), str(challenger_version)):
        raise GateError(
            f"champion moved from {evaluation.get('champion_at_evaluation')} to {champ_now_v} since "
            "evaluation; re-run evaluate so both are compared on the same rows"
        )
    boot = _bootstrap(settings, evaluation, rules)
    promote, rule, why = decide(evaluation, per_class, rules, boot, force_promote)
    if promote and champ_now_v == str(challenger_version):
        promote, rule, why = False, "already_champion", "the challenger already holds the champion alias"
    pending = promote and not dry_run and (require_approval or rule in PERSON_DECIDES)
    action = ("promote" if promote else "reject") if not dry_run else "none (dry run)"
    decision = {
        "decision": "pending_approval"
        if pending
        else ("promoted" if promote and not dry_run else ("would_promote" if promote else "rejected")),
        "action": "await approval" if pending else action,
        "rule": rule,
        "reason": why,
        "model_name": name,
        "challenger_version": str(challenger_version),
        **_scores(evaluation),
        "bootstrap": boot,
        "test_rows": evaluation["test_rows"],
        "rules": asdict(rules),
        "force_promote": force_promote,
        "dry_run": dry_run,
        "require_approval": require_approval,
        "approval_required_by": required_by,
        "champion_at_evaluation": champ_now_v,
        "run_date": run_date,
        "dag_run_id": dag_run_id,
        "dag_id": dag_id,  # the DAG of that run: its pages and note answer for that DAG only
        "mlflow_run_id": parent_run_id or "",
        "data_manifest": _manifest_ref(settings, run_date),
        "decided_at": datetime.now(UTC).isoformat(),
    }
    if pending:
        log.info("%s v%s would be promoted (%s): waiting for a person to approve", name, challenger_version, why)
    elif promote and not dry_run:
        _move_champion(client, name, champ_now, str(challenger_version), decision, eval_dir, "gate", settings)
    else:
        log.info("%s: %s v%s (%s)", decision["decision"], name, challenger_version, why)
    record_decision(settings, client, decision, eval_dir, parent_run_id)
    return decision


def _bootstrap(settings: Settings, evaluation: dict, rules: GateRules) -> dict | None:
    """The paired-bootstrap CI of the macro-recall difference (None without a champion)."""
    import pandas as pd

    from pipelines.model.metrics import paired_bootstrap

    boot = None
    if "champion" in evaluation["models"]:
        preds = pd.read_parquet(evaluation["predictions"])
        cmp_ = paired_bootstrap(
            preds["category"].tolist(),
            preds["challenger"].tolist(),
            preds["champion"].tolist(),
            samples=rules.bootstrap_samples,
            seed=settings.seed,
        )
        boot = asdict(cmp_)
    return boot


def _scores(evaluation: dict) -> dict:
    """The decision's figures from the evaluation: both versions' macro-recall and accuracy, the delta,
    and the champion's unseen-category shares (the ``incomparable`` rule's evidence)."""
    return {
        "champion_version": evaluation["models"].get("champion", {}).get("version"),
        "challenger_macro_recall": evaluation["models"]["challenger"]["macro_recall"],
        "champion_macro_recall": evaluation["models"].get("champion", {}).get("macro_recall"),
        "challenger_accuracy": evaluation["models"]["challenger"]["accuracy"],
        "champion_accuracy": evaluation["models"].get("champion", {}).get("accuracy"),
        "delta": (evaluation["models"]["challenger"]["macro_recall"] - evaluation["models"]["champion"]["macro_recall"])
        if "champion" in evaluation["models"]
        else None,
        # shares of rows in categories the champion never saw: the run date's batch, the test split
        "unseen_batch_share": evaluation["models"].get("champion", {}).get("unseen_batch_share"),
        "unseen_test_share": evaluation["models"].get("champion", {}).get("unseen_test_share"),
    }


def _move_champion(
    client, name: str, champ_now, version: str, decision: dict, eval_dir: Path, step: str, settings: Settings
) -> None:
    """Move ``champion`` to ``version`` (and ``previous`` to the old champion) after writing the
    decision as "promoting", so a retry after the moves completes the record instead of deciding again
    against a champion that is now the challenger itself; and after writing the move in the journal,
    so the next start of any registry command records it if this process dies before ``record_decision``."""
    champ_now_v = str(champ_now.version) if champ_now else None
    atomic_write_json(eval_dir / "decision.json", {**decision, "decision": "promoting"})
    faults.point(f"{step}.decided")
    again = alias_version(client, name, CHAMPION)  # re-checked right before the move
    if (str(again.version) if again else None) != champ_now_v:
        raise GateError(
            f"champion moved from {champ_now_v} to {again.version if again else None} outside the gate "
            "while deciding; re-run evaluate so both are compared on the same rows"
        )
    # 'previous' first: if the champion move then fails, the champion is still the old one.
    journal_begin(settings, step, champ_now_v, {**decision, "decision": "promoted"}, eval_dir)
    if champ_now is not None:
        client.set_registered_model_alias(name, PREVIOUS, champ_now.version)
        faults.point(f"{step}.previous_moved")
    client.set_registered_model_alias(name, CHAMPION, version)
    faults.point(f"{step}.champion_moved")
    log.info("promoted %s v%s to champion (previous: %s)", name, version, champ_now_v)


def respond(
    settings: Settings,
    version: str,
    approve: bool,
    reason: str = "",
    by: str = "",
    via: str = "cli",
    timed_out: bool = False,
    triggered_by: str = "",
) -> dict:
    """A person's answer to a promotion pending approval: approve moves the alias (if the champion is
    still the one it was compared with), reject or a timeout keeps the champion. Who, when, why and
    through what are recorded on the version, in the decision JSON and in the promotion history
    (``triggered_by``: the user who triggered the run, when known). ``by`` must be in
    ``MELI_APPROVERS`` when that is set (PermissionError), unless nobody answered in time."""
    if not timed_out:
        from pipelines.registry.gate import check_approver

        check_approver(settings, by)
    client = registry_client(settings)
    name, version = settings.model_name, str(version)
    mv = client.get_model_version(name, version)  # fails clearly if it does not exist
    run_date = mv.tags.get("meli.run_date", "")
    eval_dir = settings.run_dir(run_date) / "evaluation"
    response = "approved" if approve else ("timeout" if timed_out else "rejected")
    with registry_lock(settings):
        replay_locked(settings, client)
        prior = read_json(eval_dir / "decision.json") if run_date else None
        if prior is None or prior.get("challenger_version") != version:
            raise GateError(f"{name} v{version} has no gate decision on record (run date {run_date or '?'})")
        champ = alias_version(client, name, CHAMPION)
        champ_v = str(champ.version) if champ else None
        answered = prior.get("approval") or {}
        if prior["decision"] == "promoting" and answered:  # approved, then interrupted: finish that answer
            if champ_v != version:  # before (or between) the alias moves
                if champ_v != prior.get("champion_at_evaluation"):
                    raise GateError(f"champion moved to {champ_v} while v{version}'s approval was applied")
                _move_champion(client, name, champ, version, prior, eval_dir, "approval", settings)
            d = {**prior, "decision": "promoted"}
            record_decision(settings, client, d, eval_dir, prior.get("mlflow_run_id") or None)
            return d
        if answered:
            if answered.get("response") == response:  # the same answer again (a retried task): no-op
                return prior
            raise GateError(
                f"v{version} was already {answered['response']} by {answered.get('by')} at {answered.get('at')}"
            )
        if prior["decision"] != "pending_approval":
            raise GateError(
                f"v{version} is not pending approval (decision {prior['decision']!r}, rule {prior['rule']!r})"
            )
        now = datetime.now(UTC).isoformat()
        who = by or ("nobody (timeout)" if timed_out else "unknown")
        d = {
            **prior,
            "approval": {
                "response": response,
                "by": who,
                "at": now,
                "reason": reason,
                "via": via,
                **({"triggered_by": triggered_by} if triggered_by else {}),
            },
            "gated_at": prior["decided_at"],
            "decided_at": now,
        }
        if approve:
            if champ_v != prior.get("champion_at_evaluation"):
                raise GateError(
                    f"champion moved from {prior.get('champion_at_evaluation')} to {champ_v} since v{version} was "
                    "gated: the comparison it would be approved on is stale; run promote again"
                )
            said = f": {reason}" if reason else ""
            d.update(decision="promoted", action="promote", reason=f"{prior['reason']}; approved by {who}{said}")
            _move_champion(client, name, champ, version, d, eval_dir, "approval", settings)
        else:
            rule = "approval_timeout" if timed_out else "approval_rejected"
            what = "no answer in time" if timed_out else f"rejected by {who}"
            d.update(decision="rejected", action="reject", rule=rule, reason=f"{what}: {reason or 'no reason given'}")
            log.info("%s v%s %s; the champion stays v%s", name, version, what, champ_v)
        record_decision(settings, client, d, eval_dir, prior.get("mlflow_run_id") or None)
    return d


def _manifest_ref(settings: Settings, run_date: str) -> str:
    p = settings.run_dir(run_date) / "dataset" / "dataset.json"
    if not p.exists():
        return ""
    info = json.loads(p.read_text())
    return ";".join(f"{x['ingest_date']}:{','.join(s['sha256'][:12] for s in x['sources'])}" for x in info["lineage"])[
        :4000
    ]


# ------------------------------------------------------------------------------------------
# Operator commands (status and history: pipelines/registry/decisions.py)
# ------------------------------------------------------------------------------------------
def rollback(settings: Settings, to_version: str | None = None, reason: str = "operator rollback") -> dict:
    """Move ``champion`` back to ``previous`` (or ``to_version``); the old champion becomes ``previous``."""
    client = registry_client(settings)
    with registry_lock(settings):
        replay_locked(settings, client)
        return _rollback_locked(settings, client, to_version, reason)


def _rollback_locked(settings: Settings, client, to_version: str | None, reason: str) -> dict:
    name = settings.model_name
    current = alias_version(client, name, CHAMPION)
    if to_version is None:
        prev = alias_version(client, name, PREVIOUS)
        if prev is None:
            raise GateError(f"{name} has no '{PREVIOUS}' alias; give a version to roll back to")
        to_version = str(prev.version)
    client.get_model_version(name, str(to_version))  # fails clearly if it does not exist
    if current is not None and str(current.version) == str(to_version):
        raise GateError(f"version {to_version} is already the champion")
    d = {
        "decision": "rollback",
        "rule": "rollback",
        "reason": reason,
        "model_name": name,
        "challenger_version": str(to_version),
        "champion_version": str(current.version) if current else None,
        "challenger_macro_recall": None,
        "champion_macro_recall": None,
        "delta": None,
        "decided_at": datetime.now(UTC).isoformat(),
        "dag_run_id": "",
        "run_date": "",
    }
    journal_begin(settings, "rollback", d["champion_version"], d)
    # 'champion' first: if the second move fails, serving is already right and the target is not lost
    # (moving 'previous' first would leave both aliases on the version being rolled back from)
    client.set_registered_model_alias(name, CHAMPION, str(to_version))
    faults.point("rollback.champion_moved")
    if current is not None:
        client.set_registered_model_alias(name, PREVIOUS, current.version)
    record_rollback(settings, client, d)
    log.info("rolled back %s champion %s -> %s", name, d["champion_version"], to_version)
    return d


def check_approver(settings: Settings, who: str) -> None:
    """Refuse (PermissionError, one line) an answer by someone not in ``MELI_APPROVERS`` when it is set."""
    if settings.approvers and who not in settings.approvers:
        raise PermissionError(
            f"{who or 'an unknown user'} may not approve or reject promotions: not in MELI_APPROVERS "
            f"({', '.join(settings.approvers)})"
        )
