"""Behavioural checks (pipelines/registry/behaviour.py) with predictors made by code, and the repo's reviewed cases."""

from __future__ import annotations

import gzip
import json
import re

import pandas as pd
import pytest

from pipelines.registry import behaviour
from pipelines.registry.behaviour import (
    Case,
    invariance,
    load_cases,
    min_function,
    perturbations,
    run_checks,
    strip_accents,
)

KEYWORDS = {
    "celular": "CELLPHONES",
    "notebook": "NOTEBOOKS",
    "taladro": "ELECTRIC_DRILLS",
    "furadeira": "ELECTRIC_DRILLS",
}
TITLES = [
    "Celular Samsung Galaxy 32gb Libre",
    "Notebook Lenovo Core I5 8gb",
    "Taladro Percutor Eléctrico 650w",
    "Furadeira De Impacto Com Maleta",
    "Cañería De Cobre Para Baño",
    "Celular Motorola Moto G Usado",
]
DEMO_CATEGORIES = {
    "CELLPHONES",
    "CELLPHONE_COVERS",
    "NOTEBOOKS",
    "HEADPHONES",
    "SNEAKERS",
    "WRISTWATCHES",
    "MOTORCYCLE_BATTERIES",
    "BABY_STROLLERS",
    "ELECTRIC_DRILLS",
    "WASHING_MACHINES",
    "3D_PRINTERS",
    "SUNGLASSES",
}


class Counting:
    """Wraps a per-title function as a batched predictor and records every call."""

    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def __call__(self, titles: list[str]) -> list[str]:
        self.calls.append(list(titles))
        return [self.fn(t) for t in titles]


def keyword(title: str) -> str:
    """Robust: lower-cases, strips accents, tokenizes on anything not alphanumeric."""
    for token in re.findall(r"[a-z0-9]+", strip_accents(title.lower())):
        if token in KEYWORDS:
            return KEYWORDS[token]
    return "OTHER"


def case_sensitive(title: str) -> str:
    return "CELLPHONES" if "celular" in title else "OTHER"


def norm(title: str) -> str:
    return " ".join(title.lower().split())


def test_perturbations_are_deterministic_and_keep_the_words():
    title = "Cañería Eléctrica Taladro Percutor 650w"
    first, second = perturbations(7), perturbations(7)
    assert set(first) == {"upper_case", "lower_case", "title_case", "strip_accents", "extra_spaces", "punctuation"}
    for name, fn in first.items():
        assert fn(title) == second[name](title), name
    assert first["upper_case"](title) == "CAÑERÍA ELÉCTRICA TALADRO PERCUTOR 650W"
    assert first["strip_accents"](title) == "Caneria Electrica Taladro Percutor 650w"
    spaced = first["extra_spaces"](title)
    assert "  " in spaced.strip() and spaced != spaced.strip() and " ".join(spaced.split()) == title
    punctuated = first["punctuation"](title)
    assert punctuated != title and re.findall(r"\w+", punctuated) == re.findall(r"\w+", title)


def test_robust_keyword_predictor_passes_every_perturbation_in_one_call():
    predict = Counting(keyword)
    result = invariance(predict, TITLES, sample=100, seed=3)
    assert len(predict.calls) == 1
    assert result["pass_share"] == 1.0 and result["rows"] == len(TITLES)
    assert result["examples"] == []
    assert {v["share_unchanged"] for v in result["by_perturbation"].values()} == {1.0}
    assert {v["changed"] for v in result["by_perturbation"].values()} == {0}
    # one batch: the originals first, then only the variants that differ from their title
    altered = sum(v["altered"] for v in result["by_perturbation"].values())
    assert predict.calls[0][: len(TITLES)] == TITLES and len(predict.calls[0]) == len(TITLES) + altered


def test_case_sensitive_predictor_fails_upper_case():
    titles = ["celular samsung a10", "celular motorola g7", "notebook lenovo i5"]
    predict = Counting(case_sensitive)
    result = invariance(predict, titles, seed=1)
    by = result["by_perturbation"]
    assert len(predict.calls) == 1
    assert by["upper_case"]["changed"] == 2 and by["upper_case"]["share_unchanged"] == pytest.approx(1 / 3)
    assert by["title_case"]["changed"] == 2
    # lower-case leaves these titles as they are: unchanged counts as passing, and is not predicted
    assert by["lower_case"] == {"altered": 0, "changed": 0, "share_unchanged": 1.0}
    assert by["extra_spaces"]["changed"] == 0 and by["punctuation"]["changed"] == 0
    assert result["pass_share"] == pytest.approx(1 / 3)
    example = result["examples"][0]
    assert set(example) == {"title", "perturbation", "variant", "original", "perturbed"}
    assert (example["original"], example["perturbed"]) == ("CELLPHONES", "OTHER")
    assert {e["perturbation"] for e in result["examples"]} == {"upper_case", "title_case"}


def test_examples_are_capped_at_ten():
    titles = [f"celular modelo {i}" for i in range(30)]
    result = invariance(Counting(case_sensitive), titles)
    assert result["pass_share"] == 0.0 and len(result["examples"]) == 10


def test_sampling_is_seeded_without_replacement():
    titles = [f"notebook modelo {i}" for i in range(50)]

    def originals(seed: int) -> list[str]:
        predict = Counting(keyword)
        assert invariance(predict, titles, sample=10, seed=seed)["rows"] == 10
        return predict.calls[0][:10]

    first = originals(1)
    assert first == originals(1) and len(set(first)) == 10 and set(first) <= set(titles)
    assert originals(2) != first
    predict = Counting(keyword)
    assert invariance(predict, titles[:5], sample=10)["rows"] == 5  # fewer than sample: all of them
    assert predict.calls[0][:5] == titles[:5]


def test_invariance_rejects_a_wrong_number_of_predictions():
    with pytest.raises(ValueError, match="predictions for"):
        invariance(lambda titles: ["OTHER"], TITLES)


def test_invariance_of_no_titles_is_not_applicable():
    predict = Counting(keyword)
    result = invariance(predict, [])
    assert result["pass_share"] is None and result["rows"] == 0 and predict.calls == []


CASES = [
    Case("Celular Samsung Galaxy A10", "CELLPHONES", "spanish"),
    Case("Celular Xiaomi Desbloqueado", "CELLPHONES", "portuguese"),  # untrained language
    Case("Taladro Percutor 650w", "ELECTRIC_DRILLS", "spanish"),  # unknown category
    Case("Notebook Lenovo I5", "NOTEBOOKS", "spanish"),
    Case("Celular Para Notebook", "NOTEBOOKS", "spanish"),  # the keyword predictor says CELLPHONES
]


def test_min_function_counts_only_applicable_cases():
    predict = Counting(keyword)
    result = min_function(predict, CASES, labels={"CELLPHONES", "NOTEBOOKS"}, languages={"spanish"})
    assert len(predict.calls) == 1 and len(predict.calls[0]) == 3
    assert (result["cases"], result["applicable"], result["passed"]) == (5, 3, 2)
    assert result["pass_share"] == pytest.approx(2 / 3)
    assert result["by_language"] == {
        "portuguese": {"applicable": 0, "passed": 0},
        "spanish": {"applicable": 3, "passed": 2},
    }
    assert result["failures"] == [
        {"title": "Celular Para Notebook", "expected": "NOTEBOOKS", "predicted": "CELLPHONES"}
    ]


def test_min_function_is_none_when_nothing_applies():
    predict = Counting(keyword)
    result = min_function(predict, CASES, labels={"CELLPHONES"}, languages={"french"})
    assert result["pass_share"] is None and result["applicable"] == 0 and predict.calls == []
    result = min_function(predict, CASES, labels={"SOFAS"}, languages={"spanish", "portuguese"})
    assert result["pass_share"] is None and predict.calls == []


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("title,category\nCelular,CELLPHONES\n", r"cases\.csv:1: missing column\(s\) language"),
        ("title,category,language\nCelular,CELLPHONES,spanish\n ,NOTEBOOKS,spanish\n", r"cases\.csv:3: empty title"),
        ("title,category,language\nCelular,CELLPHONES,klingon\n", r"cases\.csv:2: unknown language 'klingon'"),
        ("title,category,language\nCelular,,spanish\n", r"cases\.csv:2: empty category"),
        ("title,category,language\nCelular A,CELLPHONES,spanish\ncelular  a,CELLPHONES,spanish\n", r":3: duplicate"),
    ],
)
def test_malformed_cases_file_raises_one_line_error(tmp_path, text, match):
    path = tmp_path / "cases.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=match) as err:
        load_cases(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_cases_file_of_another_encoding_raises(tmp_path):
    path = tmp_path / "cases.csv"
    path.write_bytes("title,category,language\nCañería,PIPES_AND_TUBES,spanish\n".encode("latin-1"))
    with pytest.raises(ValueError, match="not UTF-8"):
        load_cases(path)


def test_repo_cases_file():
    cases = load_cases()
    assert behaviour.CASES_PATH.name == "min_function.csv"
    assert len(cases) >= 100
    assert len({c.category for c in cases}) >= 60
    assert {c.language for c in cases} == {"spanish", "portuguese"}
    assert 0.15 <= sum(c.language == "portuguese" for c in cases) / len(cases) <= 0.35
    assert len({norm(c.title) for c in cases}) == len(cases)
    assert DEMO_CATEGORIES <= {c.category for c in cases}
    assert all(re.fullmatch(r"[A-Z0-9_]+", c.category) for c in cases)


def test_repo_cases_match_the_real_categories_and_are_not_copied(real_jsonl):
    titles, categories = set(), set()
    with gzip.open(real_jsonl, "rt", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            titles.add(norm(row["title"]))
            categories.add(row["category"])
    cases = load_cases()
    assert sorted({c.category for c in cases} - categories) == []
    assert [c.title for c in cases if norm(c.title) in titles] == []


def test_run_checks_on_the_repo_cases():
    predict = Counting(keyword)
    result = run_checks(predict, TITLES, labels=set(KEYWORDS.values()), languages={"spanish"}, sample=4, seed=5)
    assert len(predict.calls) == 2
    assert (result["sample"], result["seed"], result["cases_file"]) == (4, 5, str(behaviour.CASES_PATH))
    assert result["invariance"]["rows"] == 4 and result["invariance"]["pass_share"] == 1.0
    mf = result["min_function"]
    assert mf["applicable"] > 0 and mf["by_language"]["portuguese"]["applicable"] == 0
    assert 0 <= mf["pass_share"] <= 1 and mf["passed"] == mf["by_language"]["spanish"]["passed"]


def test_frame_predict_adapts_a_dataframe_model():
    class Model:
        def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
            return pd.DataFrame({"predicted_category": [keyword(t) for t in frame["title"]]})

    assert behaviour.frame_predict(Model())(["Celular Nuevo", "Mesa"]) == ["CELLPHONES", "OTHER"]
