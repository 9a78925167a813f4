"""Batch scoring: listings in any format ingestion reads -> Parquet predictions from ONE model version.

The alias (default ``champion``) is resolved to a version once, at the start; that version scores
every row even if the alias moves meanwhile. Input is streamed in chunks (bounded memory); rows that
cannot be scored are written with a null prediction and a reason, never dropped.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.core.fs import atomic_file
from pipelines.data.ingest import CHUNK_ROWS, MAX_TITLE_CHARS, check_input_file, content_ids, read_source
from pipelines.data.lake import commit_partition, resolve
from pipelines.settings import Settings

log = logging.getLogger(__name__)

SCORED_SCHEMA = pa.schema(
    [
        ("listing_id", pa.string()),
        ("title", pa.string()),
        ("predicted_category", pa.string()),
        ("probability", pa.float64()),
        ("top_k_categories", pa.list_(pa.string())),
        ("top_k_probabilities", pa.list_(pa.float64())),
        ("model_name", pa.string()),
        ("model_version", pa.string()),
        ("scored_at", pa.timestamp("us", tz="UTC")),
        ("status", pa.string()),  # scored | unscorable
        ("reason", pa.string()),  # why unscorable (null when scored)
        ("source_file", pa.string()),
        ("source_row", pa.int64()),
    ]
)


class NothingScorable(ValueError):
    """Not one row of the input could be scored (wrong file, wrong format, all titles empty)."""


class NotServed(ValueError):
    """A version other than the champion (or ``MELI_SCORING_VERSION``) was asked to write the lake's
    scored partition, or an output file was placed inside it."""


def served_versions(settings: Settings) -> set[str]:
    """The versions that may write the lake's ``scored`` partition: the champion's, and the one named
    by ``MELI_SCORING_VERSION``."""
    from pipelines.core.tracking import CHAMPION, alias_version, tracking_client

    champ = alias_version(tracking_client(settings), settings.model_name, CHAMPION)
    return {v for v in (str(champ.version) if champ else "", settings.scoring_version) if v}


def adhoc_output(settings: Settings, input_path: str | Path) -> Path:
    """An ad-hoc output file of its own: ``$MELI_HOME/adhoc/scored/<input>-<UTC time>.parquet``."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    stem = Path(str(input_path).rstrip("/")).name.split(".")[0] or "input"
    return settings.home / "adhoc" / "scored" / f"{stem}-{stamp}.parquet"


@dataclass
class ScoreResult:
    output: str
    model_name: str
    model_version: str
    rows: int
    scored: int
    unscorable: int
    reasons: dict
    seconds: float
    rows_per_s: float
    # the challenger's shadow scores and agreement report (pipelines/serving/shadow.py, run after these
    # scores by pipelines/flows/scoring.py): a small summary, {"error": ...} when the shadow part
    # failed, None when shadow is off or there is no challenger
    shadow: dict | None = None
    # the committed scores (the lake partition's version folder, or the output file) and whether they
    # went to the lake: what the shadow run compares against; not part of the summary
    written: str = field(default="", repr=False)
    lake: bool = field(default=False, repr=False)

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("written", "lake")}


def resolve_model(settings: Settings, model: str = "champion") -> tuple[str, str]:
    """Alias or version -> (name, version), resolved once."""
    import mlflow

    from pipelines.core.tracking import configure

    configure(settings)
    client = mlflow.MlflowClient()
    if str(model).isdigit():
        mv = client.get_model_version(settings.model_name, str(model))
    else:
        try:
            mv = client.get_model_version_by_alias(settings.model_name, model)
        except Exception as exc:
            raise LookupError(_not_found(client, settings, model)) from exc
    return settings.model_name, str(mv.version)


def _not_found(client, settings: Settings, model: str) -> str:
    """Why ``model`` names no version: no such registered model, no champion yet, or a typo."""
    name = settings.model_name
    try:
        rm = client.get_registered_model(name)
    except Exception:
        return f"model {name} not found in {settings.tracking_uri}: run the retraining first (or check MELI_MODEL_NAME)"
    aliases = sorted((rm.aliases or {}).keys())
    if model == "champion" and not aliases:
        return f"{name} has no champion yet (no version was promoted): pass --model VERSION, or promote one"
    versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
    known = f"aliases: {', '.join(aliases) or 'none'}; versions: {', '.join(map(str, versions)) or 'none'}"
    return f"--model {model!r} is not a version or alias of {name} ({known})"


def load_bundle(name: str, version: str):
    """The pyfunc of that exact version, unwrapped to its Bundle for batched inference."""
    import mlflow

    from pipelines.core.fs import BundleCorrupt

    try:
        model = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
    except BundleCorrupt as exc:  # one line naming the version and the file
        raise exc.for_version(version) from exc
    return model.unwrap_python_model().bundle


def _unscorable_reason(title: str | None, tokens: int) -> str | None:
    if title is None:
        return "missing_title"
    if not title.strip():
        return "empty_title"
    if len(title.strip()) > MAX_TITLE_CHARS:  # as ingest measures it: what trains is scored
        return "title_too_long"
    if tokens == 0:
        return "no_usable_tokens"
    return None


class Progress:
    def __init__(self, total_bytes: int, enabled: bool):
        self.bar = None
        if enabled and sys.stderr.isatty():
            try:
                from tqdm import tqdm

                self.bar = tqdm(unit=" rows", desc="scoring", mininterval=0.5)
            except ImportError:
                self.bar = None

    def update(self, n: int, done: int, t0: float) -> None:
        if self.bar is not None:
            self.bar.update(n)
        else:
            log.info("scored %d rows (%.0f rows/s)", done, done / max(time.perf_counter() - t0, 1e-9))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def score(
    settings: Settings,
    input_path: str | Path,
    output: str | Path | None = None,
    model: str = "champion",
    fmt: str = "auto",
    run_date: str | None = None,
    chunk_rows: int = CHUNK_ROWS,
    progress: bool = True,
    on_resolved: Callable[[str, str], None] | None = None,
    adhoc_unless_served: bool = False,
) -> ScoreResult:
    """Score ``input_path`` into ``output`` (a .parquet file) or, without it, into the lake's
    ``scored/run_date=D`` partition (a new version, committed atomically). An input with no
    scorable row raises ``NothingScorable`` and writes nothing.

    The challenger's shadow scores come after, from ``pipelines.flows.scoring.score_listings``.

    Only the champion (or ``MELI_SCORING_VERSION``) writes the scored partition: another version
    raises ``NotServed`` before anything is loaded, or with ``adhoc_unless_served`` (the DAG) scores
    to an ad-hoc file instead (``adhoc_output``) and says so. An output file inside ``lake/scored``
    is refused for every version: the partition is written only as a committed version."""
    if not Path(input_path).is_dir():  # a bad input fails before the model is loaded
        check_input_file(Path(input_path))
    if output is not None and Path(output).resolve().is_relative_to(settings.scored_dir.resolve()):
        raise NotServed(
            f"output {output} lies in the lake's scored partitions ({settings.scored_dir}): they are written "
            "only as committed versions (give a run date and no output)"
        )
    name, version = resolve_model(settings, model)
    if output is None and model != "champion" and version not in (served := served_versions(settings)):
        rule = (
            f"v{version} is not the champion ({', '.join(f'v{v}' for v in sorted(served)) or 'none'}): only the "
            "champion or MELI_SCORING_VERSION writes lake/scored"
        )
        if not adhoc_unless_served:
            raise NotServed(f"{rule}; score it to a file instead (an output, or the CLI without --run-date)")
        output = adhoc_output(settings, input_path)
        log.warning("%s; scoring to the ad-hoc file %s instead", rule, output)
    if on_resolved:
        on_resolved(name, version)  # hook for tests: e.g. move the alias mid-run
    log.info("scoring %s with %s version %s", input_path, name, version)
    bundle = load_bundle(name, version)
    stats = new_stats()
    t0 = time.perf_counter()
    if output is None:
        run_date = run_date or datetime.now(UTC).date().isoformat()
        out = settings.scored_dir / f"run_date={run_date}"
    else:
        out = Path(output)
    bar = Progress(0, progress)
    try:
        written = write_output(
            settings,
            out,
            output is None,
            lambda path: write_scores(path, input_path, fmt, chunk_rows, bundle, name, version, stats, bar, t0),
        )
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    result = ScoreResult(
        output=str(out),
        model_name=name,
        model_version=version,
        rows=stats["rows"],
        scored=stats["scored"],
        unscorable=stats["unscorable"],
        reasons=stats["reasons"],
        seconds=round(seconds, 3),
        rows_per_s=round(stats["rows"] / max(seconds, 1e-9), 1),
        written=str(written),
        lake=output is None,
    )
    log.info("scoring done: %s", result)
    return result


def new_stats() -> dict:
    return {"rows": 0, "scored": 0, "unscorable": 0, "reasons": {}}


def write_output(settings: Settings, out: Path, partition: bool, write: Callable[[Path], None]) -> Path:
    """Run ``write(path)`` into a new committed version of the lake partition ``out`` (``partition``)
    or atomically into the file ``out``; return the data file as committed."""
    if not partition:
        with atomic_file(out) as tmp:
            write(tmp)
        return out
    with commit_partition(out, settings.lake_keep_versions, settings.lock_timeout_s) as pending:
        write(pending.dir / "part-00000.parquet")
    return pending.dir / "part-00000.parquet"


def write_scores(
    path: Path,
    input_path: str | Path,
    fmt: str,
    chunk_rows: int,
    bundle,
    name: str,
    version: str,
    stats: dict,
    bar: Progress,
    t0: float,
) -> None:
    """Score the input chunk by chunk (bounded memory) with one model version into ``path``."""
    scored_at = datetime.now(UTC)
    src = str(Path(input_path).resolve())
    with pq.ParquetWriter(path, SCORED_SCHEMA, compression="zstd") as writer:
        for chunk in iter_chunks(input_path, fmt, chunk_rows):
            table = _score_chunk(chunk, bundle, name, version, scored_at, src, stats)
            writer.write_table(table)
            bar.update(table.num_rows, stats["rows"], t0)
    if stats["scored"] == 0:  # raised before the output is committed: earlier scores stay
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(stats["reasons"].items())) or "no rows"
        raise NothingScorable(f"{input_path}: nothing scorable in {stats['rows']} rows ({reasons}); nothing written")


def resolve_input(settings: Settings, given: str, asset_extras: list[dict] | None = None, confine: bool = False) -> str:
    """What to score: the given path; else the partition named by a triggering asset event; else the
    newest listings partition of the lake. ``confine`` (the DAG's ``input`` Param): the given path must
    lie under $MELI_HOME/landing, MELI_INPUT_ROOTS or the lake's listings (pipelines/core/paths.py); the
    events' extras are expected parsed already (``paths.event_extras``)."""
    from pipelines.data.lake import list_partitions

    if given:
        if confine:
            from pipelines.core.paths import check_inputs

            check_inputs(settings, [given], extra_roots=[settings.listings_dir])
        if not Path(given).exists():
            raise FileNotFoundError(f"scoring input {given} does not exist")
        return given
    named = [e for e in asset_extras or [] if e.get("partition") and Path(e["partition"]).exists()]
    if named:  # the newest run's partition (events of several runs can trigger one scoring run)
        return max(reversed(named), key=lambda e: str(e.get("run_date") or ""))["partition"]
    parts = list_partitions(settings.listings_dir)
    if not parts:
        raise FileNotFoundError(f"nothing to score: no input given and no partitions under {settings.listings_dir}")
    return str(parts[-1][1])


def event_run_date(source: str, asset_extras: list[dict] | None = None) -> str | None:
    """The run date of the asset event that named ``source`` (its scores belong to that date, not to
    the day a backfill or a late run happens to score them); None when no event named it."""
    dates = [e.get("run_date") for e in asset_extras or [] if e.get("partition") == source and e.get("run_date")]
    return max(dates) if dates else None


def iter_chunks(input_path: str | Path, fmt: str = "auto", chunk_rows: int = CHUNK_ROWS):
    """Chunks of a file, or of every part file of a lake partition directory."""
    path = Path(input_path)
    if path.is_dir():
        from pipelines.core.paths import confined

        # a lake partition: its committed version's files, a folder inside it (whatever _CURRENT says)
        path = confined(resolve(path), path)
        files = sorted(path.glob("*.parquet"))
        if not files:
            raise FileNotFoundError(f"{path} holds no .parquet files")
        for f in files:
            yield from read_source(f, "parquet", chunk_rows)
    else:
        yield from read_source(path, fmt, chunk_rows)


def _score_chunk(chunk, bundle, name, version, scored_at, src, stats) -> pa.Table:
    c = chunk.columns
    titles = c["title"]
    encoded = bundle.encode_keys([t if t is not None and len(t.strip()) <= MAX_TITLE_CHARS else None for t in titles])
    reasons = [_unscorable_reason(t, len(e)) for t, e in zip(titles, encoded)]
    ok = [i for i, r in enumerate(reasons) if r is None]
    n = len(titles)
    pred = [None] * n
    prob = [None] * n
    topc = [None] * n
    topp = [None] * n
    if ok:
        top, top_p = bundle.predict_topk_keys([encoded[i] for i in ok], k=3)
        labels = np.asarray(bundle.labels, dtype=object)
        for j, i in enumerate(ok):
            pred[i] = labels[top[j, 0]]
            prob[i] = float(top_p[j, 0])
            topc[i] = labels[top[j]].tolist()
            topp[i] = top_p[j].tolist()
    ids = list(c["id"])
    need = [i for i, v in enumerate(ids) if not v and titles[i] is not None]
    if need:
        # the ingest's id of the same row, so scores join back to the lake
        for i, g in zip(need, content_ids([titles[i] for i in need], [c["category"][i] for i in need])):
            ids[i] = g
    table = pa.table(
        {
            "listing_id": ids,
            "title": titles,
            "predicted_category": pred,
            "probability": prob,
            "top_k_categories": topc,
            "top_k_probabilities": topp,
            "model_name": [name] * n,
            "model_version": [version] * n,
            "scored_at": [scored_at] * n,
            "status": ["scored" if r is None else "unscorable" for r in reasons],
            "reason": reasons,
            "source_file": [src] * n,
            "source_row": chunk.rows,
        },
        schema=SCORED_SCHEMA,
    )
    # rows the reader could not parse (bad JSON, bad encoding...) are kept too, with their reason
    if chunk.rejected:
        bad = chunk.rejected
        m = len(bad)
        table = pa.concat_tables(
            [
                table,
                pa.table(
                    {
                        "listing_id": [None] * m,
                        "title": [None] * m,
                        "predicted_category": [None] * m,
                        "probability": [None] * m,
                        "top_k_categories": [None] * m,
                        "top_k_probabilities": [None] * m,
                        "model_name": [name] * m,
                        "model_version": [version] * m,
                        "scored_at": [scored_at] * m,
                        "status": ["unscorable"] * m,
                        "reason": [b[1] for b in bad],
                        "source_file": [src] * m,
                        "source_row": [b[0] for b in bad],
                    },
                    schema=SCORED_SCHEMA,
                ),
            ]
        )
        reasons = reasons + [b[1] for b in bad]
        table = table.sort_by("source_row")  # input order, the unparsable rows in their place
    stats["rows"] += table.num_rows
    stats["scored"] += len(ok)
    stats["unscorable"] += table.num_rows - len(ok)
    for r in reasons:
        if r is not None:
            stats["reasons"][r] = stats["reasons"].get(r, 0) + 1
    return table
