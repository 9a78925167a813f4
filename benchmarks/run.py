"""Run benchmarks one after the other (never in ``make test``): ``make bench`` runs them all,
``make bench BENCH="scale warm"`` (or ``python -m benchmarks.run scale warm``) the named ones.
Each writes its own table to ``benchmarks/results/``; they take from minutes (validate) to hours
(scale, quality on CPU): run them on an otherwise idle machine."""

from __future__ import annotations

import subprocess
import sys
import time

ALL = ("ingest", "validate", "score", "quality", "warm", "scale")


def main(argv: list[str] | None = None) -> int:
    names = list(argv if argv is not None else sys.argv[1:]) or list(ALL)
    unknown = [n for n in names if n not in ALL]
    if unknown:
        print(f"error: unknown benchmark(s) {unknown}; choose from {list(ALL)}", file=sys.stderr)
        return 2
    for name in names:
        t0 = time.perf_counter()
        print(f"== benchmarks.{name}", flush=True)
        rc = subprocess.run([sys.executable, "-m", f"benchmarks.{name}"]).returncode
        print(f"== benchmarks.{name}: rc {rc}, {(time.perf_counter() - t0) / 60:.1f} min", flush=True)
        if rc:
            return rc
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
