"""The registry's record of every alias move, and its client.

``champion`` moves only with a record: the version's tags and description, the decision files
(``decision.json``/``.md`` and the run link the run page's tab reads), and an event in the promotion
history (MLflow experiment ``<name>-promotions``). A journal entry is written before an alias moves and
removed once the move is on record; ``registry_client`` completes an entry a killed process left, so
no registry reader sees a champion its history lacks.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipelines.core.fs import atomic_write_bytes, atomic_write_json
from pipelines.core.locks import advisory_lock, file_lock
from pipelines.core.render import md_text
from pipelines.core.tracking import CHAMPION, PREVIOUS, alias_version, tracking_client
from pipelines.settings import Settings

log = logging.getLogger(__name__)


class GateError(RuntimeError):
    pass


def registry_client(settings: Settings):
    """The registry's client; first, what a killed gate or rollback left half recorded is completed
    (``replay_journal``), so no reader sees a champion its history lacks."""
    client = tracking_client(settings)
    replay_journal(settings, client)
    return client


@contextmanager
def registry_lock(settings: Settings, timeout_s: float | None = None) -> Iterator[None]:
    """One gate (or rollback) of this model at a time: an advisory lock in Postgres when
    MELI_LOCK_URI names one (writers on several hosts), else a lock file beside the SQLite store
    (or under MELI_HOME). ``timeout_s``: how long to wait (default ``MELI_LOCK_TIMEOUT_S``)."""
    what = f"the registry of {settings.model_name}"
    wait = settings.lock_timeout_s if timeout_s is None else timeout_s
    if settings.lock_uri.startswith("postgresql"):
        lock = advisory_lock(settings.lock_uri, f"meli-gate:{settings.model_name}", wait, what)
    else:
        lock = file_lock(settings.registry_lock_path, wait, what)
    with lock:
        yield


def logged_model_id(source: str | None) -> str | None:
    """``models:/m-<id>`` (a version registered from a LoggedModel) -> ``m-<id>``."""
    src = source or ""
    return src.removeprefix("models:/") if src.startswith("models:/m-") and "/" not in src[9:] else None


def decision_description(d: dict) -> str:
    """A gate decision (and its approval) as a few Markdown lines: the version's and the run's description."""

    def f4(x, sign: str = ""):
        return "n/a" if x is None else f"{x:{sign}.4f}"

    b = d.get("bootstrap") or {}
    lines = [
        f"**{d['decision'].upper()}** by rule `{d['rule']}` ({str(d.get('decided_at', ''))[:16]}Z): {d['reason']}",
        "",
        f"Test macro-recall {f4(d.get('challenger_macro_recall'))}"
        + (
            f" vs champion v{d['champion_version']} {f4(d.get('champion_macro_recall'))}, "
            f"delta {f4(d.get('delta'), '+')}" + (f", 95% CI [{b['ci_low']:.4f}, {b['ci_high']:.4f}]" if b else "")
            if d.get("champion_version")
            else " (no champion before)"
        )
        + f"; {d.get('test_rows', '?')} test rows. Run date {d.get('run_date') or '-'}, "
        + (f"DAG run {d['dag_run_id']}." if d.get("dag_run_id") else "CLI run."),
    ]
    if r := d.get("approval"):
        lines += ["", f"Review: **{r['response']}** by {r['by']} ({r.get('via')}) at {str(r['at'])[:16]}Z: "
                  f"{r.get('reason') or 'no reason given'}"]  # fmt: skip
    return "\n".join(lines)[:5000]


def describe_decision(settings: Settings, client, d: dict, parent_run_id: str | None) -> None:
    """Write the decision as the version's description and on the retraining run's (``mlflow.note.content``)."""
    text = decision_description(d)
    try:
        if d["rule"] != "already_champion":  # never relabel the serving version with a no-op
            client.update_model_version(d["model_name"], str(d["challenger_version"]), description=text)
        if parent_run_id:
            from pipelines.core.tracking import GATE_PENDING

            note = client.get_run(parent_run_id).data.tags.get("mlflow.note.content", "").split("\n\nGate: ")[0]
            note = note.removesuffix(GATE_PENDING)  # the decision is here now
            client.set_tag(parent_run_id, "mlflow.note.content", f"{note}\n\nGate: {text}")
    except Exception as exc:  # the decision's files and tags already hold it
        log.warning("could not describe v%s's decision in MLflow: %s", d["challenger_version"], exc)


def run_link_path(settings: Settings, run_id: str) -> Path:
    import re

    return settings.home / "registry" / "by_run" / (re.sub(r"[^A-Za-z0-9_.-]+", "_", run_id) + ".json")


def decision_figures(d: dict) -> str:
    def f4(x):
        return "n/a" if x is None else f"{x:.4f}"

    b = d.get("bootstrap") or {}
    ci = f"[{f4(b.get('ci_low'))}, {f4(b.get('ci_high'))}]" if b else "n/a"
    return (
        f"challenger macro-recall {f4(d['challenger_macro_recall'])}, champion "
        f"{f4(d['champion_macro_recall'])} (v{d['champion_version'] or '-'}), delta {f4(d['delta'])}, "
        f"95% CI {ci}; {d['test_rows']} test rows"
    )


def decision_markdown(d: dict) -> str:
    def f(x):
        return "n/a" if x is None else (f"{x:.4f}" if isinstance(x, float) else str(x))

    if d["decision"] == "skipped":
        return (
            f"# {d['run_date']}: SKIPPED\n\n- rule: `{d['rule']}` — {d['reason']}\n"
            f"- DAG run: {d['dag_run_id'] or 'n/a'}, decided at {d['decided_at']}\n"
            f"- champion: v{d.get('champion_version') or '-'} (unchanged)\n"
        )
    b = d.get("bootstrap") or {}
    return (
        "\n".join(
            [
                f"# {d['model_name']} v{d['challenger_version']}: {d['decision'].upper()}",
                "",
                f"- rule: `{d['rule']}` — {md_text(d['reason'])}",
                f"- run date: {md_text(d['run_date'])}, DAG run: {md_text(d['dag_run_id'] or 'n/a')}, "
                f"decided at {md_text(d['decided_at'])}",
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
                        f"- review: **{md_text(r['response'])}** by {md_text(r['by'])} at {md_text(r['at'])} "
                        f"({md_text(r.get('via'))}): {md_text(r.get('reason') or 'no reason given')}"
                    ]
                    if (r := d.get("approval"))
                    else []
                ),
                f"- data: {md_text(d['data_manifest'])}",
            ]
        )
        + "\n"
    )


def _history_experiment(settings: Settings) -> str:
    from pipelines.core.tracking import side_experiment

    return side_experiment(settings, "promotions")


def record_decision(settings: Settings, client, d: dict, out_dir: Path, parent_run_id: str | None) -> None:
    import mlflow

    name, version = d["model_name"], d["challenger_version"]
    # few tags (those code and filters read); the rest is the version's description (describe_decision)
    tags = {
        "meli.decision": d["decision"],
        "meli.rule": d["rule"],
        "meli.challenger_macro_recall": f(d["challenger_macro_recall"]),
    }
    review = d.get("approval") or {}
    if review:
        tags.update(
            {
                "meli.review": review["response"],
                "meli.reviewed_by": str(review["by"]),
                "meli.review_reason": (review.get("reason") or "")[:4000],
            }
        )
    describe_decision(settings, client, d, parent_run_id)
    if d["rule"] != "already_champion":  # never relabel the serving version with a no-op's "rejected"
        for k, v in tags.items():
            client.set_model_version_tag(name, version, k, v)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "decision.json", d)
    atomic_write_bytes(out_dir / "decision.md", decision_markdown(d).encode())
    if d.get("dag_run_id"):  # the run page's "Gate decision" tab and note find it from the run id
        atomic_write_json(
            run_link_path(settings, d["dag_run_id"]),
            {
                "dag_id": d.get("dag_id", ""),
                "decision_json": str(out_dir / "decision.json"),
                "decision_md": str(out_dir / "decision.md"),
            },
        )
    if parent_run_id:
        from pipelines.core.tracking import open_run

        # its status as it was: the gate's step finishes it (retrain.step_gate), a replay or a
        # person's answer on a run that ended (or was marked FAILED) leaves that as it is
        with open_run(settings, None, run_id=parent_run_id):
            mlflow.log_artifact(str(out_dir / "decision.json"), "gate")
            mlflow.log_artifact(str(out_dir / "decision.md"), "gate")
            mlflow.set_tags(
                {
                    "meli.decision": d["decision"],
                    "meli.champion_version": version if d["decision"] == "promoted" else (d["champion_version"] or ""),
                }
            )
    history_event(settings, d, [out_dir / "decision.json", out_dir / "decision.md"])
    journal_path(settings, d).unlink(missing_ok=True)  # the move, if any, is on record


def history_event(settings: Settings, d: dict, files: list[Path] = ()) -> None:
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
        flat["model_name"] = d.get("model_name") or settings.model_name  # `registry history` filters on it
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


def record_rollback(settings: Settings, client, d: dict) -> None:
    client.set_model_version_tag(d["model_name"], d["challenger_version"], "meli.rolled_back_at", d["decided_at"])
    history_event(settings, d)
    journal_path(settings, d).unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------
# The journal of alias moves: an entry is written before ``champion`` moves and removed once the move
# is on record (version tags, decision files, the promotion history). An entry left by a killed
# process is completed by the next registry command of any kind (``_client`` calls replay_journal).
# ------------------------------------------------------------------------------------------
_REPLAYING = False


def _journal_dir(settings: Settings) -> Path:
    return settings.home / "registry" / "journal" / settings.model_name


def journal_path(settings: Settings, d: dict) -> Path:
    import re

    stamp = re.sub(r"[^0-9A-Za-z]+", "", d["decided_at"])
    return _journal_dir(settings) / f"v{d['challenger_version']}-{stamp}.json"


def journal_begin(settings: Settings, step: str, from_version: str | None, d: dict, eval_dir: Path | None = None):
    """Write, before ``champion`` moves from ``from_version`` to ``d["challenger_version"]``, what the
    move is and the record it completes as (``d``)."""
    path = journal_path(settings, d)
    path.parent.mkdir(parents=True, exist_ok=True)
    entry = {
        "step": step,
        "from": from_version,
        "to": d["challenger_version"],
        "decision": d,
        "eval_dir": str(eval_dir) if eval_dir else "",
        "parent_run_id": d.get("mlflow_run_id") or None,
    }
    atomic_write_json(path, entry)


def replay_journal(settings: Settings, client) -> None:
    """Complete what a killed gate, approval or rollback left between its alias move and its record;
    without waiting: a process holding the registry lock is alive and completes its own entry."""
    global _REPLAYING
    d = _journal_dir(settings)
    if _REPLAYING or not d.is_dir() or not any(d.glob("*.json")):
        return
    from pipelines.core.locks import LockTimeout

    _REPLAYING = True
    try:
        with registry_lock(settings, timeout_s=0):
            replay_locked(settings, client)
    except LockTimeout:
        log.debug("the registry is locked: its holder completes its own journal entry")
    except Exception as exc:  # a registry that fails now: the entry stays for the next start
        log.warning("could not complete the registry journal under %s: %s", d, exc)
    finally:
        _REPLAYING = False


def replay_locked(settings: Settings, client) -> None:
    """Each journal entry (the registry lock held): when ``champion`` is on the entry's version the
    move happened, so finish it ('previous') and record it; when it is still on the old one the
    process died before moving: nothing changed, and the entry goes."""
    for path in sorted(_journal_dir(settings).glob("*.json")):
        entry = json.loads(path.read_text())
        d, name = entry["decision"], settings.model_name
        champ = alias_version(client, name, CHAMPION)
        champ_v = str(champ.version) if champ else None
        prev = alias_version(client, name, PREVIOUS)
        prev_v = str(prev.version) if prev else None
        if champ_v == entry["to"] or (champ_v != entry["from"] and prev_v == entry["to"]):  # it moved
            if champ_v == entry["to"] and entry["from"] is not None and prev_v != entry["from"]:
                client.set_registered_model_alias(name, PREVIOUS, entry["from"])  # a rollback's second move
            log.warning(
                "completing the record of an interrupted %s: %s v%s became champion (was v%s) at %s",
                entry["step"],
                name,
                entry["to"],
                entry["from"],
                d["decided_at"],
            )
            if entry["step"] == "rollback":
                record_rollback(settings, client, d)
            else:
                record_decision(settings, client, d, Path(entry["eval_dir"]), entry.get("parent_run_id"))
        elif champ_v == entry["from"]:
            log.info("%s of v%s was interrupted before champion moved: nothing to record", entry["step"], entry["to"])
        else:
            log.warning(
                "journal entry %s: champion is v%s, neither v%s nor v%s; dropped",
                path,
                champ_v,
                entry["from"],
                entry["to"],
            )
        path.unlink(missing_ok=True)
