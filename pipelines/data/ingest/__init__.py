"""Ingestion: MeLi listing files -> partitioned Parquet lake, with quarantine and a manifest. Every row read ends
either in ``lake/listings/ingest_date=D/`` or in ``lake/quarantine/ingest_date=D/`` with a reason code; the
manifest records the counts and the conservation check (rows read = rows written + rows quarantined). Files
are streamed in chunks, so memory is bounded, also against hostile input: lines, CSV records and gzip
inflation are capped (``Limits``). Speed: files are read in multi-MiB blocks (gzip inflated on a helper
thread), JSON chunks are parsed by pyarrow in C++ (falling back to per-line parsing only for the part of a
chunk holding a bad line), and the row checks, content ids and splits run column-wise on Arrow arrays. One
module per concern: - ``sources``: bytes (plain or gzip, in blocks), format detection, checksums, the
``Chunk`` of records; - ``jsonl``, ``csv``, ``parquet``: one reader per format; ``read``: the dispatch over
them; - ``rules``: the quarantine reasons (one table) and the row checks of a chunk; - ``ids``: content ids,
splits, the seen-id set; - ``writer``: ``ingest()``, which writes a run's sources as one committed version of
its partition."""

from pipelines.exports import lazy_exports

EXPORTS = {
    "csv": ("read_csv",),
    "ids": (
        "Dedup",
        "SPLITS",
        "SPLIT_NAMES",
        "assign_split",
        "content_ids",
        "hash64",
        "listing_ids",
        "split_codes",
        "string_bytes",
        "strip_or_none",
    ),
    "jsonl": (
        "read_jsonl",
        "read_jsonl_chunks",
    ),
    "parquet": (
        "read_parquet",
        "read_parquet_chunks",
    ),
    "read": (
        "FORMATS",
        "read_chunks",
        "read_source",
    ),
    "rules": (
        "LANGUAGES",
        "MAX_TITLE_CHARS",
        "QUARANTINE_REASONS",
        "REASONS",
        "check_chunk",
        "quarantine_table",
    ),
    "sources": (
        "BLOCK_BYTES",
        "Bytes",
        "CHUNK_ROWS",
        "Chunk",
        "FIELDS",
        "ID_FIELDS",
        "IngestError",
        "Limits",
        "LongLine",
        "MAX_INFLATED_BYTES",
        "MAX_INFLATE_RATIO",
        "MAX_LINE_BYTES",
        "MAX_RECORD_LINES",
        "Prefetch",
        "RATIO_AFTER_BYTES",
        "RAW_BYTES",
        "as_lists",
        "as_str",
        "check_input_file",
        "detect_format",
        "empty_columns",
        "head_bytes",
        "line_regions",
        "utf8_ok",
    ),
    "writer": (
        "IngestResult",
        "ingest",
    ),
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, EXPORTS)
