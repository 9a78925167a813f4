"""Validation: Great Expectations (GX Core 1.x) gates every ingested partition.

The GX project (suites, validation definitions, checkpoint) is reviewed in git under
``expectations/gx``. At run time it is copied into ``$MELI_HOME/gx`` so that validation results and
Data Docs land under MELI_HOME. Thresholds are GX ``$PARAMETER``s filled from ``Settings.thresholds``.
Each expectation has a severity: a critical failure raises ``ValidationFailed`` (the DAG stops before
training); warnings are reported and the run goes on. Validating a lake partition records the outcome
on the version it read (``lake.record_validation``): only a version that passed is trained on.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipelines.core.fs import atomic_write_json
from pipelines.data.lake import (
    FAILED,
    NOT_VALIDATED,
    PASSED,
    SCHEMA_VERSION,
    current_version,
    list_partitions,
    partition_dir,
    read_manifest,
    record_validation,
    validation_of,
)
from pipelines.settings import Settings

log = logging.getLogger(__name__)
# GX logs hundreds of INFO lines per run ("Skipping registering function ...", config loading) when
# imported; the validation summary is what a reader of the task log needs
logging.getLogger("great_expectations").setLevel(logging.WARNING)

CHECKPOINTS = ("listings_partition", "listings_partition_metrics")
DATASOURCE = "meli_lake"
_PROJECT_PARTS = ("great_expectations.yml", "expectations", "validation_definitions", "checkpoints", "plugins")


class ValidationFailed(RuntimeError):
    """A critical expectation failed; the message names each one."""

    def __init__(self, message: str, report: dict):
        super().__init__(message)
        self.report = report


@dataclass
class Check:
    suite: str
    expectation: str
    column: str | None
    severity: str
    success: bool
    description: str
    observed: object = None
    unexpected_examples: list = field(default_factory=list)

    def line(self) -> str:
        col = f"[{self.column}]" if self.column else ""
        ex = f" e.g. {self.unexpected_examples[:5]}" if self.unexpected_examples else ""
        obs = f" observed={self.observed}" if self.observed is not None else ""
        return f"{self.severity.upper():8} {'PASS' if self.success else 'FAIL'} {self.expectation}{col}{obs}{ex}"


def gx_context(settings: Settings):
    """A file data context under $MELI_HOME/gx, refreshed from the reviewed project in git."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx

    src = settings.expectations_src / "gx"
    if not (src / "great_expectations.yml").exists():
        raise FileNotFoundError(f"GX project not found at {src}")
    dst = settings.gx_root / "gx"
    dst.mkdir(parents=True, exist_ok=True)
    for part in _PROJECT_PARTS:
        s, d = src / part, dst / part
        if s.is_dir():
            shutil.rmtree(d, ignore_errors=True)
            shutil.copytree(s, d)
        elif s.exists():
            shutil.copy2(s, d)
    return gx.get_context(mode="file", project_root_dir=str(settings.gx_root))


def partition_metrics(settings: Settings, run_date: str, table, manifest: dict | None = None) -> dict:
    """Batch-level numbers the metrics suite checks: quarantine ratio, volume vs the previous
    partition, and the category distribution vs all earlier partitions (the training reference).
    An earlier partition that failed validation is no reference (it is not trained on either).
    ``manifest``: the batch's own (default: that of the lake partition of ``run_date``)."""
    import pyarrow.compute as pc

    from pipelines.data.lake import read_partition

    if manifest is None:
        manifest = read_manifest(partition_dir(settings.listings_dir, run_date))
    totals = manifest.get("totals", {})
    read = totals.get("rows_read") or 0
    quarantine_ratio = (totals.get("rows_quarantined", 0) / read) if read else 0.0
    earlier = [
        p
        for d, p in list_partitions(settings.listings_dir)
        if d < run_date and validation_of(p)["validation"] != FAILED
    ]
    volume_ratio = unseen = shift = None
    n = table.num_rows
    if earlier:
        prev_rows = read_manifest(earlier[-1]).get("totals", {}).get("rows_written")
        if prev_rows:
            volume_ratio = n / prev_rows
        ref_counts: dict[str, int] = {}
        for p in earlier:
            vc = pc.value_counts(read_partition(p, ["category"]).column("category").drop_null())
            for item in vc.to_pylist():
                ref_counts[item["values"]] = ref_counts.get(item["values"], 0) + item["counts"]
        cur = {i["values"]: i["counts"] for i in pc.value_counts(table.column("category").drop_null()).to_pylist()}
        ref_total, cur_total = sum(ref_counts.values()), sum(cur.values())
        if ref_total and cur_total:
            unseen = sum(c for k, c in cur.items() if k not in ref_counts) / cur_total
            keys = set(ref_counts) | set(cur)
            shift = max(abs(cur.get(k, 0) / cur_total - ref_counts.get(k, 0) / ref_total) for k in keys)
    return {
        "rows": n,
        "quarantine_ratio": float(quarantine_ratio),
        "volume_ratio": volume_ratio,
        "unseen_category_share": unseen,
        "max_category_share_shift": shift,
        "schema_version": int(manifest.get("schema_version", SCHEMA_VERSION)),
        "no_letter_title_share": no_letter_share(table),
    }


def no_letter_share(table) -> float:
    """The share of titles without a single letter (any script): only emoji, digits or symbols,
    which no model can learn a category from (0.0 for an empty table)."""
    import pyarrow.compute as pc

    titles = table.column("title") if "title" in table.column_names else None
    if titles is None or len(titles) == 0:
        return 0.0
    has_letter = pc.fill_null(pc.match_substring_regex(titles, r"\pL"), False)
    return 1.0 - (pc.sum(has_letter).as_py() or 0) / len(titles)


def _parameters(settings: Settings) -> dict:
    return asdict(settings.thresholds)


def _checks(checkpoint_result) -> list[Check]:
    out = []
    for vr in checkpoint_result.run_results.values():
        suite = vr.suite_name
        for er in vr.results:
            cfg = er.expectation_config
            res = er.result or {}
            examples = res.get("partial_unexpected_list") or []
            observed = res.get("observed_value")
            if observed is None and res.get("unexpected_percent") is not None:
                observed = f"{res['unexpected_percent']:.3g}% unexpected"
            out.append(
                Check(
                    suite=suite,
                    expectation=cfg.type,
                    column=cfg.kwargs.get("column"),
                    severity=str(getattr(cfg.severity, "value", cfg.severity or "critical")),
                    success=bool(er.success),
                    description=cfg.description or "",
                    observed=observed if isinstance(observed, (int, float, str, type(None))) else str(observed),
                    unexpected_examples=[str(x)[:120] for x in examples[:10]],
                )
            )
    return out


def validate_partition(settings: Settings, run_date: str) -> dict:
    """Validate the committed version of the listings partition of ``run_date`` and record the
    outcome (passed or failed) on that version. Returns a report dict (XCom-sized); raises
    ValidationFailed when a critical expectation fails. An error that is not a verdict on the data
    records nothing: the version stays not validated."""
    from pipelines.data.lake import read_partition

    part = partition_dir(settings.listings_dir, run_date)
    v = current_version(part) if part.exists() else None
    if v is None:
        raise FileNotFoundError(f"no listings partition for {run_date} at {part}; run ingest first")
    table = read_partition(part, version=v.number)  # pinned: a re-ingest meanwhile is a new, unvalidated version
    metrics = partition_metrics(settings, run_date, table, read_manifest(part, v.number))
    try:
        report = validate_table(settings, run_date, table, metrics, str(part))
    except ValidationFailed as exc:
        exc.report["lake_version"] = v.number
        record_validation(part, v.number, FAILED, _record_detail(exc.report), settings.lock_timeout_s)
        raise
    report["lake_version"] = v.number
    record_validation(part, v.number, PASSED, _record_detail(report), settings.lock_timeout_s)
    return report


def _record_detail(report: dict) -> dict:
    return {
        "passed": report.get("passed"),
        "evaluated": report.get("evaluated"),
        "critical_failures": list(report.get("critical_failures", []))[:20],
        "report_json": report.get("report_json"),
        "data_docs_index": report.get("data_docs_index"),
    }


def validate_pending(settings: Settings, run_date: str) -> dict[str, dict]:
    """Validate, oldest first, every committed listings partition up to ``run_date`` whose version was
    never validated (ingested from the CLI, re-ingested, or a crash between commit and validation), as
    the DAG's validate task does: training runs after validation, never instead of it. An earlier
    partition that fails is recorded failed (and so left out of the dataset); the run date's own
    failure raises ValidationFailed. Returns {date: report} of the partitions validated here."""
    out: dict[str, dict] = {}
    for d, p in list_partitions(settings.listings_dir, upto=run_date):
        rec = validation_of(p)
        if rec["validation"] != NOT_VALIDATED:
            continue
        log.info(
            "lake partition ingest_date=%s (version %s) is not validated yet: validating it first", d, rec["version"]
        )
        try:
            out[d] = validate_partition(settings, d)
        except ValidationFailed as exc:
            if d == run_date:
                raise
            log.warning("lake partition ingest_date=%s failed validation: it is left out of the dataset (%s)", d, exc)
    return out


def validate_file(settings: Settings, path: str | Path, run_date: str, fmt: str = "auto") -> dict:
    """Preflight a raw input file: ingest it into a scratch lake, validate it against the real lake's
    earlier partitions, and write nothing to the real lake (the report lands under
    ``validation/preflight/``; GX runs are named ``meli_preflight__<date>``)."""
    import dataclasses
    import tempfile
    from datetime import UTC, datetime

    from pipelines.data.ingest import ingest
    from pipelines.data.lake import read_manifest, read_partition

    with tempfile.TemporaryDirectory(prefix="meli-preflight-") as scratch:
        scratch_settings = dataclasses.replace(settings, lake_uri=str(Path(scratch) / "lake"))
        result = ingest([path], run_date, scratch_settings, fmt=fmt, allow_empty=True)
        table = read_partition(Path(result.partition))
        manifest = read_manifest(Path(result.partition))
    metrics = partition_metrics(settings, run_date, table, manifest)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    report_dir = settings.home / "validation" / "preflight" / f"{Path(path).name}-{stamp}"
    return validate_table(
        settings, run_date, table, metrics, f"{path} (preflight: not ingested)", "meli_preflight", report_dir
    )


def validate_table(
    settings: Settings,
    run_date: str,
    table,
    metrics: dict,
    source: str,
    run_name: str = "meli_retrain",
    report_dir: Path | None = None,
) -> dict:
    """Run both checkpoints (rows, batch metrics) on an Arrow table; see validate_partition."""
    import pandas as pd
    from great_expectations.core.run_identifier import RunIdentifier

    ctx = gx_context(settings)
    metrics = {"no_letter_title_share": no_letter_share(table), **metrics}  # a caller's own wins
    metrics_df = pd.DataFrame([metrics])
    for col in (
        "volume_ratio",
        "unseen_category_share",
        "max_category_share_shift",
        "quarantine_ratio",
        "no_letter_title_share",
    ):
        metrics_df[col] = metrics_df[col].astype("float64")
    batches = {"listings_partition": table.to_pandas(), "listings_partition_metrics": metrics_df}
    run_id = RunIdentifier(run_name=f"{run_name}__{run_date}")
    checks: list[Check] = []
    pages: dict[str, str] = {}
    for name, frame in batches.items():
        result = ctx.checkpoints.get(name).run(
            batch_parameters={"dataframe": frame}, expectation_parameters=_parameters(settings), run_id=run_id
        )
        checks += _checks(result)  # the report keeps the values (shown as text by its readers)
        # the Data Docs page is built here (the checkpoints have no update_data_docs action) from the
        # stored result with every value from the data HTML-escaped: GX writes them into pages raw
        build_safe_data_docs(ctx, result)
        for ident in result.run_results:
            page = _page_for(ctx, ident)
            if page:
                pages[name] = page
    index = ctx.get_docs_sites_urls()[0]["site_url"].removeprefix("file://")
    from pipelines.data.data_docs import localize_site

    localize_site(Path(index).parent)  # offline: assets served from the site, not from CDNs
    critical = [c for c in checks if not c.success and c.severity == "critical"]
    warnings = [c for c in checks if not c.success and c.severity != "critical"]
    report = {
        "run_date": run_date,
        "source": source,
        "success": not critical,
        "evaluated": len(checks),
        "passed": sum(c.success for c in checks),
        "critical_failures": [c.line() for c in critical],
        "warnings": [c.line() for c in warnings],
        "metrics": metrics,
        "data_docs_index": index,
        "data_docs_pages": pages,
        "data_docs_dir": str(Path(index).parent),
    }
    out_dir = report_dir or settings.home / "validation" / run_date
    atomic_write_json(out_dir / "report.json", {**report, "checks": [asdict(c) for c in checks]})
    report["report_json"] = str(out_dir / "report.json")
    for line in summary_lines(report):
        log.info(line)
    if critical:
        names = ", ".join(f"{c.expectation}[{c.column}]" if c.column else c.expectation for c in critical)
        raise ValidationFailed(
            f"critical expectations failed for {run_date}: {names}. Data Docs: {report['data_docs_index']}", report
        )
    return report


def _escaped(value):
    """``value`` with every string in it (keys too) HTML-escaped: data shown as text on a GX page."""
    import html

    if isinstance(value, str):
        return html.escape(value, quote=True)
    if isinstance(value, dict):
        return {_escaped(k) if isinstance(k, str) else k: _escaped(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_escaped(v) for v in value]
    return value


def build_safe_data_docs(ctx, checkpoint_result) -> None:
    """Build the Data Docs pages of a checkpoint run from its stored results, each expectation's
    ``result`` (unexpected values, observed values, counts of values) and ``exception_info`` escaped
    first: GX's renderer puts them into the page as raw HTML (a category ``<img onerror=...>`` would be
    live markup on the api-server's origin). The results store keeps the escaped copy; the run's report
    (``_checks``) reads the values from the checkpoint result in memory, unescaped."""
    from great_expectations.data_context.types.resource_identifiers import ExpectationSuiteIdentifier

    store = ctx.validation_results_store
    for ident in checkpoint_result.run_results:
        stored = store.get(ident)
        for er in stored.results:
            er.result = _escaped(er.result or {})
            if er.exception_info:
                er.exception_info = _escaped(er.exception_info)
        store.set(ident, stored)
        ctx.build_data_docs(resource_identifiers=[ident, ExpectationSuiteIdentifier(name=stored.suite_name)])


def _page_for(ctx, ident) -> str | None:
    """The Data Docs page of one validation result (a file path), if GX can tell."""
    try:
        urls = ctx.get_docs_sites_urls(resource_identifier=ident)
        return urls[0]["site_url"].removeprefix("file://") if urls else None
    except Exception as exc:  # the index still links every result
        log.debug("no Data Docs page for result: %s", exc)
        return None


def summary_lines(report: dict) -> list[str]:
    lines = [
        f"validation {report['run_date']}: {'PASSED' if report['success'] else 'FAILED'} "
        f"({report['passed']}/{report['evaluated']} expectations passed, "
        f"{len(report['critical_failures'])} critical failures, {len(report['warnings'])} warnings)"
    ]
    lines += [f"  {x}" for x in report["critical_failures"] + report["warnings"]]
    lines.append(f"  Data Docs: {report['data_docs_index']}")
    return lines


def load_report(settings: Settings, run_date: str) -> dict:
    return json.loads((settings.home / "validation" / run_date / "report.json").read_text())


def run_key(dag_id: str, run_id: str) -> str:
    """The link file's name: readable (the ids with unsafe characters replaced) and collision-free (a
    hash of the exact pair: ``("x", "y__z")`` and ``("x__y", "z")``, or run ids differing only in
    ``:``/``+`` vs ``_``, get different files)."""
    import hashlib
    import re

    exact = hashlib.sha256(json.dumps([dag_id, run_id]).encode()).hexdigest()[:16]
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{dag_id}__{run_id}")[:150] + f"--{exact}"


def _legacy_run_key(dag_id: str, run_id: str) -> str:
    """The name links had before the hash suffix (still read, when they name the same run)."""
    import re

    return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{dag_id}__{run_id}")


def link_run(settings: Settings, dag_id: str, run_id: str, report: dict) -> Path:
    """Remember which Data Docs page belongs to an Airflow DAG run (read by the UI plugin)."""
    path = settings.home / "validation" / "by_run" / f"{run_key(dag_id, run_id)}.json"
    atomic_write_json(
        path,
        {
            "dag_id": dag_id,
            "run_id": run_id,
            **{
                k: report.get(k)
                for k in (
                    "run_date",
                    "success",
                    "data_docs_index",
                    "data_docs_pages",
                    "data_docs_dir",
                    "critical_failures",
                    "warnings",
                )
            },
        },
    )
    log.info("Data Docs for this run: %s", report.get("data_docs_pages") or report.get("data_docs_index"))
    return path


def run_link(settings: Settings, dag_id: str, run_id: str) -> dict | None:
    """The run's link (``link_run``); None when there is none or it names a page outside the GX
    folder (a link file is honoured only inside the folder it belongs to: pipelines/core/paths.py)."""
    from pipelines.core.paths import linked

    folder = settings.home / "validation" / "by_run"
    link = None
    for key in (run_key(dag_id, run_id), _legacy_run_key(dag_id, run_id)):
        path = folder / f"{key}.json"
        if path.exists():
            link = json.loads(path.read_text())
            break
    # the link must name this very run of this very DAG (a legacy name is shared by several)
    if not isinstance(link, dict) or link.get("dag_id") != dag_id or link.get("run_id") != run_id:
        return None
    named = [link.get("data_docs_index"), link.get("data_docs_dir"), *(link.get("data_docs_pages") or {}).values()]
    if any(p and linked(p, settings.gx_root) is None for p in named):
        return None
    return link
