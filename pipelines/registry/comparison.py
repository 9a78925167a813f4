"""The challenger and the current champion scored on the same frozen test rows (the champion is
re-scored, never trusted from an old metric), with behavioural checks of the challenger, and the
rules that decide between them (``decide``: pure, unit-testable).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from pipelines.core.fs import atomic_file, atomic_write_json, read_json
from pipelines.core.tracking import CHAMPION, alias_version
from pipelines.registry.records import GateError, registry_client
from pipelines.settings import GateRules, Settings

log = logging.getLogger(__name__)

# rules whose promotion is never applied by the gate alone: it waits for a person (pending approval)
PERSON_DECIDES = ("incomparable",)


def predict_titles(model_uri: str, titles: list[str]) -> list[str]:
    return _predict(_load_model(model_uri), titles)


def _load_model(model_uri: str):
    import mlflow

    from pipelines.core.fs import BundleCorrupt

    try:
        return mlflow.pyfunc.load_model(model_uri)
    except BundleCorrupt as exc:  # models:/<name>/<version>: one line naming the version and the file
        raise exc.for_version(model_uri.rstrip("/").rsplit("/", 1)[-1]) from exc


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
    """Behavioural checks of a loaded model (pipelines/registry/behaviour.py): invariance on a sample of the
    test titles, and the reviewed minimum-function cases of its categories and training languages."""
    from pipelines.registry.behaviour import run_checks

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


def _known_categories(settings: Settings, client, version: str, model) -> set[str] | None:
    """The categories a registered version can predict: its bundle's labels, else (not one of our
    bundles) the categories of the training split of its run date; None when neither is known."""
    try:
        return {str(x) for x in model.unwrap_python_model().bundle.labels}
    except AttributeError:
        pass
    try:
        run_date = client.get_model_version(settings.model_name, version).tags.get("meli.run_date", "")
    except Exception as exc:  # the comparison goes on; only the incomparable rule cannot apply
        log.warning("categories of v%s unknown: %s", version, exc)
        return None
    found = _column_values(settings.run_dir(run_date) / "dataset", "train", "category") if run_date else set()
    return found or None


def _batch_categories(settings: Settings, run_date: str) -> list[str]:
    """The categories of the run date's batch: every labelled row of the dataset (all three splits)
    that came from the lake partition of ``run_date`` (its ``ingest_date``)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    out: list[str] = []
    for split in ("train", "validation", "test"):
        path = settings.run_dir(run_date) / "dataset" / f"{split}.parquet"
        if not path.exists() or not {"category", "ingest_date"} <= set(pq.read_schema(path).names):
            continue
        t = pq.read_table(path, columns=["category", "ingest_date"])
        t = t.filter(pc.equal(pc.cast(t.column("ingest_date"), "string"), run_date))
        out += [str(c) for c in t.column("category").to_pylist() if c is not None]
    return out


def evaluate(settings: Settings, run_date: str, challenger_version: str) -> dict:
    """Score the challenger and the current champion on this run's frozen test rows."""
    from pipelines.features.embedding import read_split
    from pipelines.model.metrics import accuracy, macro_recall, per_class_recall

    client = registry_client(settings)
    name = settings.model_name
    champ = alias_version(client, name, CHAMPION)
    out_dir = settings.run_dir(run_date) / "evaluation"
    out_dir.mkdir(parents=True, exist_ok=True)
    prior = read_json(out_dir / "evaluation.json")
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
        if role == "champion":  # rows it could never get right: a category it was not trained on
            known = _known_categories(settings, client, version, model)
            unseen = None if known is None else sum(c not in known for c in y) / len(y)
            result["models"][role]["unseen_test_share"] = unseen
            batch = _batch_categories(settings, run_date)
            result["batch_rows"] = len(batch)
            result["models"][role]["unseen_batch_share"] = (
                None if known is None or not batch else sum(c not in known for c in batch) / len(batch)
            )
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
    # the run date's batch (its labelled rows in every split) and the test split: either mostly in
    # categories the champion never saw, and comparing the two on the test rows means nothing
    limit = rules.max_incomparable_share
    for key, what in (
        ("unseen_batch_share", f"the {evaluation.get('batch_rows', '?')} labelled rows of this run date's batch"),
        ("unseen_test_share", f"the {evaluation.get('test_rows', '?')} test rows"),
    ):
        unseen = champ.get(key)
        if unseen is not None and unseen > limit:
            return (
                True,
                "incomparable",
                (
                    f"{unseen:.0%} of {what} are in categories champion v{champ['version']} never saw "
                    f"(limit {limit:.0%}): its macro-recall {champ['macro_recall']:.4f} against the challenger's "
                    f"{ch:.4f} compares nothing; a person decides"
                ),
            )
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


def with_rules(base: GateRules, **overrides) -> GateRules:
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})
