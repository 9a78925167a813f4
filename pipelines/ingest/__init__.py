"""Ingestion: MeLi listing files -> partitioned Parquet lake, with quarantine and a manifest.

Every row read ends either in ``lake/listings/ingest_date=D/`` or in ``lake/quarantine/ingest_date=D/``
with a reason code; the manifest records the counts and the conservation check
(rows read = rows written + rows quarantined). Files are streamed in chunks, so memory is bounded,
also against hostile input: lines, CSV records and gzip inflation are capped (``Limits``).

Speed: files are read in multi-MiB blocks (gzip inflated on a helper thread), JSON chunks are parsed
by pyarrow in C++ (falling back to per-line parsing only for the part of a chunk holding a bad
line), and the row checks, content ids and splits run column-wise on Arrow arrays.

One module per concern:

- ``sources``: bytes (plain or gzip, in blocks), format detection, checksums, the ``Chunk`` of records;
- ``jsonl``, ``csv``, ``parquet``: one reader per format; ``read``: the dispatch over them;
- ``rules``: the quarantine reasons (one table) and the row checks of a chunk;
- ``ids``: content ids, splits, the seen-id set;
- ``writer``: ``ingest()``, which writes a run's sources as one committed version of its partition.
"""

from pipelines.ingest.csv import read_csv
from pipelines.ingest.ids import SPLITS, _Dedup, assign_split, content_ids, hash64
from pipelines.ingest.jsonl import read_jsonl
from pipelines.ingest.parquet import read_parquet
from pipelines.ingest.read import FORMATS, read_source
from pipelines.ingest.rules import LANGUAGES, MAX_TITLE_CHARS, QUARANTINE_REASONS, check_chunk, quarantine_table
from pipelines.ingest.sources import (
    BLOCK_BYTES,
    CHUNK_ROWS,
    FIELDS,
    ID_FIELDS,
    Chunk,
    IngestError,
    Limits,
    _sha256,
    check_input_file,
    detect_format,
)
from pipelines.ingest.writer import IngestResult, ingest

__all__ = [
    "BLOCK_BYTES",
    "CHUNK_ROWS",
    "FIELDS",
    "FORMATS",
    "ID_FIELDS",
    "LANGUAGES",
    "MAX_TITLE_CHARS",
    "QUARANTINE_REASONS",
    "SPLITS",
    "Chunk",
    "IngestError",
    "IngestResult",
    "Limits",
    "_Dedup",
    "_sha256",
    "assign_split",
    "check_chunk",
    "check_input_file",
    "content_ids",
    "detect_format",
    "hash64",
    "ingest",
    "quarantine_table",
    "read_csv",
    "read_jsonl",
    "read_parquet",
    "read_source",
]
