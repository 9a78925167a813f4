"""A source file: its bytes (plain or gzip, read in blocks on a helper thread), its format
(detected from content), its checksum, and the ``Chunk`` of records every format reader yields."""

from __future__ import annotations

import csv
import json
import math
import os
import queue
import threading
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

CHUNK_ROWS = 65536
ID_FIELDS = ("listing_id", "id", "item_id")
FIELDS = ("title", "language", "label_quality", "category", "id")
BLOCK_BYTES = 8 << 20  # bytes read (inflated) at a time; a JSON chunk never spans two blocks
# Bounds on what one input may cost (issue 35 item 6, issue 31 item 6); Limits reads the settings.
MAX_LINE_BYTES = 1 << 20  # MELI_MAX_LINE_BYTES: a longer line is quarantined as line_too_long, never held whole
MAX_RECORD_LINES = 100  # MELI_MAX_RECORD_LINES: a CSV record (an open quote) running past this is cut
MAX_INFLATED_BYTES = 20 << 30  # MELI_MAX_INFLATED_BYTES: a gzip inflating past this fails its file
MAX_INFLATE_RATIO = 100.0  # MELI_MAX_INFLATE_RATIO: inflated/compressed above this fails the file (a bomb)
RATIO_AFTER_BYTES = 64 << 20  # the ratio is judged once this many bytes are inflated (small files never)
RAW_BYTES = 8 << 10  # quarantined raw text kept per row (a row at the title limit fits whole)
# header names that mark a CSV's first row as a header rather than a listing
_HEADER_NAMES = {"title", "label_quality", "category"}


class IngestError(ValueError):
    """A whole source cannot be read (missing file, missing required column, unknown format)."""


@dataclass
class Chunk:
    """Up to CHUNK_ROWS parsed records of one source, plus the rows rejected while parsing.

    ``read_source`` (and read_jsonl/read_csv/read_parquet) yield plain lists in ``columns``;
    ingest's internal readers may hold pyarrow string arrays there instead (check_chunk takes both).
    """

    columns: dict[str, list]  # FIELDS -> values (str | None)
    rows: list[int]  # 1-based record numbers in the source
    raw: list[str]  # raw text of each parsed record (for quarantine)
    # row, reason, detail, raw[, raw_bytes: the whole length when raw holds only the start of a line]
    rejected: list[tuple] = field(default_factory=list)


def as_lists(chunk: Chunk) -> Chunk:
    for f, v in chunk.columns.items():
        if not isinstance(v, list):
            chunk.columns[f] = v.to_pylist()
    return chunk


def empty_columns() -> dict[str, list]:
    return {f: [] for f in FIELDS}


def as_str(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON's NaN/Infinity (Python writes them): missing, not the text "nan"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise TypeError(type(value).__name__)


def utf8_ok(text: str) -> bool:
    """False for strings holding lone surrogates (JSON escapes like \\ud800 that are not text)."""
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


@dataclass(frozen=True)
class Limits:
    """What one input may cost: the line cap, the CSV record cap, and the gzip inflation caps."""

    max_line_bytes: int = MAX_LINE_BYTES
    max_record_lines: int = MAX_RECORD_LINES
    max_inflated_bytes: int = MAX_INFLATED_BYTES
    max_inflate_ratio: float = MAX_INFLATE_RATIO  # 0: no ratio guard

    @classmethod
    def of(cls, settings=None) -> Limits:
        """The limits of ``settings`` (default: the environment's)."""
        if settings is None:
            from pipelines.settings import get_settings

            settings = get_settings()
        return cls(
            settings.max_line_bytes, settings.max_record_lines, settings.max_inflated_bytes, settings.max_inflate_ratio
        )


class Bytes:
    """The (inflated) bytes of a file, in blocks of about ``block`` bytes.

    Gzip is recognised by its magic bytes (not the file name); multi-member files and zero padding
    are read like gzip.open does. A truncated gzip does not raise: the blocks end with every byte
    that could be inflated, and ``error`` says why (``tail`` is set by line readers to the partial
    last line of such an input, ``tail_bytes`` to its length). Corrupt compressed data raises
    IngestError, and so does a gzip inflating past ``limits``' bytes or ratio (a decompression bomb):
    nothing of the file is trusted, like corrupt data, and memory stays at a few blocks either way.
    """

    def __init__(self, path: Path, block: int = BLOCK_BYTES, limits: Limits | None = None):
        self.path = Path(path)
        self.block = block
        self.limits = limits or Limits()
        self.error: str | None = None
        self.tail = b""
        self.tail_bytes: int | None = None  # the tail's length when only its start is kept

    def __iter__(self) -> Iterator[bytes]:
        with open(self.path, "rb") as fh:
            magic = fh.read(2)
            fh.seek(0)
            if magic != b"\x1f\x8b":
                while data := fh.read(self.block):
                    yield data
                return
            yield from self._gunzip(fh)

    def _gunzip(self, fh) -> Iterator[bytes]:
        size = self.block
        d = zlib.decompressobj(wbits=31)
        started = False  # inside a member
        buf = b""
        read = inflated = 0  # compressed bytes read, bytes inflated
        while True:
            if not buf:
                buf = fh.read(size)
                read += len(buf)
                if not buf:
                    if started:
                        while out := d.decompress(b"", size):  # what zlib still holds
                            inflated += len(out)
                            self._check_inflated(inflated, read)
                            yield out
                        if not d.eof:
                            self.error = "compressed input ends before its end-of-stream marker"
                    return
            if not started:
                buf = buf.lstrip(b"\x00")  # zero padding after a member
                if not buf:
                    continue
                started = True
            try:
                out = d.decompress(buf, size)
            except zlib.error as exc:
                # Deflate output is only checked by the member's CRC at its end, so the rows already
                # inflated may be garbled (a flipped byte decodes to wrong text, then fails later):
                # none of them can be trusted. A clean truncation (above) is different: every byte
                # inflated before the end is exact.
                raise IngestError(
                    f"{self.path}: corrupt compressed data ({exc}); rows inflated before the damage cannot be "
                    "trusted, so nothing from this file is written: fetch it again"
                ) from exc
            buf = d.unconsumed_tail
            if out:
                inflated += len(out)
                self._check_inflated(inflated, read - len(buf))
                yield out
            if d.eof:
                buf = d.unused_data
                d = zlib.decompressobj(wbits=31)
                started = False

    def _check_inflated(self, inflated: int, consumed: int) -> None:
        """IngestError once the file inflates past the byte cap, or past the ratio after RATIO_AFTER_BYTES."""
        lim = self.limits
        if inflated > lim.max_inflated_bytes:
            raise IngestError(
                f"{self.path}: inflates past {lim.max_inflated_bytes} bytes (MELI_MAX_INFLATED_BYTES); "
                "nothing from this file is written"
            )
        ratio = inflated / max(consumed, 1)
        if lim.max_inflate_ratio and inflated > RATIO_AFTER_BYTES and ratio > lim.max_inflate_ratio:
            raise IngestError(
                f"{self.path}: looks like a decompression bomb: {consumed} compressed bytes inflate to {inflated} "
                f"(ratio {ratio:.0f} > MELI_MAX_INFLATE_RATIO {lim.max_inflate_ratio:g}); "
                "nothing from this file is written"
            )


class _Failed:
    def __init__(self, exc: BaseException):
        self.exc = exc


class Prefetch:
    """Run an iterator on a helper thread, ``depth`` items ahead: inflating (blocks) and JSON parsing
    (chunks) release the GIL, so they overlap with the row checks of the chunk before."""

    _END = object()

    def __init__(self, items: Iterable, depth: int = 2, name: str = "ingest-read"):
        self._items = items
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._name = name

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, items: Iterable) -> None:
        it = iter(items)
        try:
            for item in it:
                if not self._put(item):
                    return
            self._put(self._END)
        except BaseException as exc:  # handed to the consumer
            self._put(_Failed(exc))
        finally:
            close = getattr(it, "close", None)
            if close:
                close()

    def __iter__(self) -> Iterator:
        # the thread starts with the iteration, so an iterator that is never used leaks nothing
        thread = threading.Thread(target=self._run, args=(self._items,), daemon=True, name=self._name)
        thread.start()
        try:
            while True:
                item = self._q.get()
                if item is self._END:
                    return
                if isinstance(item, _Failed):
                    raise item.exc
                yield item
        finally:
            self._stop.set()
            thread.join()


_BOM = b"\xef\xbb\xbf"


class LongLine:
    """A line longer than the line cap: its first RAW_BYTES bytes and its length, the rest never held."""

    __slots__ = ("prefix", "nbytes")

    def __init__(self, prefix: bytes, nbytes: int):
        self.prefix = prefix
        self.nbytes = nbytes

    def text(self) -> str:
        return self.prefix.decode("utf-8", "backslashreplace")

    def detail(self, cap: int) -> str:
        return (
            f"a line of {self.nbytes} bytes, longer than MELI_MAX_LINE_BYTES ({cap}): skipped to its end "
            f"unparsed, its first {len(self.prefix)} bytes kept"
        )


class _Terms:
    """Finding line ends: b"\n", or (``cr``) any of b"\n" and b"\r" (b"\r\n" is one line end)."""

    def __init__(self, cr: bool):
        self.cr = cr

    def first(self, data: bytes, a: int, b: int) -> int:
        i = data.find(b"\n", a, b)
        if not self.cr:
            return i
        j = data.find(b"\r", a, i if i >= 0 else b)
        return j if j >= 0 else i

    def last(self, data: bytes, a: int, b: int) -> int:
        i = data.rfind(b"\n", a, b)
        if not self.cr:
            return i
        return max(i, data.rfind(b"\r", max(a, i + 1), b))

    def after(self, data: bytes, i: int) -> int:
        """Where the line after the line end at ``i`` starts."""
        return i + 2 if self.cr and data[i] == 13 and data[i + 1 : i + 2] == b"\n" else i + 1


def _long_runs(data: bytes, n: int, cap: int, terms: _Terms) -> list[tuple[int, int]]:
    """(start, end) of each line in data[:n] longer than ``cap`` bytes (end: its line end, or n).

    Looks at data in windows of ``cap`` bytes: a line inside one window is short, so only the run
    from the last line end of a window to the first of a later one can be long; two searches per
    window (memchr speed), no pass over every byte in Python."""
    runs = []
    start = 0  # where the current line starts
    for a in range(0, n, cap):
        b = min(a + cap, n)
        i = terms.first(data, a, b)
        if i < 0:
            continue
        if i - start > cap:
            runs.append((start, i))
        start = terms.after(data, terms.last(data, i, b))
    if n - start > cap:
        runs.append((start, n))
    return runs


def line_regions(src: Bytes, cap: int, cr: bool = False, final_newline: bool = True) -> Iterator:
    """The bytes of ``src`` as regions ``(data, a, b)`` of whole lines, each line ending in a line end
    (b"\n"; with ``cr`` also a bare b"\r") and none longer than ``cap`` bytes, and a ``LongLine`` in
    the place of each line that is longer. A long line is skipped to its end, counting, never held or
    copied whole: time linear in its length, memory of a few blocks.

    Regions never span two blocks; a line that does is carried (at most ``cap`` bytes) into the next.
    A leading BOM is dropped. The last line needs no line end (``final_newline``: one is added). The
    partial last line of a truncated input is not yielded: it is left in ``src.tail``."""
    blocks = iter(Prefetch(src))
    try:
        yield from _regions(src, blocks, cap, cr, final_newline)
    finally:
        blocks.close()  # type: ignore[attr-defined]


def _regions(src: Bytes, blocks: Iterator[bytes], cap: int, cr: bool, final_newline: bool) -> Iterator:
    terms = _Terms(cr)
    carry = b""
    skip: LongLine | None = None  # the long line being skipped
    after_cr = False  # a skipped line ended in b"\r" at a block's end: a b"\n" next belongs to it
    bom = True
    block = next(blocks, None)
    while block is not None:
        following = next(blocks, None)  # look ahead: the last block takes the last line along
        end = following is None
        data, block = block, following
        if after_cr:
            after_cr = False
            if data[:1] == b"\n":
                data = data[1:]
        if skip is not None:
            i = terms.first(data, 0, len(data))
            if len(skip.prefix) < RAW_BYTES:  # the line began near the end of the block before
                skip.prefix += data[: min(RAW_BYTES - len(skip.prefix), i if i >= 0 else len(data))]
            if i < 0:
                skip.nbytes += len(data)
                continue
            skip.nbytes += i
            yield skip
            skip = None
            after_cr = cr and i == len(data) - 1 and data[i] == 13
            data = data[terms.after(data, i) :]  # one copy of a block, once per long line
        elif carry:
            data = carry + data
        if bom:
            if len(data) < len(_BOM) and not end:
                carry = data
                continue
            if data.startswith(_BOM):
                data = data[len(_BOM) :]
            bom = False
        if end and src.error is None:
            if final_newline and data and data[-1:] not in (b"\n", b"\r" if cr else b"\n"):
                data += b"\n"  # the last line needs no newline
            cut = len(data)
        else:
            cut = terms.last(data, 0, len(data)) + 1
            if cr and data and cut == len(data) and data[-1] == 13 and not end:  # b"\r", maybe b"\r\n" across blocks
                cut = terms.last(data, 0, cut - 1) + 1
        carry = data[cut:]
        pos = 0
        for a, b in _long_runs(data, cut, cap, terms) if cut > cap else ():
            if a > pos:
                yield data, pos, a
            yield LongLine(data[a : min(b, a + RAW_BYTES)], b - a)
            pos = terms.after(data, b) if b < cut else cut
        if cut > pos:
            yield data, pos, cut
        held = cr and carry[-1:] == b"\r"  # a b"\r" held back: the line has ended already
        if len(carry) - held > cap:  # a line longer than the cap, going on past this block: skip the rest
            skip, carry = LongLine(carry[: min(RAW_BYTES, len(carry) - held)], len(carry) - held), b""
            if held:
                yield skip
                skip, after_cr = None, True
    if skip is not None:
        if src.error is None:
            yield skip
        else:
            carry, src.tail_bytes = skip.prefix, skip.nbytes
    src.tail = carry


def head_bytes(path: Path, size: int = 4096) -> tuple[bytes, str | None]:
    src = Bytes(path, block=1 << 16)
    head = b""
    gen = iter(src)
    try:
        for block in gen:
            head += block
            if len(head) >= size:
                break
    finally:
        gen.close()  # type: ignore[attr-defined]
    return head[:size], src.error


def check_input_file(path: Path) -> None:
    """A one-line error for an input that is not a readable regular file."""
    path = Path(path)
    if not path.exists():
        raise IngestError(f"{path}: no such file")
    if path.is_dir():
        raise IngestError(f"{path}: is a directory, not an input file")
    if not path.is_file():
        raise IngestError(f"{path}: not a regular file (a FIFO, socket or device); give a file")
    if not os.access(path, os.R_OK):
        raise IngestError(f"{path}: permission denied")


def detect_format(path: Path) -> str:
    """Format from content (not the file name): parquet, jsonl, challenge_csv (header) or csv."""
    with open(path, "rb") as fh:
        if fh.read(4) == b"PAR1":
            return "parquet"
    try:
        head, error = head_bytes(Path(path))
    except OSError as exc:
        raise IngestError(f"{path}: cannot read the start of the file ({exc})") from exc
    if not head and error:
        raise IngestError(f"{path}: cannot read the start of the file ({error})")
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if not text:
        return "jsonl"  # empty file: zero rows in any format
    lines = [ln.strip() for ln in text.splitlines()[:50] if ln.strip()]  # \n, \r\n or old-Mac \r
    if _json_object(lines[0]):  # not just a leading '{' or '[': "[NUEVO] Celular,CELLPHONES" is CSV
        return "jsonl"
    if sum(ln[:1] == b"{" for ln in lines) * 2 > len(lines):  # JSON objects after a bad first line
        return "jsonl"
    if _json_array(text, lines[0]):  # a JSON array file: read as lines, quarantined as not objects
        return "jsonl"
    first = lines[0].decode("utf-8", "replace").lower()
    try:
        cols = {c.strip().strip('"') for c in next(csv.reader([first]), [])}
    except csv.Error:  # e.g. a bare carriage return in the first line: not a header
        cols = set()
    # a header names the columns; a header without `title` is still a header (and an error later)
    return "challenge_csv" if cols & _HEADER_NAMES else "csv"


def _json_array(text: bytes, first_line: bytes) -> bool:
    """A JSON array (of objects or arrays), not a CSV title that starts with '[' ("[NUEVO] ...")."""
    if text[:1] != b"[":
        return False
    if text[1:].lstrip()[:1] in (b"{", b"[", b"]"):
        return True
    try:
        return isinstance(json.loads(first_line), list)
    except (ValueError, RecursionError):
        return False


def _json_object(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except (ValueError, RecursionError):  # not JSON (or cut by the head's size: the majority rule decides)
        return False
