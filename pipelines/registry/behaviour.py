"""Behavioural checks of a title classifier (as Made-With-ML tests models), independent of how it was trained.

* **Invariance**: a seller's casing, accents, spacing and punctuation must not change the category. A
  seeded sample of titles is perturbed (upper/lower/title case, accents stripped, extra spaces,
  punctuation); a title passes when every variant gets the original's prediction.
* **Minimum function**: hand-written, reviewed titles with an obvious category
  (``expectations/behaviour/min_function.csv``) must be classified right. Only the cases the model can
  answer count: category among its labels, language among those it was trained on.

``predict`` maps titles to category ids and is called once per check (the real one is an MLflow
pyfunc, expensive per call; ``frame_predict`` adapts it). Plain Python: no Airflow, no MLflow.
"""

from __future__ import annotations

import csv
import random
import time
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

PredictFn = Callable[[list[str]], list[str]]

LANGUAGES = ("spanish", "portuguese")
CASES_PATH = Path(__file__).resolve().parents[2] / "expectations" / "behaviour" / "min_function.csv"
CASE_COLUMNS = ("title", "category", "language")
MAX_EXAMPLES, MAX_FAILURES = 10, 20


@dataclass(frozen=True)
class Case:
    title: str
    category: str
    language: str


def strip_accents(text: str) -> str:
    """NFKD, combining marks removed ("Cañería" -> "Caneria")."""
    decomposed = unicodedata.normalize("NFKD", text)
    return unicodedata.normalize("NFC", "".join(ch for ch in decomposed if not unicodedata.combining(ch)))


def _extra_spaces(title: str) -> str:
    return "  " + title.replace(" ", "  ") + " "


def _punctuation(seed: int) -> Callable[[str], str]:
    def punctuate(title: str) -> str:
        rng = random.Random(f"{seed}\x00{title}")  # str seeds hash with sha512: stable across processes
        words = title.split()
        out = words[:1]
        for word in words[1:]:
            r = rng.random()
            out.append(f", {word}" if r < 0.2 else f" - {word}" if r < 0.35 else f" {word}")
        return "".join(out) + rng.choice(["!!", "!!!", ".", " !!", "..."])

    return punctuate


def perturbations(seed: int = 13) -> dict[str, Callable[[str], str]]:
    """Name -> deterministic transform; ``punctuation`` varies per title, fixed by ``seed``."""
    return {
        "upper_case": str.upper,
        "lower_case": str.lower,
        "title_case": str.title,
        "strip_accents": strip_accents,
        "extra_spaces": _extra_spaces,
        "punctuation": _punctuation(seed),
    }


def _predict(predict: PredictFn, titles: list[str]) -> list[str]:
    preds = [str(p) for p in predict(titles)]
    if len(preds) != len(titles):
        raise ValueError(f"predict returned {len(preds)} predictions for {len(titles)} titles")
    return preds


def invariance(predict: PredictFn, titles: list[str], sample: int = 1000, seed: int = 13) -> dict[str, Any]:
    """Share of sampled titles whose prediction survives every perturbation (one ``predict`` call)."""
    if sample < 1:
        raise ValueError(f"sample must be >= 1, got {sample}")
    t0 = time.perf_counter()
    titles = [str(t) for t in titles]
    if len(titles) > sample:
        picked = np.random.default_rng(seed).choice(len(titles), size=sample, replace=False)
        titles = [titles[i] for i in sorted(picked)]
    perturbs = perturbations(seed)
    # variants[i][name]: the perturbed title, or None when the perturbation leaves it is (a pass)
    variants = [{name: (v if (v := fn(t)) != t else None) for name, fn in perturbs.items()} for t in titles]
    batch = titles + [v for row in variants for v in row.values() if v is not None]
    preds = _predict(predict, batch) if titles else []
    original, rest = preds[: len(titles)], iter(preds[len(titles) :])
    by_name: dict[str, dict[str, int]] = {name: {"altered": 0, "changed": 0} for name in perturbs}
    failed: dict[str, list[dict[str, str]]] = {name: [] for name in perturbs}
    passed = 0
    for title, orig, row in zip(titles, original, variants):
        ok = True
        for name, variant in row.items():
            if variant is None:
                continue
            by_name[name]["altered"] += 1
            pred = next(rest)
            if pred != orig:
                ok = False
                by_name[name]["changed"] += 1
                failed[name].append(
                    {"title": title, "perturbation": name, "variant": variant, "original": orig, "perturbed": pred}
                )
        passed += ok
    rows = len(titles)
    return {
        "pass_share": passed / rows if rows else None,
        "rows": rows,
        "by_perturbation": {
            name: {**c, "share_unchanged": 1 - c["changed"] / rows if rows else None} for name, c in by_name.items()
        },
        "examples": _round_robin(list(failed.values()), MAX_EXAMPLES),
        "seconds": round(time.perf_counter() - t0, 3),
    }


def _round_robin(groups: list[list[dict]], limit: int) -> list[dict]:
    """Up to ``limit`` items taking one of each group in turn, so every failing perturbation shows."""
    out: list[dict] = []
    for i in range(max((len(g) for g in groups), default=0)):
        out += [g[i] for g in groups if i < len(g)]
    return out[:limit]


def load_cases(path: Path | str | None = None) -> list[Case]:
    """Read the reviewed cases; a malformed file raises ValueError naming the file and line."""
    path = Path(path) if path is not None else CASES_PATH
    cases: list[Case] = []
    seen: dict[str, int] = {}
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in CASE_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(f"{path}:1: missing column(s) {', '.join(missing)} (need {','.join(CASE_COLUMNS)})")
            for row in reader:
                line = reader.line_num
                title, category, language = (" ".join((row.get(c) or "").split()) for c in CASE_COLUMNS)
                if not title:
                    raise ValueError(f"{path}:{line}: empty title")
                if not category:
                    raise ValueError(f"{path}:{line}: empty category")
                if language not in LANGUAGES:
                    raise ValueError(f"{path}:{line}: unknown language {language!r} (one of {', '.join(LANGUAGES)})")
                key = title.casefold()
                if key in seen:
                    raise ValueError(f"{path}:{line}: duplicate title {title!r} (first on line {seen[key]})")
                seen[key] = line
                cases.append(Case(title, category, language))
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 ({e.reason} at byte {e.start})") from None
    return cases


def min_function(predict: PredictFn, cases: list[Case], labels: Iterable[str], languages: Iterable[str]) -> dict:
    """Share of the applicable cases predicted right (one ``predict`` call; none when nothing applies)."""
    t0 = time.perf_counter()
    labels, languages = {str(x) for x in labels}, {str(x) for x in languages}
    applicable = [c for c in cases if c.category in labels and c.language in languages]
    preds = _predict(predict, [c.title for c in applicable]) if applicable else []
    by_language = {lang: {"applicable": 0, "passed": 0} for lang in sorted(languages | {c.language for c in cases})}
    failures: list[dict[str, str]] = []
    for case, pred in zip(applicable, preds):
        by_language[case.language]["applicable"] += 1
        if pred == case.category:
            by_language[case.language]["passed"] += 1
        elif len(failures) < MAX_FAILURES:
            failures.append({"title": case.title, "expected": case.category, "predicted": pred})
    passed = sum(v["passed"] for v in by_language.values())
    return {
        "pass_share": passed / len(applicable) if applicable else None,
        "cases": len(cases),
        "applicable": len(applicable),
        "passed": passed,
        "by_language": by_language,
        "failures": failures,
        "seconds": round(time.perf_counter() - t0, 3),
    }


def run_checks(
    predict: PredictFn,
    titles: list[str],
    labels: Iterable[str],
    languages: Iterable[str],
    sample: int = 1000,
    seed: int = 13,
    cases_path: Path | str | None = None,
) -> dict[str, Any]:
    """Both checks; the gate compares each ``pass_share`` (None: not applicable) with its threshold."""
    path = Path(cases_path) if cases_path is not None else CASES_PATH
    cases = load_cases(path)
    return {
        "invariance": invariance(predict, titles, sample=sample, seed=seed),
        "min_function": min_function(predict, cases, labels, languages),
        "sample": sample,
        "seed": seed,
        "cases_file": str(path),
    }


def frame_predict(model: Any, column: str = "predicted_category") -> PredictFn:
    """Adapt a model whose ``predict`` takes a DataFrame with a ``title`` column (the MLflow pyfunc)."""
    import pandas as pd

    def predict(titles: list[str]) -> list[str]:
        return [str(p) for p in model.predict(pd.DataFrame({"title": list(titles)}))[column]]

    return predict
