"""Champion/challenger gate in the MLflow model registry, with an audit trail and rollback.

* The challenger and the current champion are scored on the same frozen test rows (the champion is
  re-scored, never trusted from an old metric). Macro-recall decides; accuracy, per-class recall
  and a paired-bootstrap CI of the difference are recorded.
* Promotion is one alias move of ``champion``; the old champion keeps ``previous``.
* Every decision (and every rollback) is written as tags on the model version, a JSON + Markdown
  report, and a run in the ``<experiment>-promotions`` MLflow experiment: the promotion history,
  readable from any machine that reaches the tracking server (``python -m pipelines registry history``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path

from pipelines import faults
from pipelines.lake import atomic_file, atomic_write_bytes, atomic_write_json
from pipelines.locks import advisory_lock, file_lock
from pipelines.settings import GateRules, Settings

log = logging.getLogger(__name__)

CHAMPION, PREVIOUS = "champion", "previous"


class GateError(RuntimeError):
    pass


def _client(settings: Settings):
    import mlflow

    from pipelines.tracking import configure

    configure(settings)
    return mlflow.MlflowClient()


def _alias_version(client, name: str, alias: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        code = getattr(exc, "error_code", "")
        if code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE") or "not found" in str(exc).lower():
            return None
        raise


def register_challenger(settings: Settings, trained: dict, run_date: str, dag_run_id: str = "") -> dict:
    """Register the run's best model as a new version of the model (not yet champion)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = _client(settings)
    try:
        client.get_registered_model(settings.model_name)
    except MlflowException:
        try:
            client.create_registered_model(
                settings.model_name,
                description="MeLi listing title -> category. "
                "Alias 'champion' serves; 'previous' is the rollback target.",
            )
        except MlflowException:
            pass  # created concurrently
    mv = _registered_from(client, settings.model_name, trained)
    if mv is not None:  # a retried or cleared register task: the same trained model, the same version
        log.info(
            "%s version %s already holds %s; not registering it again",
            settings.model_name,
            mv.version,
            trained["model_uri"],
        )
    else:
        mv = mlflow.register_model(trained["model_uri"], settings.model_name)
    tags = {
        "meli.model_type": trained["model_type"],
        "meli.run_date": run_date,
        "meli.val_macro_recall": str(trained["val_macro_recall"]),
        "meli.dag_run_id": dag_run_id,
        "meli.decision": "pending",
    }
    if trained.get("members"):
        tags["meli.members"] = "+".join(trained["members"])
    for key in ("mode", "parent_version", "full_run_date"):  # warm-start lineage (pipelines/warm.py)
        if trained.get(key):
            tags[f"meli.{key}"] = str(trained[key])
    dataset_info = _read_json(settings.run_dir(run_date) / "dataset" / "dataset.json") or {}
    if dataset_info.get("data_version"):  # the lake snapshot it trained on (readable while kept)
        tags["meli.data_version"] = dataset_info["data_version"]
        tags["meli.lake_versions"] = ",".join(
            f"{d}@v{v}" for d, v in sorted(dataset_info.get("lake_versions", {}).items())
        )[:4000]
    for k, v in tags.items():
        client.set_model_version_tag(settings.model_name, mv.version, k, v)
    log.info("registered %s version %s from %s", settings.model_name, mv.version, trained["model_uri"])
    return {
        "name": settings.model_name,
        "version": str(mv.version),
        "run_id": trained["run_id"],
        "model_type": trained["model_type"],
        "members": list(trained.get("members") or []),
        "val_macro_recall": trained["val_macro_recall"],
    }


def _registered_from(client, name: str, trained: dict):
    """The version already registered from this training run's model, if any."""
    try:
        versions = client.search_model_versions(f"name='{name}' and run_id='{trained['run_id']}'")
    except Exception as exc:  # a registry that cannot filter: register (at worst a duplicate version)
        log.warning("could not look for an existing version of run %s: %s", trained["run_id"], exc)
        return None
    same = [v for v in versions if v.source == trained["model_uri"]]
    return min(same, key=lambda v: int(v.version)) if same else None


def predict_titles(model_uri: str, titles: list[str]) -> list[str]:
    return _predict(_load_model(model_uri), titles)


def _load_model(model_uri: str):
    import mlflow

    return mlflow.pyfunc.load_model(model_uri)


def _predict(model, titles: list[str]) -> list[str]:
    import pandas as pd

    return model.predict(pd.DataFrame({"title": titles}))["predicted_category"].astype(str).tolist()


def _column_values(dataset_dir: Path, split: str, column: str) -> set[str]:
    import pyarrow.parquet as pq

    path = dataset_dir / f"{split}.parquet"
    if not path.exists() or column not in pq.read_schema(path).names:
        return set()
    return {str(x) for x in pq.read_table(path, columns=[column]).column(0).unique().to_pylist() if x}


def _behaviour(settings: Settings, run_date: str, model, titles: list[str]) -> dict:
    """Behavioural checks of a loaded model (pipelines/behaviour.py): invariance on a sample of the
    test titles, and the reviewed minimum-function cases of its categories and training languages."""
    from pipelines.behaviour import run_checks

    dataset = settings.run_dir(run_date) / "dataset"
    try:
        labels = {str(x) for x in model.unwrap_python_model().bundle.labels}
    except AttributeError:  # not one of our bundles: the categories of its training split
        labels = _column_values(dataset, "train", "category") or _column_values(dataset, "test", "category")
    languages = _column_values(dataset, "train", "language") or _column_values(dataset, "test", "language")
    out = run_checks(
        lambda ts: _predict(model, ts),
        titles,
        labels,
        languages,
        sample=settings.gate.behaviour_sample,
        seed=settings.seed,
    )
    inv, mf = out["invariance"], out["min_function"]
    log.info(
        "behavioural checks: invariance %.1f%% of %d titles; minimum-function %s of %s applicable cases",
        100 * inv["pass_share"],
        inv["rows"],
        mf.get("passed"),
        mf.get("applicable"),
    )
    return out


def evaluate(settings: Settings, run_date: str, challenger_version: str) -> dict:
    """Score the challenger and the current champion on this run's frozen test rows."""
    from pipelines.evaluate import accuracy, macro_recall, per_class_recall
    from pipelines.features import read_split

    client = _client(settings)
    name = settings.model_name
    champ = _alias_version(client, name, CHAMPION)
    out_dir = settings.run_dir(run_date) / "evaluation"
    out_dir.mkdir(parents=True, exist_ok=True)
    prior = _read_json(out_dir / "evaluation.json")
    if (
        champ is not None
        and str(champ.version) == str(challenger_version)
        and prior is not None
        and prior["models"]["challenger"]["version"] == str(challenger_version)
    ):  # re-run after the promotion: keep the comparison it was promoted on (re-scoring now has no champion)
        log.info("v%s already holds %r: keeping the evaluation it was gated on", challenger_version, CHAMPION)
        return prior
    test = read_split(settings.run_dir(run_date) / "dataset", "test")
    if test.empty:
        raise GateError(f"the test split of {run_date} is empty; nothing to compare on")
    titles, y = test["title"].tolist(), test["category"].astype(str).tolist()
    models = {"challenger": str(challenger_version)}
    if champ is not None and str(champ.version) != str(challenger_version):
        models["champion"] = str(champ.version)
    result = {"run_date": run_date, "test_rows": len(y), "test_categories": len(set(y)), "models": {}}
    preds = {"listing_id": test["listing_id"].tolist(), "category": y}
    for role, version in models.items():
        model = _load_model(f"models:/{name}/{version}")
        pred = _predict(model, titles)
        preds[role] = pred
        if role == "challenger":
            result["behaviour"] = {"challenger": _behaviour(settings, run_date, model, titles)}
        result["models"][role] = {
            "version": version,
            "macro_recall": macro_recall(y, pred),
            "accuracy": accuracy(y, pred),
        }
        log.info(
            "%s v%s on %d test rows: macro-recall %.4f", role, version, len(y), result["models"][role]["macro_recall"]
        )
    import pandas as pd

    with atomic_file(out_dir / "test_predictions.parquet") as tmp:
        pd.DataFrame(preds).to_parquet(tmp, index=False)
    recalls = {role: per_class_recall(y, preds[role]) for role in models}
    atomic_write_json(out_dir / "per_class_recall.json", recalls)
    result["predictions"] = str(out_dir / "test_predictions.parquet")
    result["champion_at_evaluation"] = models.get("champion")
    atomic_write_json(out_dir / "evaluation.json", result)
    return result


def decide(
    evaluation: dict, per_class: dict, rules: GateRules, bootstrap: dict | None, force_promote: bool = False
) -> tuple[bool, str, str]:
    """(promote?, rule, explanation) from the evaluation and the rules. Pure: unit-testable."""
    ch = evaluation["models"]["challenger"]["macro_recall"]
    champ = evaluation["models"].get("champion")
    if force_promote:
        return True, "force_promote", "operator forced the promotion"
    if ch < rules.min_macro_recall:
        return False, "below_floor", f"challenger macro-recall {ch:.4f} < floor {rules.min_macro_recall}"
    behaviour = (evaluation.get("behaviour") or {}).get("challenger") or {}
    for check, what in (
        ("invariance", "test titles keep their prediction when case, accents, spaces or punctuation change"),
        ("min_function", "reviewed minimum-function cases are predicted right"),
    ):
        share = (behaviour.get(check) or {}).get("pass_share")
        if share is not None and share < rules.min_behaviour_pass:
            return (
                False,
                f"behaviour_{check}",
                f"only {share:.1%} of {what} (rule: >= {rules.min_behaviour_pass:.0%})",
            )
    if champ is None:
        return True, "first_model", f"no champion yet and challenger {ch:.4f} >= floor {rules.min_macro_recall}"
    a, b = per_class["challenger"], per_class["champion"]
    dropped = [c for c in a if b.get(c, 0.0) - a[c] > rules.max_class_drop]
    share = len(dropped) / max(1, len(a))
    if share > rules.max_share_classes_dropped:
        return (
            False,
            "class_guardrail",
            (
                f"{len(dropped)} of {len(a)} categories ({share:.1%}) lose more than {rules.max_class_drop:.2f} recall "
                f"(limit {rules.max_share_classes_dropped:.1%}), e.g. {sorted(dropped)[:5]}"
            ),
        )
    delta = ch - champ["macro_recall"]
    if delta >= rules.min_improvement:
        return (
            True,
            "improved",
            f"challenger {ch:.4f} - champion {champ['macro_recall']:.4f} = {delta:+.4f} >= {rules.min_improvement}",
        )
    return (
        False,
        "not_better",
        f"challenger {ch:.4f} - champion {champ['macro_recall']:.4f} = {delta:+.4f} < {rules.min_improvement}",
    )


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
) -> dict:
    """Decide and (unless dry_run) apply: move ``champion`` to the challenger or leave it. With
    ``require_approval`` a promotion is recorded as ``pending_approval`` and no alias moves until
    ``respond`` (a person, through the Airflow approval task or ``registry approve|reject``)."""
    rules = rules or settings.gate
    client = _client(settings)
    eval_dir = settings.run_dir(run_date) / "evaluation"
    evaluation = json.loads((eval_dir / "evaluation.json").read_text())
    if evaluation["models"]["challenger"]["version"] != str(challenger_version):
        raise GateError(
            f"evaluation.json is for version {evaluation['models']['challenger']['version']}, "
            f"not {challenger_version}; re-run evaluate"
        )
    per_class = json.loads((eval_dir / "per_class_recall.json").read_text())
    with registry_lock(settings):  # decide and move the alias with no other gate in between
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
            require_approval,
        )


@contextmanager
def registry_lock(settings: Settings) -> Iterator[None]:
    """One gate (or rollback) of this model at a time: an advisory lock in Postgres when
    MELI_LOCK_URI names one (writers on several hosts), else a lock file beside the SQLite store
    (or under MELI_HOME)."""
    what = f"the registry of {settings.model_name}"
    if settings.lock_uri.startswith("postgresql"):
        lock = advisory_lock(settings.lock_uri, f"meli-gate:{settings.model_name}", settings.lock_timeout_s, what)
    else:
        lock = file_lock(settings.registry_lock_path, settings.lock_timeout_s, what)
    with lock:
        yield


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
    require_approval: bool = False,
) -> dict:
    import pandas as pd

    from pipelines.evaluate import paired_bootstrap

    name = settings.model_name
    champ_now = _alias_version(client, name, CHAMPION)
    champ_now_v = str(champ_now.version) if champ_now else None
    prior = _read_json(eval_dir / "decision.json")
    if (
        champ_now_v == str(challenger_version)
        and prior is not None
        and prior.get("challenger_version") == str(challenger_version)
        and prior.get("decision") in ("promoting", "promoted")
    ):  # a retry (or re-run) after this gate moved the alias: finish its record, decide nothing anew
        log.info("v%s was promoted by this gate at %s; completing its record", challenger_version, prior["decided_at"])
        decision = {**prior, "decision": "promoted"}
        _record(settings, client, decision, eval_dir, parent_run_id or prior.get("mlflow_run_id") or None)
        return decision
    if (
        prior is not None
        and prior.get("challenger_version") == str(challenger_version)
        and prior.get("champion_at_evaluation", prior.get("champion_version")) == champ_now_v
        and (prior.get("decision") == "pending_approval" or prior.get("approval"))
    ):  # a retry of a gate that asked for approval, or one already answered: the same decision stands
        log.info("v%s: %s at %s; not deciding again", challenger_version, prior["decision"], prior["decided_at"])
        _record(settings, client, prior, eval_dir, parent_run_id or prior.get("mlflow_run_id") or None)
        return prior
    if champ_now_v not in (evaluation.get("champion_at_evaluation"), str(challenger_version)):
        raise GateError(
            f"champion moved from {evaluation.get('champion_at_evaluation')} to {champ_now_v} since "
            "evaluation; re-run evaluate so both are compared on the same rows"
        )
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
    promote, rule, why = decide(evaluation, per_class, rules, boot, force_promote)
    if promote and champ_now_v == str(challenger_version):
        promote, rule, why = False, "already_champion", "the challenger already holds the champion alias"
    pending = promote and not dry_run and require_approval
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
        "champion_version": evaluation["models"].get("champion", {}).get("version"),
        "challenger_macro_recall": evaluation["models"]["challenger"]["macro_recall"],
        "champion_macro_recall": evaluation["models"].get("champion", {}).get("macro_recall"),
        "challenger_accuracy": evaluation["models"]["challenger"]["accuracy"],
        "champion_accuracy": evaluation["models"].get("champion", {}).get("accuracy"),
        "delta": (evaluation["models"]["challenger"]["macro_recall"] - evaluation["models"]["champion"]["macro_recall"])
        if "champion" in evaluation["models"]
        else None,
        "bootstrap": boot,
        "test_rows": evaluation["test_rows"],
        "rules": asdict(rules),
        "force_promote": force_promote,
        "dry_run": dry_run,
        "require_approval": require_approval,
        "champion_at_evaluation": champ_now_v,
        "run_date": run_date,
        "dag_run_id": dag_run_id,
        "mlflow_run_id": parent_run_id or "",
        "data_manifest": _manifest_ref(settings, run_date),
        "decided_at": datetime.now(UTC).isoformat(),
    }
    if pending:
        log.info("%s v%s would be promoted (%s): waiting for a person to approve", name, challenger_version, why)
    elif promote and not dry_run:
        _move_champion(client, name, champ_now, str(challenger_version), decision, eval_dir, "gate")
    else:
        log.info("%s: %s v%s (%s)", decision["decision"], name, challenger_version, why)
    _record(settings, client, decision, eval_dir, parent_run_id)
    return decision


def _move_champion(client, name: str, champ_now, version: str, decision: dict, eval_dir: Path, step: str) -> None:
    """Move ``champion`` to ``version`` (and ``previous`` to the old champion) after writing the
    decision as "promoting", so a retry after the moves completes the record instead of deciding again
    against a champion that is now the challenger itself."""
    champ_now_v = str(champ_now.version) if champ_now else None
    atomic_write_json(eval_dir / "decision.json", {**decision, "decision": "promoting"})
    faults.point(f"{step}.decided")
    again = _alias_version(client, name, CHAMPION)  # re-checked right before the move
    if (str(again.version) if again else None) != champ_now_v:
        raise GateError(
            f"champion moved from {champ_now_v} to {again.version if again else None} outside the gate "
            "while deciding; re-run evaluate so both are compared on the same rows"
        )
    # 'previous' first: if the champion move then fails, the champion is still the old one.
    if champ_now is not None:
        client.set_registered_model_alias(name, PREVIOUS, champ_now.version)
        faults.point(f"{step}.previous_moved")
    client.set_registered_model_alias(name, CHAMPION, version)
    log.info("promoted %s v%s to champion (previous: %s)", name, version, champ_now_v)


def respond(
    settings: Settings,
    version: str,
    approve: bool,
    reason: str = "",
    by: str = "",
    via: str = "cli",
    timed_out: bool = False,
) -> dict:
    """A person's answer to a promotion pending approval: approve moves the alias (if the champion is
    still the one it was compared with), reject or a timeout keeps the champion. Who, when, why and
    through what are recorded on the version, in the decision JSON and in the promotion history."""
    client = _client(settings)
    name, version = settings.model_name, str(version)
    mv = client.get_model_version(name, version)  # fails clearly if it does not exist
    run_date = mv.tags.get("meli.run_date", "")
    eval_dir = settings.run_dir(run_date) / "evaluation"
    response = "approved" if approve else ("timeout" if timed_out else "rejected")
    with registry_lock(settings):
        prior = _read_json(eval_dir / "decision.json") if run_date else None
        if prior is None or prior.get("challenger_version") != version:
            raise GateError(f"{name} v{version} has no gate decision on record (run date {run_date or '?'})")
        champ = _alias_version(client, name, CHAMPION)
        champ_v = str(champ.version) if champ else None
        answered = prior.get("approval") or {}
        if prior["decision"] == "promoting" and answered:  # approved, then interrupted: finish that answer
            if champ_v != version:  # before (or between) the alias moves
                if champ_v != prior.get("champion_at_evaluation"):
                    raise GateError(f"champion moved to {champ_v} while v{version}'s approval was applied")
                _move_champion(client, name, champ, version, prior, eval_dir, "approval")
            d = {**prior, "decision": "promoted"}
            _record(settings, client, d, eval_dir, prior.get("mlflow_run_id") or None)
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
            "approval": {"response": response, "by": who, "at": now, "reason": reason, "via": via},
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
            _move_champion(client, name, champ, version, d, eval_dir, "approval")
        else:
            rule = "approval_timeout" if timed_out else "approval_rejected"
            what = "no answer in time" if timed_out else f"rejected by {who}"
            d.update(decision="rejected", action="reject", rule=rule, reason=f"{what}: {reason or 'no reason given'}")
            log.info("%s v%s %s; the champion stays v%s", name, version, what, champ_v)
        _record(settings, client, d, eval_dir, prior.get("mlflow_run_id") or None)
    return d


def _run_link_path(settings: Settings, run_id: str) -> Path:
    import re

    return settings.home / "registry" / "by_run" / (re.sub(r"[^A-Za-z0-9_.-]+", "_", run_id) + ".json")


def decision_for_run(settings: Settings, run_id: str) -> dict | None:
    """{"decision": ..., "markdown": ..., "path": ...} of the gate decision a DAG run recorded."""
    link = _read_json(_run_link_path(settings, run_id))
    if not link or not Path(link["decision_json"]).exists():
        return None
    d = json.loads(Path(link["decision_json"]).read_text())
    if d.get("dag_run_id") != run_id:  # the date was gated again by another run since
        return None
    md = Path(link["decision_md"])
    return {"decision": d, "markdown": md.read_text() if md.exists() else _markdown(d), "path": str(md)}


def decision_note(d: dict) -> str:
    """The DAG run's note: the decision in a few Markdown lines (rule, both macro-recalls, the CI)."""

    def f4(x):
        return "n/a" if x is None else f"{x:.4f}"

    b = d.get("bootstrap") or {}
    ci = f"[{f4(b.get('ci_low'))}, {f4(b.get('ci_high'))}]" if b else "n/a"
    return (
        f"**{d['decision'].upper()}** v{d['challenger_version']} by rule `{d['rule']}`: {d['reason']}\n\n"
        f"challenger macro-recall {f4(d['challenger_macro_recall'])}, champion "
        f"{f4(d['champion_macro_recall'])} (v{d['champion_version'] or '-'}), delta {f4(d['delta'])}, "
        f"95% CI {ci}; {d['test_rows']} test rows"
    )[:1000]


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def _manifest_ref(settings: Settings, run_date: str) -> str:
    p = settings.run_dir(run_date) / "dataset" / "dataset.json"
    if not p.exists():
        return ""
    info = json.loads(p.read_text())
    return ";".join(f"{x['ingest_date']}:{','.join(s['sha256'][:12] for s in x['sources'])}" for x in info["lineage"])[
        :4000
    ]


def _markdown(d: dict) -> str:
    def f(x):
        return "n/a" if x is None else (f"{x:.4f}" if isinstance(x, float) else str(x))

    b = d.get("bootstrap") or {}
    return (
        "\n".join(
            [
                f"# {d['model_name']} v{d['challenger_version']}: {d['decision'].upper()}",
                "",
                f"- rule: `{d['rule']}` — {d['reason']}",
                f"- run date: {d['run_date']}, DAG run: {d['dag_run_id'] or 'n/a'}, decided at {d['decided_at']}",
                f"- test rows: {d['test_rows']}",
                "",
                "| | version | macro-recall | accuracy |",
                "|---|---|---|---|",
                f"| challenger | {d['challenger_version']} | {f(d['challenger_macro_recall'])} "
                f"| {f(d['challenger_accuracy'])} |",
                f"| champion | {f(d['champion_version'])} | {f(d['champion_macro_recall'])} "
                f"| {f(d['champion_accuracy'])} |",
                "",
                f"- delta: {f(d['delta'])}; 95% paired bootstrap CI: [{f(b.get('ci_low'))}, {f(b.get('ci_high'))}]",
                f"- force_promote: {d['force_promote']}, dry_run: {d['dry_run']}, "
                f"require_approval: {d.get('require_approval', False)}",
                *(
                    [
                        f"- review: **{r['response']}** by {r['by']} at {r['at']} ({r.get('via')}): "
                        f"{r.get('reason') or 'no reason given'}"
                    ]
                    if (r := d.get("approval"))
                    else []
                ),
                f"- data: {d['data_manifest']}",
            ]
        )
        + "\n"
    )


def _history_experiment(settings: Settings) -> str:
    from pipelines.tracking import side_experiment

    return side_experiment(settings, "promotions")


def _record(settings: Settings, client, d: dict, out_dir: Path, parent_run_id: str | None) -> None:
    import mlflow

    name, version = d["model_name"], d["challenger_version"]
    tags = {
        "meli.decision": d["decision"],
        "meli.rule": d["rule"],
        "meli.reason": d["reason"][:4000],
        "meli.challenger_macro_recall": f(d["challenger_macro_recall"]),
        "meli.champion_macro_recall": f(d["champion_macro_recall"]),
        "meli.delta": f(d["delta"]),
        "meli.ci": f"[{f((d['bootstrap'] or {}).get('ci_low'))}, {f((d['bootstrap'] or {}).get('ci_high'))}]",
        "meli.gate_dag_run_id": d["dag_run_id"],
        "meli.data_manifest": d["data_manifest"][:4000],
    }
    review = d.get("approval") or {}
    if review:
        tags.update(
            {
                "meli.review": review["response"],
                "meli.reviewed_by": str(review["by"]),
                "meli.reviewed_at": review["at"],
                "meli.review_reason": (review.get("reason") or "")[:4000],
                "meli.review_via": review.get("via") or "",
            }
        )
    if d["rule"] != "already_champion":  # never relabel the serving version with a no-op's "rejected"
        for k, v in tags.items():
            client.set_model_version_tag(name, version, k, v)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "decision.json", d)
    atomic_write_bytes(out_dir / "decision.md", _markdown(d).encode())
    if d.get("dag_run_id"):  # the run page's "Gate decision" tab and note find it from the run id
        atomic_write_json(
            _run_link_path(settings, d["dag_run_id"]),
            {"decision_json": str(out_dir / "decision.json"), "decision_md": str(out_dir / "decision.md")},
        )
    if parent_run_id:
        with mlflow.start_run(run_id=parent_run_id):
            mlflow.log_artifact(str(out_dir / "decision.json"), "gate")
            mlflow.log_artifact(str(out_dir / "decision.md"), "gate")
            mlflow.set_tags(
                {
                    "meli.decision": d["decision"],
                    "meli.champion_version": version if d["decision"] == "promoted" else (d["champion_version"] or ""),
                }
            )
    _history_event(settings, d, [out_dir / "decision.json", out_dir / "decision.md"])


def _history_event(settings: Settings, d: dict, files: list[Path] = ()) -> None:
    import mlflow

    exp_id = _history_experiment(settings)
    same = mlflow.search_runs(
        [exp_id],
        filter_string=f"tags.`meli.challenger_version` = '{d['challenger_version']}' "
        f"and tags.`meli.decided_at` = '{d['decided_at']}'",
        max_results=1,
        output_format="list",
    )
    if same:  # a retry that completes a decision already in the history: no second event
        log.info("history already has this decision (MLflow run %s)", same[0].info.run_id)
        return
    with mlflow.start_run(
        experiment_id=exp_id,
        run_name=f"{d['decision']}-v{d['challenger_version']}",
        nested=mlflow.active_run() is not None,
    ) as run:
        flat = {**d, **{f"review_{k}": v for k, v in (d.get("approval") or {}).items()}}
        mlflow.set_tags(
            {f"meli.{k}": ("" if v is None else str(v))[:4000] for k, v in flat.items() if not isinstance(v, dict)}
        )
        metrics = {
            k: d[k]
            for k in ("challenger_macro_recall", "champion_macro_recall", "delta")
            if isinstance(d.get(k), float)
        }
        if metrics:
            mlflow.log_metrics(metrics)
        for p in files:
            mlflow.log_artifact(str(p))
        log.info("history event recorded as MLflow run %s", run.info.run_id)


def f(x) -> str:
    return "" if x is None else (f"{x:.6f}" if isinstance(x, float) else str(x))


# ------------------------------------------------------------------------------------------
# Operator commands
# ------------------------------------------------------------------------------------------
def status(settings: Settings) -> dict:
    client = _client(settings)
    name = settings.model_name
    out = {"model_name": name, "tracking_uri": settings.tracking_uri}
    for alias in (CHAMPION, PREVIOUS):
        mv = _alias_version(client, name, alias)
        out[alias] = (
            None
            if mv is None
            else {
                "version": str(mv.version),
                "run_id": mv.run_id,
                "model_type": mv.tags.get("meli.model_type"),
                "run_date": mv.tags.get("meli.run_date"),
                "macro_recall": mv.tags.get("meli.challenger_macro_recall"),
            }
        )
    try:
        versions = client.search_model_versions(f"name='{name}'")
    except Exception:
        versions = []
    out["versions"] = sorted(
        (
            {
                "version": str(v.version),
                "decision": v.tags.get("meli.decision"),
                "run_date": v.tags.get("meli.run_date"),
            }
            for v in versions
        ),
        key=lambda x: int(x["version"]),
    )
    return out


def history(settings: Settings, limit: int = 50) -> list[dict]:
    import mlflow

    _client(settings)
    exp = mlflow.get_experiment_by_name(f"{settings.experiment}-promotions")
    if exp is None:
        return []
    runs = mlflow.search_runs(  # the latest ``limit`` events, printed oldest first
        [exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=limit, output_format="list"
    )[::-1]
    keys = (
        "decided_at",
        "decision",
        "rule",
        "challenger_version",
        "champion_version",
        "challenger_macro_recall",
        "champion_macro_recall",
        "delta",
        "reason",
        "review_response",
        "review_by",
        "review_reason",
        "dag_run_id",
        "run_date",
    )
    return [{k: r.data.tags.get(f"meli.{k}", "") for k in keys} for r in runs]


def rollback(settings: Settings, to_version: str | None = None, reason: str = "operator rollback") -> dict:
    """Move ``champion`` back to ``previous`` (or ``to_version``); the old champion becomes ``previous``."""
    with registry_lock(settings):
        return _rollback_locked(settings, _client(settings), to_version, reason)


def _rollback_locked(settings: Settings, client, to_version: str | None, reason: str) -> dict:
    name = settings.model_name
    current = _alias_version(client, name, CHAMPION)
    if to_version is None:
        prev = _alias_version(client, name, PREVIOUS)
        if prev is None:
            raise GateError(f"{name} has no '{PREVIOUS}' alias; give a version to roll back to")
        to_version = str(prev.version)
    client.get_model_version(name, str(to_version))  # fails clearly if it does not exist
    if current is not None and str(current.version) == str(to_version):
        raise GateError(f"version {to_version} is already the champion")
    # 'champion' first: if the second move fails, serving is already right and the target is not lost
    # (moving 'previous' first would leave both aliases on the version being rolled back from)
    client.set_registered_model_alias(name, CHAMPION, str(to_version))
    if current is not None:
        client.set_registered_model_alias(name, PREVIOUS, current.version)
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
    client.set_model_version_tag(name, str(to_version), "meli.rolled_back_at", d["decided_at"])
    _history_event(settings, d)
    log.info("rolled back %s champion %s -> %s", name, d["champion_version"], to_version)
    return d


def with_rules(base: GateRules, **overrides) -> GateRules:
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})
