"""A model card per registered version: a readable account of what the version is, what it was trained
on, how it did on the frozen test rows against the champion, and what it is known not to do.

Written when the version is registered (data, validation, training) and again when it is gated, when
a person approves or rejects it, and when ``python -m pipelines registry card VERSION`` asks for it:
each time rebuilt from the records (version tags, the run's dataset/evaluation/decision files, the
MLflow run, the latest shadow report), so it is never out of date with them. Markdown and one
self-contained HTML page under ``$MELI_HOME/registry/cards/<model>/v<N>/``, logged to the version's
MLflow run (``model_card/``) and named by the version's ``meli.model_card`` tag.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from pathlib import Path

from pipelines.core.fs import atomic_write_bytes
from pipelines.core.render import md_text
from pipelines.settings import Settings

log = logging.getLogger(__name__)

MD_NAME, HTML_NAME = "model_card.md", "model_card.html"
TRAINING_PARAMS = (
    "model_type",
    "members",
    "mode",
    "epochs",
    "batch_size",
    "lr",
    "embedding_lr",
    "embedding_dim",
    "hidden",
    "wide_dim",
    "dropout",
    "balance",
    "refit",
    "sentence_encoder",
    "num_classes",
    "vocab_size",
    "device",
    "torch_threads",
    "effective_batch_size",
)


def card_paths(settings: Settings, version: str) -> dict[str, Path]:
    d = settings.cards_dir / f"v{version}"
    return {"md": d / MD_NAME, "html": d / HTML_NAME}


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


def _mlflow_line(ctx: dict) -> str:
    """The version's MLflow run and page: links when MELI_MLFLOW_UI_URL is set, else the run id."""
    from pipelines.core.tracking import ui_run_url, ui_version_url
    from pipelines.settings import get_settings

    settings = get_settings()
    run_url = ui_run_url(settings, ctx["run_id"], ctx.get("experiment_id"))
    rid = str(ctx["run_id"])
    safe = re.fullmatch(r"[A-Za-z0-9_-]+", rid) is not None  # MLflow's ids are hex; anything else escaped
    if run_url:
        run = f"[{rid if safe else md_text(rid)}]({run_url})"
    else:
        run = f"`{rid}`" if safe else md_text(rid)
    version_url = ui_version_url(settings, ctx["version"])
    version = f"; [the version in MLflow]({version_url})" if version_url else ""
    return f"- MLflow run: {run}{version}; registered run date {md_text(ctx['run_date'] or 'n/a')}"


def f4(x) -> str:
    return "n/a" if x is None or x == "" else f"{float(x):.4f}"


def gather(settings: Settings, version: str) -> dict:
    """Everything the card says, from the records of ``version`` (no model is loaded)."""
    import mlflow

    from pipelines.core.tracking import CHAMPION, PREVIOUS, alias_version
    from pipelines.registry.records import registry_client

    client = registry_client(settings)
    name = settings.model_name
    mv = client.get_model_version(name, str(version))
    tags = dict(mv.tags or {})
    held = {a: alias_version(client, name, a) for a in (CHAMPION, PREVIOUS)}
    aliases = [a for a, v in held.items() if v is not None and str(v.version) == str(version)]
    run_date = tags.get("meli.run_date", "")
    run_dir = settings.run_dir(run_date) if run_date else None
    ctx: dict = {"name": name, "version": str(version), "tags": tags, "aliases": aliases, "run_date": run_date}
    ctx["registered_at"] = mv.creation_timestamp
    ctx["run_id"] = mv.run_id
    try:
        run = mlflow.get_run(mv.run_id)
        ctx["params"], ctx["run_tags"] = dict(run.data.params), dict(run.data.tags)
        ctx["experiment_id"] = run.info.experiment_id
    except Exception as exc:  # a run deleted from the store: the card says so
        ctx["params"], ctx["run_tags"] = {}, {}
        ctx["run_error"] = str(exc)
    if run_dir is None:
        return ctx
    ctx["dataset"] = _read(run_dir / "dataset" / "dataset.json")
    ctx["split_languages"] = _split_languages(run_dir / "dataset")
    ctx["validation"] = _read(settings.home / "validation" / run_date / "report.json")
    ctx["plan"] = _read(run_dir / "embedding" / "warm.json")
    ev = _read(run_dir / "evaluation" / "evaluation.json")
    if ev and ev.get("models", {}).get("challenger", {}).get("version") == str(version):
        ctx["evaluation"] = ev
        ctx["per_class"] = _read(run_dir / "evaluation" / "per_class_recall.json")
        from pipelines.core.paths import linked

        # the evaluation's predictions file is read only under the runs' folder ($MELI_HOME/work)
        preds = linked(ev.get("predictions"), settings.work_dir) or Path("")
        ctx["confusions"] = _confusions(preds)
        ctx["test_support"] = _test_support(preds)
        d = _read(run_dir / "evaluation" / "decision.json")
        ctx["decision"] = d if d and d.get("challenger_version") == str(version) else None
    try:
        from pipelines.serving.shadow import latest_report

        ctx["shadow"] = latest_report(settings, str(version))
    except ImportError:
        ctx["shadow"] = None
    except Exception as exc:  # a shadow report that cannot be read does not block the card
        log.warning("shadow report of v%s unreadable: %s", version, exc)
        ctx["shadow"] = None
    return ctx


def _split_languages(dataset_dir: Path) -> dict[str, dict[str, int]]:
    import pyarrow.parquet as pq

    out = {}
    for split in ("train", "validation", "test"):
        p = dataset_dir / f"{split}.parquet"
        if p.exists():
            if "language" not in pq.read_schema(p).names:
                out[split] = {"?": pq.read_metadata(p).num_rows}
                continue
            out[split] = dict(Counter(str(x) for x in pq.read_table(p, columns=["language"]).column(0).to_pylist()))
    return out


def _confusions(preds: Path, top: int = 15) -> list[dict]:
    import pyarrow.parquet as pq

    from pipelines.model.metrics import confusion_summary

    if not preds.is_file():
        return []
    t = pq.read_table(preds, columns=["category", "challenger"])
    return confusion_summary(t.column(0).to_pylist(), t.column(1).to_pylist(), top)


def _test_support(preds: Path) -> dict[str, int]:
    import pyarrow.parquet as pq

    if not preds.is_file():
        return {}
    return dict(Counter(pq.read_table(preds, columns=["category"]).column(0).to_pylist()))


def markdown(ctx: dict) -> str:
    """The card as Markdown: the sections in a fixed order, each present (saying "not yet" when so)."""
    t, p = ctx["tags"], ctx.get("params", {})
    kind = md_text(t.get("meli.model_type", p.get("model_type", "?")))
    if t.get("meli.members"):
        kind = f"{kind} of {md_text(t['meli.members'])}"
    d = ctx.get("decision") or {}
    out = [
        f"# Model card: {ctx['name']} v{ctx['version']}",
        "",
        f"Classifies MercadoLibre listing titles into categories. Model: {kind}, trained on the lake up to "
        f"{md_text(ctx['run_date'] or '?')}. Aliases: {', '.join(ctx['aliases']) or 'none'}.",
        "",
        "## Status",
        "",
        f"- gate decision: **{md_text(t.get('meli.decision', 'pending'))}**"
        + (f" by rule `{d.get('rule')}`: {md_text(d.get('reason'))}" if d else ""),
    ]
    appr = d.get("approval") or {}
    if appr:
        out.append(
            f"- human review: **{md_text(appr.get('response'))}** by {md_text(appr.get('by') or '?')} at "
            f"{md_text(appr.get('at'))} ({md_text(appr.get('via'))}): "
            + md_text(appr.get("reason") or "no reason given")
        )
    elif d.get("decision") == "pending_approval":
        out.append("- human review: **pending approval**")
    out += [_mlflow_line(ctx), ""]
    out += _data_section(ctx) + _validation_section(ctx) + _training_section(ctx, kind)
    out += _evaluation_section(ctx) + _per_class_section(ctx) + _confusion_section(ctx)
    out += _behaviour_section(ctx) + _shadow_section(ctx) + _limits_section(ctx)
    return "\n".join(out).rstrip() + "\n"


class _Md(str):
    """A table cell already in Markdown (built here, its data parts escaped): placed as is."""


def _table(head: list[str], rows: list[list]) -> list[str]:
    def cell(x) -> str:  # data is shown as text: no markup, link or column break from a value
        return x if isinstance(x, _Md) else md_text(x)

    return [
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
        *("| " + " | ".join(cell(x) for x in r) + " |" for r in rows),
        "",
    ]


def _data_section(ctx: dict) -> list[str]:
    out = ["## Data", ""]
    ds = ctx.get("dataset")
    if not ds:
        return out + ["The run's dataset record is gone (work dir cleaned); see the version's tags.", ""]
    out.append(
        f"- data version {md_text(ds.get('data_version', 'n/a'))}; {md_text(ds.get('num_categories'))} categories; "
        "lake partitions at versions "
        + md_text(", ".join(f"{k}@v{v}" for k, v in sorted(ds.get("lake_versions", {}).items())))
    )
    out.append("")
    rows = []
    for part in ds.get("lineage", []):
        sha = _Md(
            ", ".join(
                f"{md_text((s.get('sha256') or '')[:12])} {md_text(Path(s.get('path') or '').name)}"
                for s in part["sources"]
            )
        )
        rows.append([part["ingest_date"], part["version"], part.get("rows"), sha or "-"])
    out += _table(["partition", "version", "rows", "sources (sha256)"], rows)
    langs = ctx.get("split_languages") or {}
    all_langs = sorted({lang for c in langs.values() for lang in c})
    rows = [[s, ds["counts"].get(s), *(langs.get(s, {}).get(lang, 0) for lang in all_langs)] for s in langs]
    out += _table(["split", "rows", *all_langs], rows)
    return out


def _validation_section(ctx: dict) -> list[str]:
    out = ["## Validation (Great Expectations)", ""]
    v = ctx.get("validation")
    if not v:
        return out + ["No validation report for this run date.", ""]
    out.append(
        f"- {v.get('passed')}/{v.get('evaluated')} expectations passed, {len(v.get('warnings') or [])} warnings; "
        f"Data Docs: {md_text(v.get('data_docs_index'))}"
    )
    for w in (v.get("warnings") or [])[:10]:
        out.append(f"- warning: {md_text(w if isinstance(w, str) else json.dumps(w)[:300])}")
    return out + [""]


def _training_section(ctx: dict, kind: str) -> list[str]:
    p, rt = ctx.get("params", {}), ctx.get("run_tags", {})
    plan = ctx.get("plan") or {}
    out = ["## Training", "", f"- model: {kind}"]
    if plan:
        out.append(f"- mode: {md_text(plan.get('mode'))} ({md_text(plan.get('reason'))})")
    out.append(
        f"- hardware: device {md_text(p.get('device') or rt.get('meli.device') or 'n/a')}, "
        f"{md_text(p.get('torch_threads', 'n/a'))} torch threads; "
        + md_text(rt.get("meli.hardware", "host not recorded"))
    )
    if ctx.get("run_error"):
        out.append(f"- the MLflow run is unreadable: {md_text(ctx['run_error'])}")
    rows = [[k, p[k]] for k in TRAINING_PARAMS if k in p]
    return out + [""] + (_table(["parameter", "value"], rows) if rows else [])


def _evaluation_section(ctx: dict) -> list[str]:
    out = ["## Evaluation on the frozen test rows", ""]
    ev = ctx.get("evaluation")
    if not ev:
        return out + ["Not evaluated yet (the gate has not compared it with the champion).", ""]
    m = ev["models"]
    rows = [[role, m[role]["version"], f4(m[role]["macro_recall"]), f4(m[role]["accuracy"])] for role in m]
    out.append(f"{ev['test_rows']} test rows, {ev['test_categories']} categories; the champion re-scored on them.")
    out.append("")
    out += _table(["role", "version", "macro-recall", "accuracy"], rows)
    d = ctx.get("decision") or {}
    b = d.get("bootstrap") or {}
    if b:
        out.append(
            f"- delta {f4(d.get('delta'))}, 95% paired-bootstrap CI [{f4(b.get('ci_low'))}, {f4(b.get('ci_high'))}]"
            f" ({b.get('samples')} resamples)"
        )
        out.append("")
    return out


def _per_class_section(ctx: dict) -> list[str]:
    out = ["## Per-category recall", ""]
    pc = ctx.get("per_class")
    if not pc:
        return out + ["Not evaluated yet.", ""]
    ch = pc["challenger"]
    ranked = sorted(ch.items(), key=lambda kv: (kv[1], kv[0]))
    support = ctx.get("test_support") or {}
    out.append("Worst 10 / best 10 on the test rows (support = test rows of the category):")
    out.append("")
    rows = [[c, f4(r), support.get(c, "")] for c, r in ranked[:10]]
    out += _table(["worst category", "recall", "support"], rows)
    rows = [[c, f4(r), support.get(c, "")] for c, r in ranked[::-1][:10]]
    out += _table(["best category", "recall", "support"], rows)
    champ = pc.get("champion")
    if champ:
        diffs = sorted(((ch[c] - champ.get(c, 0.0), c) for c in ch), key=lambda x: (x[0], x[1]))
        out.append("Biggest changes against the champion:")
        out.append("")
        rows = [[c, f4(champ.get(c)), f4(ch[c]), f"{dl:+.4f}"] for dl, c in diffs[::-1][:10] if dl > 0]
        rows += [[c, f4(champ.get(c)), f4(ch[c]), f"{dl:+.4f}"] for dl, c in diffs[:10] if dl < 0]
        out += _table(["category", "champion", "this version", "change"], rows) if rows else ["No change.", ""]
    return out


def _confusion_section(ctx: dict) -> list[str]:
    out = ["## Frequent confusions", ""]
    conf = ctx.get("confusions")
    if not conf:
        return out + ["Not evaluated yet." if not ctx.get("evaluation") else "No mistakes on the test rows.", ""]
    rows = [[c["true"], c["predicted"], c["count"]] for c in conf]
    return out + _table(["true category", "predicted", "test rows"], rows)


def _behaviour_section(ctx: dict) -> list[str]:
    out = ["## Behavioural checks", ""]
    b = ((ctx.get("evaluation") or {}).get("behaviour") or {}).get("challenger")
    if not b:
        return out + ["Not run for this version.", ""]
    inv, mf = b.get("invariance") or {}, b.get("min_function") or {}
    out.append(
        f"- invariance: {share(inv.get('pass_share'))} of {inv.get('rows')} test titles keep their prediction under "
        "every perturbation (case, accents, spaces, punctuation)"
    )
    per = (inv.get("by_perturbation") or {}).items()
    rows = [[k, v.get("changed"), share(v.get("share_unchanged"))] for k, v in per]
    out += [""] + (_table(["perturbation", "predictions changed", "unchanged"], rows) if rows else [])
    if mf.get("pass_share") is None:
        out.append(f"- minimum-function cases: none of the {mf.get('cases', 0)} reviewed cases applies to this model")
    else:
        out.append(
            f"- minimum-function cases: {mf.get('passed')}/{mf.get('applicable')} passed "
            f"({share(mf.get('pass_share'))})"
        )
    for fcase in (mf.get("failures") or [])[:10]:
        out.append(
            f'  - "{md_text(fcase["title"])}": expected {md_text(fcase["expected"])}, '
            f"predicted {md_text(fcase['predicted'])}"
        )
    return out + [""]


def share(x) -> str:
    return "n/a" if x is None else f"{100 * float(x):.1f}%"


def _shadow_section(ctx: dict) -> list[str]:
    out = ["## Shadow scoring", ""]
    s = ctx.get("shadow")
    if not s:
        return out + ["Not shadow-scored yet (meli_score shadows a version newer than the champion).", ""]
    conf = s.get("confidence") or {}
    out.append(
        f"- {md_text(s.get('run_date'))}: beside champion v{md_text(s.get('champion_version'))} "
        f"on {s.get('rows')} rows, "
        f"**{share(s.get('agreement'))} agree**; mean top-1 probability shift {f4(conf.get('shift'))}; "
        f"report {md_text(s.get('report_md') or s.get('report_json'))}"
    )
    rows = [
        [f["champion_category"], f["rows"], f["flips"], ", ".join(f"{k} ({n})" for k, n in (f.get("to") or {}).items())]
        for f in (s.get("flips_by_category") or [])[:10]
    ]
    return out + [""] + (_table(["champion's category", "rows", "flipped", "to"], rows) if rows else [])


def _limits_section(ctx: dict) -> list[str]:
    out = ["## Known limits", ""]
    langs = ctx.get("split_languages", {}).get("train") or {}
    trained = sorted(lang for lang, n in langs.items() if n)
    if trained:
        missing = sorted({"spanish", "portuguese"} - set(trained))
        out.append(
            f"- trained on {md_text(', '.join(trained))} titles"
            + (f"; {', '.join(missing)} titles were absent from training and are not measured" if missing else "")
        )
    ds = ctx.get("dataset") or {}
    known = ds.get("num_categories") or (ctx.get("evaluation") or {}).get("test_categories", "?")
    out.append(
        f"- it predicts only the {known} categories it was trained on: a listing of another "
        "category gets the closest known one (with a low probability)"
    )
    support = ctx.get("test_support") or {}
    if support:
        few = sorted(support.values())[len(support) // 10] if len(support) >= 10 else min(support.values())
        out.append(
            f"- per-category recall is measured on few rows (a tenth of the categories have <= {few} test rows): "
            "differences of one or two titles move it by a lot"
        )
    out.append(
        "- titles longer than the ingest limit, empty, or with no usable token are not scored (kept with a reason)"
    )
    out.append("- it reads the title only: the same title in two categories (e.g. a part and its device) is ambiguous")
    return out + [""]


def render_html(md: str, title: str) -> str:
    """One self-contained HTML page (inline style, no script, no external request): the Markdown
    rendered with raw HTML off, in pipelines/core/templates/markdown_page.html."""
    from pipelines.core.render import markdown_html, render

    return render("markdown_page.html", title=title, body=markdown_html(md), links=[])


def card_page(settings: Settings, version: str) -> str:
    """The card of ``version`` as HTML, rendered from its Markdown on disk when written, else from the
    records in memory (nothing is written: a reader's request changes no file or tag)."""
    md = card_paths(settings, str(version))["md"]
    text = md.read_text() if md.exists() else markdown(gather(settings, str(version)))
    return render_html(text, f"{settings.model_name} v{version}")


def write_card(settings: Settings, version: str, log_to_mlflow: bool = True) -> dict:
    """(Re)write the card of ``version``; returns {"md", "html", "markdown"}."""
    from pipelines.registry.records import registry_client

    ctx = gather(settings, str(version))
    md = markdown(ctx)
    paths = card_paths(settings, str(version))
    paths["md"].parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(paths["md"], md.encode())
    atomic_write_bytes(paths["html"], render_html(md, f"{ctx['name']} v{version}").encode())
    client = registry_client(settings)
    if log_to_mlflow:
        try:
            client.log_artifact(ctx["run_id"], str(paths["md"]), "model_card")
            client.log_artifact(ctx["run_id"], str(paths["html"]), "model_card")
        except Exception as exc:  # the card on disk stands; the run may be gone or read-only
            log.warning("could not log the model card of v%s to MLflow run %s: %s", version, ctx["run_id"], exc)
    client.set_model_version_tag(settings.model_name, str(version), "meli.model_card", str(paths["md"]))
    log.info("model card of v%s: %s", version, paths["html"])
    return {"md": str(paths["md"]), "html": str(paths["html"]), "markdown": md}


def try_write_card(settings: Settings, version: str) -> dict | None:
    """The card, best effort: a card that cannot be written never fails the step that asked for it."""
    try:
        return write_card(settings, version)
    except Exception as exc:
        log.warning("model card of v%s not written: %s", version, exc)
        return None
