"""The Parquet lake: versioned partitions with one atomic commit point each, and reading the labelled dataset."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.core import faults
from pipelines.core.fs import atomic_write_json, fsync_tree, writing
from pipelines.core.locks import file_lock

SCHEMA_VERSION = 1
LISTING_SCHEMA = pa.schema(
    [
        ("listing_id", pa.string()),
        ("title", pa.string()),
        ("language", pa.string()),
        ("label_quality", pa.string()),
        ("category", pa.string()),
        ("split", pa.string()),
        ("source_file", pa.string()),
        ("source_row", pa.int64()),
        ("ingest_date", pa.string()),
    ],
    metadata={"meli_schema_version": str(SCHEMA_VERSION)},
)
QUARANTINE_SCHEMA = pa.schema(
    [
        ("source_file", pa.string()),
        ("source_row", pa.int64()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("raw", pa.string()),
        ("ingest_date", pa.string()),
        # the raw text's length in bytes: raw keeps at most the first 8 KiB (RAW_BYTES in
        # pipelines/data/ingest/sources.py); null in a quarantine written before this column existed
        ("raw_bytes", pa.int64()),
    ]
)


def partition_dir(root: Path, run_date: str, key: str = "ingest_date") -> Path:
    """The logical path of a partition (``root/ingest_date=D``); its files are in a version dir."""
    return Path(root) / f"{key}={run_date}"


# ------------------------------------------------------------------------------------------
# Versioned partitions: one atomic commit point per partition
# ------------------------------------------------------------------------------------------
# A partition directory holds immutable version directories and one pointer:
#
#   ingest_date=D/_CURRENT             {"version": 3, "dir": "v000003-1a2b3c4d", "history": [...]}
#   ingest_date=D/v000003-1a2b3c4d/    part-00000.parquet, _manifest.json, quarantine/part-00000.parquet
#
# A writer takes the partition's lock, writes a new version dir, then replaces _CURRENT (one
# os.replace: the commit point). Listings, quarantine and manifest of a version become visible
# together or not at all; a writer killed before the replace leaves only an unreferenced dir, which
# the next writer removes under the lock. The last KEEP_VERSIONS committed versions stay readable
# (time travel: a model's dataset records the version of every partition it read).
POINTER = "_CURRENT"
KEEP_VERSIONS = 3
LOCK_TIMEOUT_S = 900.0


class LakeError(RuntimeError):
    pass


@dataclass(frozen=True)
class Version:
    number: int  # 0: a partition written before versioning (files directly in the partition dir)
    dir: Path
    committed_at: str = ""


def _read_pointer(partition: Path) -> dict | None:
    path = Path(partition) / POINTER
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise LakeError(f"{path}: unreadable commit pointer ({exc})") from exc


def _legacy(partition: Path) -> bool:
    p = Path(partition)
    return (p / "_manifest.json").is_file() or any(p.glob("part-*.parquet"))


def current_version(partition: Path) -> Version | None:
    """The committed version readers see; None when the partition was never committed."""
    partition = Path(partition)
    ptr = _read_pointer(partition)
    if ptr is None:
        return Version(0, partition) if _legacy(partition) else None
    return Version(int(ptr["version"]), partition / ptr["dir"], ptr.get("committed_at", ""))


def versions(partition: Path) -> list[Version]:
    """The committed versions still readable, newest first."""
    partition = Path(partition)
    ptr = _read_pointer(partition)
    if ptr is None:
        cur = current_version(partition)
        return [cur] if cur else []
    entries = [ptr, *ptr.get("history", [])]
    return [Version(int(e["version"]), partition / e["dir"], e.get("committed_at", "")) for e in entries]


def _kept_version(partition: Path, version: int | None = None) -> Version:
    """The committed (or given, still kept) version of ``partition``, its files present.

    Raises FileNotFoundError for a partition never committed and LakeError for a version not kept
    or a committed version whose files are gone (never silently an empty partition)."""
    partition = Path(partition)
    if version is None:
        v = current_version(partition)
        if v is None:
            raise FileNotFoundError(f"{partition}: no committed version (never written, or its writer died)")
    else:
        v = next((x for x in versions(partition) if x.number == int(version)), None)
        if v is None:
            kept = [x.number for x in versions(partition)]
            raise LakeError(f"{partition}: version {version} is not kept (readable versions: {kept})")
    if not v.dir.is_dir():
        raise LakeError(f"{partition}: committed version {v.number} is missing its files ({v.dir})")
    return v


def data_dir(partition: Path, version: int | None = None) -> Path:
    """The directory holding the files of ``partition`` at ``version`` (default: the committed one);
    raises as ``_kept_version`` does."""
    return _kept_version(partition, version).dir


def resolve(path: Path) -> Path:
    """A partition's committed data dir when ``path`` is a logical partition; else ``path``."""
    path = Path(path)
    if (path / POINTER).exists():
        return data_dir(path)
    return path


def lock_path(partition: Path) -> Path:
    partition = Path(partition)
    return partition.parent / "_locks" / f"{partition.name}.lock"


@dataclass
class Pending:
    """A version being written: fill ``dir``; it is committed when the ``with`` block ends."""

    partition: Path
    number: int
    dir: Path


@contextmanager
def commit_partition(
    partition: Path, keep: int = KEEP_VERSIONS, lock_timeout_s: float = LOCK_TIMEOUT_S
) -> Iterator[Pending]:
    """Write a new version of ``partition`` and commit it atomically (see the layout above).

    Writers of one partition are serialised by a lock (a second waits, then writes its own version
    on top: never a mix of two writers' files). On error the new version is removed and the
    committed one stays as it was."""
    partition = Path(partition)
    with file_lock(lock_path(partition), lock_timeout_s, f"lake partition {partition}"):
        _recover_unversioned(partition)
        partition.mkdir(parents=True, exist_ok=True)
        _collect(partition)  # leftovers of a writer killed before or after its commit
        cur = current_version(partition)
        number = (cur.number if cur else 0) + 1
        pending = Pending(partition, number, partition / f"v{number:06d}-{uuid.uuid4().hex[:8]}")
        pending.dir.mkdir()
        try:
            with writing(partition):
                yield pending
                fsync_tree(pending.dir)
            faults.point("lake.staged")
        except BaseException:
            shutil.rmtree(pending.dir, ignore_errors=True)
            if cur is None and not any(partition.iterdir()):
                partition.rmdir()  # a first write that failed leaves no partition behind
            raise
        prev = _read_pointer(partition)
        history = ([{k: prev[k] for k in ("version", "dir", "committed_at")}] + prev.get("history", [])) if prev else []
        pointer = {
            "version": number,
            "dir": pending.dir.name,
            "committed_at": datetime.now(UTC).isoformat(),
            "history": history[: max(0, keep - 1)],
        }
        atomic_write_json(partition / POINTER, pointer)  # the commit point
        faults.point("lake.committed")
        _collect(partition)


def _recover_unversioned(partition: Path) -> None:
    """Leftovers of the pre-versioning writer (two renames): a partition set aside by a writer killed
    between them is put back; its temp dirs are removed. Call under the lock."""
    parent, name = partition.parent, partition.name
    for old in sorted(parent.glob(f".old-{name}-*"), key=lambda p: p.stat().st_mtime, reverse=True):
        if not partition.exists():
            os.replace(old, partition)
        else:
            shutil.rmtree(old, ignore_errors=True)
    for tmp in parent.glob(f".tmp-{name}-*"):
        shutil.rmtree(tmp, ignore_errors=True)


def _collect(partition: Path) -> None:
    """Remove what no committed version needs: uncommitted or superseded version dirs, files of a
    pre-versioning partition once a version supersedes them, temp files. Call under the lock."""
    ptr = _read_pointer(partition)
    keep = {ptr["dir"], *(e["dir"] for e in ptr.get("history", []))} if ptr else set()
    if ptr is not None:  # files of a pre-versioning partition, superseded by the first commit
        for f in [*partition.glob("part-*.parquet"), partition / "_manifest.json", partition / VALIDATION_FILE]:
            f.unlink(missing_ok=True)
    for child in partition.iterdir():
        if child.name in keep or child.name == POINTER:
            continue
        if child.is_dir() and (child.name.startswith("v") or child.name.startswith(".")):
            shutil.rmtree(child, ignore_errors=True)
        elif child.name.startswith(".") and child.name.endswith(".tmp"):
            child.unlink(missing_ok=True)


def list_partitions(root: Path, upto: str | None = None, key: str = "ingest_date") -> list[tuple[str, Path]]:
    """Committed partitions (date, logical path), oldest first. A partition whose committed version
    lost its files is listed (reading it raises); one never committed is not."""
    root = Path(root)
    if not root.exists():
        return []
    out = []
    for p in sorted(root.iterdir()):
        if p.is_dir() and p.name.startswith(f"{key}="):
            d = p.name.split("=", 1)[1]
            if (upto is None or d <= upto) and current_version(p) is not None:
                out.append((d, p))
    return out


def snapshot(root: Path, upto: str | None = None) -> dict[str, int]:
    """{date: committed version} of every partition up to ``upto``: what one read is pinned to."""
    return {d: current_version(p).number for d, p in list_partitions(root, upto)}  # type: ignore[union-attr]


# ------------------------------------------------------------------------------------------
# Validation outcomes: only a version that passed validation is trained on
# ------------------------------------------------------------------------------------------
# Validating a version records its outcome in that version's own folder, after the commit:
#
#   ingest_date=D/v000003-1a2b3c4d/_validation.json   {"version": 3, "validation": "passed", ...}
#
# (a pre-versioning partition, version 0: ``ingest_date=D/_validation.json``). One atomic write is
# the commit point of the outcome. A version without a record reads "not_validated": a fresh ingest,
# a re-ingest (its new version starts unvalidated) and a crash between the commit and the record
# alike; never "passed". A record names the version it judged, and lives and goes with its files.
VALIDATION_FILE = "_validation.json"
PASSED, FAILED, NOT_VALIDATED = "passed", "failed", "not_validated"
EXCLUDED_BECAUSE = {FAILED: "failed validation", NOT_VALIDATED: "not validated"}


class NotEligible(LakeError):
    """A partition a run must train on did not pass validation (one line, for the CLI and the task log)."""


def record_validation(
    partition: Path, version: int, outcome: str, detail: dict | None = None, lock_timeout_s: float = LOCK_TIMEOUT_S
) -> dict:
    """Record that ``version`` of ``partition`` passed or failed validation (atomically, under the
    partition's lock so that no writer collects the version meanwhile). Returns the record."""
    if outcome not in (PASSED, FAILED):
        raise ValueError(f"a validation outcome is {PASSED!r} or {FAILED!r}, not {outcome!r}")
    partition = Path(partition)
    with file_lock(lock_path(partition), lock_timeout_s, f"lake partition {partition}"):
        v = _kept_version(partition, version)
        record = {
            **(detail or {}),
            "version": v.number,
            "dir": v.dir.name,
            "validation": outcome,
            "validated_at": datetime.now(UTC).isoformat(),
        }
        atomic_write_json(v.dir / VALIDATION_FILE, record)
    return record


def validation_of(partition: Path, version: int | None = None) -> dict:
    """The validation record of ``partition``'s committed (or given) version; ``{"validation":
    "not_validated", ...}`` when it has none. Raises as ``data_dir`` does for a version whose files are gone."""
    v = _kept_version(partition, version)
    try:
        record = json.loads((v.dir / VALIDATION_FILE).read_text())
    except FileNotFoundError:
        record = None
    except (OSError, ValueError) as exc:
        raise LakeError(f"{v.dir / VALIDATION_FILE}: unreadable validation record ({exc})") from exc
    if (
        not isinstance(record, dict)
        or record.get("version") != v.number
        or record.get("validation") not in (PASSED, FAILED)
    ):
        return {"version": v.number, "dir": v.dir.name, "validation": NOT_VALIDATED}
    return record


def eligible_snapshot(root: Path, upto: str | None = None) -> tuple[dict[str, int], list[dict]]:
    """(``snapshot`` of the partitions up to ``upto`` whose committed version passed validation, the
    others: ``{ingest_date, version, validation, reason}`` each, oldest first)."""
    snap: dict[str, int] = {}
    excluded: list[dict] = []
    for d, p in list_partitions(root, upto):
        rec = validation_of(p)
        if rec["validation"] == PASSED:
            snap[d] = rec["version"]
        else:
            excluded.append(
                {
                    "ingest_date": d,
                    "version": rec["version"],
                    "validation": rec["validation"],
                    "reason": EXCLUDED_BECAUSE[rec["validation"]],
                }
            )
    return snap, excluded


def data_version(snap: dict[str, int]) -> str:
    """A short id of a snapshot: equal ids, equal data (the versions are immutable)."""
    return hashlib.sha256(json.dumps(sorted(snap.items())).encode()).hexdigest()[:16]


def read_manifest(partition: Path, version: int | None = None) -> dict:
    """The manifest of a partition's committed (or given) version; {} when never committed."""
    try:
        path = data_dir(partition, version) / "_manifest.json"
    except FileNotFoundError:
        return {}
    return json.loads(path.read_text()) if path.exists() else {}


def read_partition(partition: Path, columns: list[str] | None = None, version: int | None = None) -> pa.Table:
    files = sorted(data_dir(partition, version).glob("part-*.parquet"))
    if not files:
        return LISTING_SCHEMA.empty_table().select(columns or LISTING_SCHEMA.names)
    return pa.concat_tables(pq.read_table(f, columns=columns) for f in files)


def read_quarantine(partition: Path, version: int | None = None) -> pa.Table:
    """The quarantined rows of a listings partition's committed (or given) version."""
    files = sorted((data_dir(partition, version) / "quarantine").glob("part-*.parquet"))
    if not files:
        return QUARANTINE_SCHEMA.empty_table()
    table = pa.concat_tables(pq.read_table(f) for f in files)
    if "raw_bytes" not in table.column_names:  # written before raw was capped
        table = table.append_column("raw_bytes", pa.nulls(table.num_rows, pa.int64()))
    return table


def load_listings(
    root: Path, upto: str | None = None, columns: list[str] | None = None, snap: dict[str, int] | None = None
) -> pa.Table:
    """All listing partitions up to ``upto`` (inclusive), deduplicated by listing_id keeping the
    newest ingest_date (re-delivered rows are recognised, never counted twice). ``snap`` pins the
    version of each partition (time travel within the kept versions)."""
    snap = snapshot(root, upto) if snap is None else snap
    if not snap:
        raise FileNotFoundError(f"no listing partitions under {root}" + (f" up to {upto}" if upto else ""))
    need = list(dict.fromkeys((columns or LISTING_SCHEMA.names) + ["listing_id", "ingest_date"]))
    table = pa.concat_tables(read_partition(partition_dir(root, d), need, v) for d, v in sorted(snap.items()))
    if len(snap) > 1:
        # newest first, then keep the first occurrence of each id
        order = pc.sort_indices(table, sort_keys=[("ingest_date", "descending")])
        table = table.take(order)
        ids = table.column("listing_id").to_pylist()
        seen: set[str] = set()
        keep = [i for i, x in enumerate(ids) if not (x in seen or seen.add(x))]
        table = table.take(pa.array(keep, type=pa.int64()))
    return table.select(columns) if columns else table


def partitions_lineage(root: Path, upto: str | None = None, snap: dict[str, int] | None = None) -> list[dict]:
    """Manifest summaries of the partitions (at the versions of ``snap``) a dataset is made of."""
    snap = snapshot(root, upto) if snap is None else snap
    out = []
    for d, v in sorted(snap.items()):
        p = partition_dir(root, d)
        m = read_manifest(p, v)
        out.append(
            {
                "ingest_date": d,
                "path": str(p),
                "version": v,
                "rows": m.get("totals", {}).get("rows_written"),
                "sources": [{"path": s.get("path"), "sha256": s.get("sha256")} for s in m.get("sources", [])],
            }
        )
    return out


def status(root: Path, run_date: str | None = None) -> dict:
    """What readers see, per listings partition: rows, quarantined rows, committed version and its
    validation outcome (passed / failed / not_validated: only a passed version is trained on)."""
    out = []
    for d, p in list_partitions(root):
        if run_date and d != run_date:
            continue
        v = current_version(p)
        entry = {"ingest_date": d, "version": v.number, "committed_at": v.committed_at, "path": str(p)}
        try:
            m = read_manifest(p)
            entry["validation"] = validation_of(p, v.number)["validation"]
            entry["rows"] = m.get("totals", {}).get("rows_written")
            entry["quarantined"] = m.get("totals", {}).get("rows_quarantined")
            entry["kept_versions"] = [x.number for x in versions(p)]
        except LakeError as exc:
            entry.update(rows=None, quarantined=None, validation=None, error=str(exc))
        out.append(entry)
    return {"root": str(root), "partitions": out}
