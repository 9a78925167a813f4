"""Shadow scoring: the newest registered version above the one served (a challenger the gate
rejected, one pending approval, or one not yet gated) scores the same batch beside it, and an
agreement report says how often the two agree, where they flip and how their confidence moves.

Shadow scores land in ``lake/shadow/run_date=D/`` (or ``<output stem>.shadow-v<N>.parquet`` beside
an explicit output file); reports in ``$MELI_HOME/shadow/<model>/v<challenger>/<run_date>.json|.md``,
a run in the ``<experiment>-shadow`` MLflow experiment and tags on the challenger's version. A
failure here never touches the served scores: ``run_shadow`` returns ``{"error": ...}``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.core.fs import atomic_write_bytes, atomic_write_json
from pipelines.core.tracking import side_experiment, tracking_client
from pipelines.serving.score import Progress, ScoreResult, load_bundle, new_stats, write_output, write_scores
from pipelines.settings import Settings

log = logging.getLogger(__name__)

TOP_CATEGORIES, TOP_TO = 20, 5
COLUMNS = ["source_row", "listing_id", "status", "predicted_category", "probability"]


def shadow_candidate(settings: Settings, served_version: str) -> str | None:
    """The newest registered version of the model above ``served_version``; None when there is none."""
    versions = tracking_client(settings).search_model_versions(f"name='{settings.model_name}'")
    newer = [int(v.version) for v in versions if int(v.version) > int(served_version)]
    return str(max(newer)) if newer else None


def report_dir(settings: Settings, version: str) -> Path:
    return settings.home / "shadow" / settings.model_name / f"v{version}"


def latest_report(settings: Settings, version: str) -> dict | None:
    """The newest agreement report (by its ``created_at``) of challenger ``version``; None if none."""
    reports = [json.loads(p.read_text()) for p in report_dir(settings, version).glob("*.json")]
    return max(reports, key=lambda r: str(r.get("created_at", "")), default=None)


# ------------------------------------------------------------------------------------------
# Agreement: two scored outputs of the same input, row by row, in bounded memory
# ------------------------------------------------------------------------------------------
def _aligned(a: Iterable[pa.RecordBatch], b: Iterable[pa.RecordBatch]) -> Iterator[tuple[pa.Table, pa.Table]]:
    """Equal-length slices of two batch streams (their batch boundaries may differ)."""
    ita, itb = _tables(a), _tables(b)
    x, y = next(ita, None), next(itb, None)
    while x is not None and y is not None:
        n = min(x.num_rows, y.num_rows)
        yield x.slice(0, n), y.slice(0, n)
        x = x.slice(n) if x.num_rows > n else next(ita, None)
        y = y.slice(n) if y.num_rows > n else next(itb, None)
    if x is not None or y is not None:
        raise ValueError("the champion and shadow outputs have different row counts")


def _tables(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.Table]:
    for batch in batches:
        if batch.num_rows:
            yield pa.Table.from_batches([batch])


def agreement(champion: Iterable[pa.RecordBatch], challenger: Iterable[pa.RecordBatch]) -> dict:
    """Agreement of two scored outputs (SCORED_SCHEMA batches, same rows in the same order) over the
    rows both scored: the share that agree, the flips per champion category, the confidence shift."""
    pairs: list[pa.Table] = []
    n = agree = more = dis = 0
    sums = np.zeros(4)  # champion p, challenger p, champion p on disagreements, challenger p on them
    for a, b in _aligned(champion, challenger):
        ids_a, ids_b = (pc.fill_null(t["listing_id"], "") for t in (a, b))
        if not (pc.all(pc.equal(a["source_row"], b["source_row"])).as_py() and pc.all(pc.equal(ids_a, ids_b)).as_py()):
            raise ValueError("the champion and shadow outputs are not the same rows in the same order")
        both = pc.and_(pc.equal(a["status"], "scored"), pc.equal(b["status"], "scored"))
        ca, cb = pc.filter(a["predicted_category"], both), pc.filter(b["predicted_category"], both)
        p_champ, p_chall = (pc.filter(t["probability"], both).to_numpy() for t in (a, b))
        same = pc.equal(ca, cb).to_numpy()
        n += len(same)
        agree += int(same.sum())
        more += int((p_chall > p_champ).sum())
        dis += int((~same).sum())
        sums += [p_champ.sum(), p_chall.sum(), p_champ[~same].sum(), p_chall[~same].sum()]
        pair = pa.table({"champion": ca, "challenger": cb}).group_by(["champion", "challenger"])
        pairs.append(pair.aggregate([([], "count_all")]))
    return {
        "rows": n,
        "agree": agree,
        "agreement": _ratio(agree, n),
        "flips_by_category": _flips(pairs),
        "confidence": {
            "champion_mean": _ratio(sums[0], n),
            "challenger_mean": _ratio(sums[1], n),
            "shift": _ratio(sums[1] - sums[0], n),
            "challenger_more_confident_share": _ratio(more, n),
            "on_disagreements": {"champion_mean": _ratio(sums[2], dis), "challenger_mean": _ratio(sums[3], dis)},
        },
    }


def _ratio(x: float, n: int) -> float | None:
    return float(x / n) if n else None


def _flips(pairs: list[pa.Table]) -> list[dict]:
    """The top categories of the champion by flips: rows, flips, their share and where they went."""
    if not pairs:
        return []
    t = pa.concat_tables(pairs).group_by(["champion", "challenger"]).aggregate([("count_all", "sum")])
    champ = t["champion"].to_numpy(zero_copy_only=False).astype(str)
    chall = t["challenger"].to_numpy(zero_copy_only=False).astype(str)
    count = t["count_all_sum"].to_numpy()
    cats, inv = np.unique(champ, return_inverse=True)
    rows = np.bincount(inv, weights=count, minlength=len(cats)).astype(int)
    flipped = champ != chall
    flips = np.bincount(inv[flipped], weights=count[flipped], minlength=len(cats)).astype(int)
    order = [i for i in np.lexsort((cats, -rows, -flips)) if flips[i] > 0][:TOP_CATEGORIES]
    out = []
    for i in order:  # at most TOP_CATEGORIES categories, not rows
        sel = np.flatnonzero(flipped & (inv == i))
        sel = sel[np.lexsort((chall[sel], -count[sel]))][:TOP_TO]
        out.append(
            {
                "champion_category": str(cats[i]),
                "rows": int(rows[i]),
                "flips": int(flips[i]),
                "flip_share": float(flips[i] / rows[i]),
                "to": {str(chall[j]): int(count[j]) for j in sel},
            }
        )
    return out


def _batches(path: Path) -> Iterator[pa.RecordBatch]:
    yield from pq.ParquetFile(path).iter_batches(batch_size=65536, columns=COLUMNS)


# ------------------------------------------------------------------------------------------
# Run once the served scores are committed (pipelines/flows/scoring.py)
# ------------------------------------------------------------------------------------------
def run_shadow(
    settings: Settings,
    served: ScoreResult,
    input_path: str | Path,
    fmt: str,
    chunk_rows: int,
    run_date: str | None,
    served_file: Path,
    lake: bool,
    progress: bool = False,
) -> dict | None:
    """Score the input with the challenger beside ``served`` (a ScoreResult) and report the
    agreement; None when no version is newer than the served one; {"error": ...} on any failure."""
    try:
        challenger = shadow_candidate(settings, served.model_version)
        if challenger is None:
            log.info("shadow: no registered version above v%s; nothing to shadow", served.model_version)
            return None
        return _shadow(settings, served, challenger, input_path, fmt, chunk_rows, run_date, served_file, lake, progress)
    except Exception as exc:  # the served scores are committed: report, never undo them
        log.warning("shadow scoring failed (served scores kept in %s): %s", served.output, exc, exc_info=True)
        return {"error": f"{type(exc).__name__}: {exc}"}


def _shadow(
    settings: Settings,
    served: ScoreResult,
    challenger: str,
    input_path: str | Path,
    fmt: str,
    chunk_rows: int,
    run_date: str | None,
    served_file: Path,
    lake: bool,
    progress: bool,
) -> dict:

    name = served.model_name
    run_date = run_date or datetime.now(UTC).date().isoformat()
    if lake:
        out = settings.shadow_dir / f"run_date={run_date}"
    else:
        out = Path(served.output).with_name(f"{Path(served.output).stem}.shadow-v{challenger}.parquet")
    log.info("shadow: scoring %s with %s v%s beside v%s", input_path, name, challenger, served.model_version)
    bundle = load_bundle(name, challenger)
    stats, t0, bar = new_stats(), time.perf_counter(), Progress(0, progress)
    try:
        shadow_file = write_output(
            settings,
            out,
            lake,
            lambda path: write_scores(path, input_path, fmt, chunk_rows, bundle, name, challenger, stats, bar, t0),
        )
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    numbers = agreement(_batches(served_file), _batches(shadow_file))
    report = {
        "model_name": name,
        "champion_version": served.model_version,
        "challenger_version": challenger,
        "run_date": run_date,
        "input": str(Path(input_path).resolve()),
        "champion_output": served.output,
        "shadow_output": str(out),
        **numbers,
        "created_at": datetime.now(UTC).isoformat(),
    }
    report = _record(settings, report, stem=run_date if lake else f"{run_date}.{Path(served.output).stem}")
    keys = ("champion_version", "challenger_version", "shadow_output", "rows", "agreement", "report_json", "report_md")
    summary = {k: report[k] for k in keys} | {
        "confidence_shift": report["confidence"]["shift"],
        "mlflow_run_id": report["mlflow_run_id"],
        "seconds": round(seconds, 3),
    }
    return summary


def _record(settings: Settings, report: dict, stem: str) -> dict:
    """Write the report (JSON + Markdown, atomically), log it as a run of the ``-shadow`` experiment,
    tag the challenger's version with it; returns the report with its paths and run id."""
    from pipelines.core.tracking import finished_run, log_report

    client = tracking_client(settings)
    name, ch, champ = report["model_name"], report["challenger_version"], report["champion_version"]
    folder = report_dir(settings, ch)
    report = {
        **report,
        "report_json": str(folder / f"{stem}.json"),
        "report_md": str(folder / f"{stem}.md"),
    }
    run = client.create_run(
        side_experiment(settings, "shadow", client),
        run_name=f"shadow-v{ch}-vs-v{champ}-{report['run_date']}",
        tags={
            "meli.model_name": name,
            "meli.challenger_version": ch,
            "meli.champion_version": champ,
            "meli.run_date": report["run_date"],
            "meli.input": report["input"][:4000],
            "meli.shadow_output": report["shadow_output"][:4000],
        },
    )
    report["mlflow_run_id"] = run.info.run_id
    with finished_run(client, run.info.run_id):
        atomic_write_json(Path(report["report_json"]), report)
        atomic_write_bytes(Path(report["report_md"]), markdown(report).encode())
        metrics = {
            "agreement": report["agreement"],
            "confidence_shift": report["confidence"]["shift"],
            "challenger_more_confident_share": report["confidence"]["challenger_more_confident_share"],
            "rows": report["rows"],
        }
        log_report(client, run.info.run_id, metrics, [report["report_json"], report["report_md"]])
    tags = {
        "meli.shadow_agreement": "" if report["agreement"] is None else f"{report['agreement']:.6f}",
        "meli.shadow_report": report["report_json"],
        "meli.shadow_mlflow_run": run.info.run_id,
    }
    for k, v in tags.items():
        client.set_model_version_tag(name, ch, k, v)
    return report


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2%}"


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.4f}"


def markdown(r: dict) -> str:
    """The report for a person: agreement, the top flips, the confidence shift."""
    c = r["confidence"]
    lines = [
        f"# Shadow: {r['model_name']} v{r['challenger_version']} vs champion v{r['champion_version']}"
        f" ({r['run_date']})",
        "",
        f"- agreement: **{_pct(r['agreement'])}** ({r['agree']} of {r['rows']} rows both scored)",
        f"- mean top-1 probability: champion {_pct(c['champion_mean'])}, challenger {_pct(c['challenger_mean'])} "
        f"(shift {_num(c['shift'])}); challenger more confident on {_pct(c['challenger_more_confident_share'])}",
        f"- on disagreements: champion {_pct(c['on_disagreements']['champion_mean'])}, "
        f"challenger {_pct(c['on_disagreements']['challenger_mean'])}",
        f"- input: `{r['input']}`; shadow scores: `{r['shadow_output']}`; MLflow run `{r.get('mlflow_run_id', '')}`",
        "",
    ]
    if r["flips_by_category"]:
        lines += [
            "| champion category | rows | flips | flip share | challenger says instead |",
            "|---|---|---|---|---|",
        ]
        for f in r["flips_by_category"]:
            to = ", ".join(f"{k} ({v})" for k, v in f["to"].items())
            lines.append(f"| {f['champion_category']} | {f['rows']} | {f['flips']} | {_pct(f['flip_share'])} | {to} |")
    else:
        lines.append("No flips: the two versions agree on every row both scored.")
    return "\n".join(lines) + "\n"
