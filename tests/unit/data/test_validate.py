"""GX validation: clean batches pass; each critical expectation, broken on purpose, fails with a
message naming it; warnings are reported and do not stop the run."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from pipelines.data.ingest import ingest
from pipelines.data.lake import LISTING_SCHEMA
from pipelines.data.validate import ValidationFailed, summary_lines, validate_partition, validate_table

RUN_DATE = "2026-11-21"


@pytest.fixture
def clean(settings, synthetic_jsonl):
    res = ingest([synthetic_jsonl(400, seed=2)], RUN_DATE, settings)
    return res


def _table(n=200):
    rows = {
        "listing_id": [f"id{i}" for i in range(n)],
        "title": [f"Zapatillas Nike modelo {i}" for i in range(n)],
        "language": ["spanish"] * n,
        "label_quality": ["reliable"] * n,
        "category": ["SNEAKERS" if i % 2 else "CELLPHONES" for i in range(n)],
        "split": ["train"] * n,
        "source_file": ["x.jsonl"] * n,
        "source_row": list(range(1, n + 1)),
        "ingest_date": [RUN_DATE] * n,
    }
    return pa.table(rows, schema=LISTING_SCHEMA)


METRICS = {
    "rows": 200,
    "quarantine_ratio": 0.01,
    "volume_ratio": None,
    "unseen_category_share": None,
    "max_category_share_shift": None,
    "schema_version": 1,
}


def _with(table, column, values):
    return table.set_column(
        table.schema.get_field_index(column), column, pa.array(values, table.schema.field(column).type)
    )


def test_clean_partition_passes_and_builds_data_docs(settings, clean):
    report = validate_partition(settings, RUN_DATE)
    assert report["success"] and report["critical_failures"] == []
    assert report["passed"] == report["evaluated"] >= 15
    assert report["data_docs_index"].startswith(str(settings.home))
    for page in report["data_docs_pages"].values():
        assert page.startswith(str(settings.home)) and page.endswith(".html")
    text = "\n".join(summary_lines(report))
    assert "PASSED" in text and "Data Docs" in text


CRITICAL_BREAKS = {
    "expect_table_columns_to_match_set": lambda t: t.drop_columns(["split"]),
    "expect_table_row_count_to_be_between": lambda t: t.slice(0, 10),
    "expect_column_values_to_be_unique": lambda t: _with(t, "listing_id", ["dup"] * t.num_rows),
    "expect_column_values_to_not_be_null": lambda t: _with(t, "title", [None] * t.num_rows),
    "expect_column_values_to_be_in_set": lambda t: _with(t, "language", ["klingon"] * t.num_rows),
    "expect_column_values_to_match_regex": lambda t: _with(t, "category", ["not a category"] * t.num_rows),
}


@pytest.mark.parametrize("expectation", sorted(CRITICAL_BREAKS))
def test_each_critical_expectation_fails_with_its_name(settings, expectation):
    table = CRITICAL_BREAKS[expectation](_table())
    with pytest.raises(ValidationFailed, match=expectation) as err:
        validate_table(settings, RUN_DATE, table, METRICS, "crafted")
    assert not err.value.report["success"]
    assert any(expectation in line for line in err.value.report["critical_failures"])


def test_batch_metric_criticals(settings):
    with pytest.raises(ValidationFailed, match="quarantine_ratio"):
        validate_table(settings, RUN_DATE, _table(), {**METRICS, "quarantine_ratio": 0.9}, "crafted")
    with pytest.raises(ValidationFailed, match="schema_version"):
        validate_table(settings, RUN_DATE, _table(), {**METRICS, "schema_version": 99}, "crafted")


def test_warnings_are_reported_but_do_not_fail(settings):
    t = _with(_table(), "label_quality", ["dubious"] * 200)
    metrics = {**METRICS, "volume_ratio": 25.0, "unseen_category_share": 0.9, "max_category_share_shift": 0.5}
    report = validate_table(settings, RUN_DATE, t, metrics, "crafted")
    assert report["success"]
    joined = "\n".join(report["warnings"])
    for name in ("label_quality", "volume_ratio", "unseen_category_share", "max_category_share_shift"):
        assert name in joined
    assert "WARNING" in "\n".join(summary_lines(report))


def test_thresholds_come_from_settings(settings, monkeypatch):
    monkeypatch.setenv("MELI_VALIDATE_MIN_ROWS", "500")
    from pipelines.settings import get_settings

    with pytest.raises(ValidationFailed, match="expect_table_row_count_to_be_between"):
        validate_table(get_settings(), RUN_DATE, _table(), METRICS, "crafted")


def test_volume_and_distribution_metrics_against_earlier_partitions(settings, synthetic_jsonl):
    from pipelines.data.lake import partition_dir, read_partition
    from pipelines.data.validate import partition_metrics

    ingest([synthetic_jsonl(400, seed=1, name="a.jsonl.gz")], "2026-11-01", settings)
    ingest([synthetic_jsonl(100, seed=9, name="b.jsonl.gz")], "2026-11-02", settings)
    m = partition_metrics(settings, "2026-11-02", read_partition(partition_dir(settings.listings_dir, "2026-11-02")))
    assert m["volume_ratio"] == pytest.approx(100 / 400, rel=0.05)
    assert m["unseen_category_share"] == 0.0
    assert 0 <= m["max_category_share_shift"] < 0.2


def test_cli_validate_exit_codes(settings, clean, capsys):
    from pipelines.flows.cli import main

    assert main(["validate", "--run-date", RUN_DATE]) == 0
    assert "PASSED" in capsys.readouterr().out
    assert main(["validate", "/not/a/partition"]) == 2


def test_cli_validate_preflights_a_raw_file_without_touching_the_lake(settings, tmp_path, capsys):
    """`validate FILE`: an operator checks a feed before it lands; nothing is written to the lake."""
    from pipelines.data.lake import snapshot
    from pipelines.data.synthetic import write_jsonl
    from pipelines.flows.cli import main

    good = write_jsonl(tmp_path / "feed.jsonl.gz", 400, seed=3)
    assert main(["validate", str(good), "--run-date", "2026-11-30"]) == 0
    out = capsys.readouterr().out
    assert "validation 2026-11-30: PASSED" in out
    assert snapshot(settings.listings_dir) == {}  # the real lake holds nothing
    (report,) = (settings.home / "validation" / "preflight").glob("feed.jsonl.gz-*/report.json")
    assert "preflight" in json.loads(report.read_text())["source"]
    assert not (settings.home / "validation" / "2026-11-30").exists()  # no run's report replaced
    tiny = write_jsonl(tmp_path / "tiny.jsonl", 10, seed=3)  # under MELI_VALIDATE_MIN_ROWS: critical
    assert main(["validate", str(tiny), "--run-date", "2026-11-30"]) == 1
    assert "FAILED" in capsys.readouterr().out
    assert snapshot(settings.listings_dir) == {}


def _nonsense_jsonl(path, n=600):
    """n listings whose titles hold no letter at all: only emoji, or only digits (issue 31 item 7)."""
    emoji = ["\U0001f600", "\U0001f525", "\U0001f4f1", "\u2b50", "\U0001f45f"]
    cats = ["CELLPHONES", "SNEAKERS", "NOTEBOOKS"]
    rows = [
        {
            "title": " ".join(emoji[(i + k) % 5] for k in range(3 + i % 4)) + f" {i}" if i % 2 else f"{i:05d} {i * 37}",
            "category": cats[i % 3],
            "language": "spanish",
            "label_quality": "reliable",
        }
        for i in range(n)
    ]
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n")
    return path


def test_titles_with_no_letters_fail_validation(settings, tmp_path):
    """600 titles of only emoji or only digits were written and passed every expectation."""
    ingest([_nonsense_jsonl(tmp_path / "nonsense.jsonl")], RUN_DATE, settings)
    with pytest.raises(ValidationFailed, match="no_letter_title_share") as err:
        validate_partition(settings, RUN_DATE)
    [line] = [x for x in err.value.report["critical_failures"] if "no_letter_title_share" in x]
    assert "observed=1" in line or "100" in line, line
    assert err.value.report["metrics"]["no_letter_title_share"] == 1.0


def test_a_few_titles_with_no_letters_pass_and_the_threshold_is_a_setting(settings, monkeypatch):
    from pipelines.data.validate import no_letter_share
    from pipelines.settings import get_settings

    titles = [f"Zapatillas Nike modelo {i}" for i in range(196)] + ["12345", "\U0001f600\U0001f600", "###", "2020"]
    t = _with(_table(), "title", titles)
    assert no_letter_share(t) == pytest.approx(0.02)
    assert validate_table(settings, RUN_DATE, t, METRICS, "crafted")["success"]  # under the default 5%
    monkeypatch.setenv("MELI_VALIDATE_MAX_NO_LETTER_TITLE_SHARE", "0.01")
    with pytest.raises(ValidationFailed, match="no_letter_title_share"):
        validate_table(get_settings(), RUN_DATE, t, METRICS, "crafted")


def test_a_runs_data_docs_link_is_that_runs_only(settings):
    """Security item 6: the link names its DAG and run, and is read back only for them; the file names of
    ("x", "y__z") and ("x__y", "z"), or of run ids differing only in ':'/'+' vs '_', do not collide."""
    from pipelines.data.validate import link_run, run_link

    page = settings.gx_root / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html"
    report = {"run_date": RUN_DATE, "success": True, "data_docs_index": str(page)}
    link_run(settings, "x", "y__z", report)
    assert run_link(settings, "x", "y__z")["run_id"] == "y__z"
    assert run_link(settings, "x__y", "z") is None
    link_run(settings, "meli_retrain", "manual__2026-11-21T02:00:00+00:00", report)
    assert run_link(settings, "meli_retrain", "manual__2026-11-21T02_00_00_00_00") is None
    link_run(settings, "x__y", "z", report | {"success": False})
    assert run_link(settings, "x", "y__z")["success"] is True and run_link(settings, "x__y", "z")["success"] is False
