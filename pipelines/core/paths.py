"""Paths and names from untrusted places kept inside their roots (stdlib only: safe at DAG parse time).

Trigger-form Params and asset-event extras are untrusted: a DAG task may read only under
``$MELI_HOME/landing`` and the folders of ``MELI_INPUT_ROOTS`` (``input_roots``), write only under
``$MELI_HOME/adhoc`` (``check_output``), and takes event extras parsed (``event_extras``). Link files
under ``$MELI_HOME`` that name other files are honoured only when the target lies under the folder it
belongs to (``confined``).
Every path is compared after ``resolve()`` (symlinks and ``..`` followed). The CLI does not call these:
a shell user already has the files.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path


class OutsideRoot(ValueError):
    """A path from an untrusted place resolves outside the folders it may name."""


def parse_date(value, what: str = "run_date") -> str:
    """``value`` as a YYYY-MM-DD date (``datetime.strptime``), else ValueError naming ``what``."""
    try:
        return datetime.strptime(str(value), "%Y-%m-%d").date().isoformat()
    except ValueError:
        raise ValueError(f"{what} {str(value)[:100]!r} is not a YYYY-MM-DD date") from None


def confined(path, root) -> Path:
    """``path`` resolved, when it lies under ``root`` (resolved); else OutsideRoot."""
    p, r = Path(path).resolve(), Path(root).resolve()
    if not p.is_relative_to(r):
        raise OutsideRoot(f"{path} resolves to {p}, outside {r}")
    return p


def within(path, roots, what: str) -> Path:
    """``path`` resolved, when it lies under one of ``roots``; else OutsideRoot naming the roots."""
    p = Path(path).resolve()
    if any(p.is_relative_to(Path(r).resolve()) for r in roots):
        return p
    shown = ", ".join(str(Path(r)) for r in roots)
    raise OutsideRoot(f"{what} {path} resolves to {p}, outside the allowed folders ({shown}); see MELI_INPUT_ROOTS")


def linked(path, root) -> Path | None:
    """A path read out of a link file: resolved when under ``root``, else None (logged): never followed."""
    if not path:
        return None
    try:
        return confined(path, root)
    except (OutsideRoot, OSError, TypeError, ValueError) as exc:
        import logging

        logging.getLogger(__name__).warning("link not followed: %s", exc)
        return None


def input_roots(settings) -> list[Path]:
    """Where a DAG Param or asset event may read: ``$MELI_HOME/landing`` and ``MELI_INPUT_ROOTS``."""
    return [settings.home / "landing", *settings.input_roots]


def check_inputs(settings, files, extra_roots=()) -> list[str]:
    """``files`` unchanged when every one resolves under ``input_roots`` (or ``extra_roots``)."""
    roots = [*input_roots(settings), *extra_roots]
    for f in files:
        within(f, roots, "input")
    return list(files)


def output_root(settings) -> Path:
    """Where a DAG Param may write: ``$MELI_HOME/adhoc/`` (never the lake, the stores or the secrets)."""
    return settings.home / "adhoc"


def check_output(settings, output) -> Path:
    """A DAG Param's output: a ``.parquet`` file that resolves under ``$MELI_HOME/adhoc/`` (a relative
    path is taken there), else OutsideRoot; an existing file there is replaced only when it is a
    previous scoring output (a Parquet file with the scored columns), else ValueError (one line)."""
    root = output_root(settings)
    p = Path(output)
    p = within(p if p.is_absolute() else root / p, [root], "output")
    if p.suffix != ".parquet":
        raise ValueError(f"output {output} must be a .parquet file")
    if p.exists() and not _scoring_output(p):
        raise ValueError(f"output {output} exists and is not a previous scoring output: name a new file")
    return p


SCORED_COLUMNS = {"listing_id", "predicted_category", "probability", "model_version", "status"}


def _scoring_output(path: Path) -> bool:
    """Whether ``path`` is a Parquet file written by scoring (its columns), read without trusting it."""
    if not path.is_file():
        return False
    try:
        import pyarrow.parquet as pq  # at run time only: this module stays stdlib at DAG parse time

        return SCORED_COLUMNS <= set(pq.read_schema(path).names)
    except Exception:
        return False


def event_extras(settings, extras) -> list[dict]:
    """Asset-event extras as a DAG may use them: ``run_date`` parsed (YYYY-MM-DD) and ``partition``
    resolved under the lake's listings folder; anything else malformed is a ValueError (one line)."""
    out = []
    for e in extras or []:
        if not isinstance(e, dict):
            raise ValueError(f"asset event extra {str(e)[:100]!r} is not a mapping")
        e = dict(e)
        if e.get("run_date"):
            e["run_date"] = parse_date(e["run_date"], "asset event run_date")
        if e.get("partition"):
            if not isinstance(e["partition"], str):
                raise ValueError(f"asset event partition {str(e['partition'])[:100]!r} is not a path")
            try:
                e["partition"] = str(confined(e["partition"], settings.listings_dir))
            except OutsideRoot as exc:
                raise OutsideRoot(f"asset event partition: {exc}") from None
        out.append(e)
    return out
