"""Issue 33, point 4: what a warm run calls new is decided by content against what its parent trained
on (the lake snapshot it recorded), not by partition date: the same listings ingested again, on the
same date or a new one, are nothing new; a listing whose title or category changed is."""

from __future__ import annotations

import logging

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.data.lake import LISTING_SCHEMA, commit_partition, load_listings, partition_dir, snapshot

OLD = [("a", "Zapatillas Nike Air Max", "ES", "SHOES"), ("b", "Celular Samsung S10", "ES", "PHONES")]
OLD += [("c", "Funda silicona iPhone 11", "PT", "CASES")]


def _commit(root, day: str, rows) -> None:
    n = len(rows)
    ids, titles, langs, cats = (list(x) for x in zip(*rows))
    table = pa.table(
        {
            "listing_id": ids,
            "title": titles,
            "language": langs,
            "label_quality": ["reliable"] * n,
            "category": cats,
            "split": ["train"] * n,
            "source_file": ["f.jsonl"] * n,
            "source_row": list(range(n)),
            "ingest_date": [day] * n,
        },
        schema=LISTING_SCHEMA,
    )
    with commit_partition(partition_dir(root, day)) as pending:
        pq.write_table(table, pending.dir / "part-00000.parquet")


def _dataset(root, ds_dir, upto: str) -> dict[str, int]:
    """A run's training split as prepare_dataset writes it (deduplicated, newest partition wins)."""
    snap = snapshot(root, upto)
    table = load_listings(root, upto=upto, columns=["listing_id", "title", "language", "category", "ingest_date"])
    ds_dir.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, ds_dir / "train.parquet")
    return snap


def _new_ids(root, ds_dir, snap, parent_snap) -> list[str]:
    from pipelines.training.warm import new_row_mask

    mask = new_row_mask(root, ds_dir, snap, parent_snap)
    ids = pq.read_table(ds_dir / "train.parquet", columns=["listing_id"]).column(0)
    return sorted(ids.filter(pa.array(mask)).to_pylist())


def test_the_same_rows_on_a_new_date_are_not_new_a_changed_title_or_category_is(tmp_path):
    root, ds = tmp_path / "lake", tmp_path / "ds"
    _commit(root, "2026-11-01", OLD)
    parent = snapshot(root)  # what the parent trained on: {"2026-11-01": 1}

    _commit(root, "2026-11-02", OLD)  # the same file ingested on the next night
    snap = _dataset(root, ds, "2026-11-02")
    assert pc.unique(pq.read_table(ds / "train.parquet").column("ingest_date")).to_pylist() == ["2026-11-02"]
    assert _new_ids(root, ds, snap, parent) == []

    changed = [OLD[0], ("b", "Celular Samsung S10 128gb", "ES", "PHONES"), ("c", *OLD[2][1:3], "COVERS")]
    _commit(root, "2026-11-03", [*changed, ("d", "Bicicleta rodado 29", "ES", "BIKES")])
    snap = _dataset(root, ds, "2026-11-03")
    assert _new_ids(root, ds, snap, parent) == ["b", "c", "d"]  # a new title, a new category, a new id
    # the parent of a later run saw 2026-11-03 already: nothing of it is new for it
    assert _new_ids(root, ds, snap, snapshot(root, "2026-11-03")) == []


def test_a_re_ingest_of_the_same_date_is_judged_by_its_rows(tmp_path):
    root, ds = tmp_path / "lake", tmp_path / "ds"
    _commit(root, "2026-11-01", OLD)
    parent = snapshot(root)
    _commit(root, "2026-11-01", list(reversed(OLD)))  # v2: the same rows, another order
    assert _new_ids(root, ds, _dataset(root, ds, "2026-11-01"), parent) == []
    _commit(root, "2026-11-01", [OLD[0], OLD[1], ("c", "Funda silicona iPhone 12", "PT", "CASES")])  # v3
    assert _new_ids(root, ds, _dataset(root, ds, "2026-11-01"), parent) == ["c"]


def test_a_parent_snapshot_the_lake_no_longer_keeps_counts_every_row_of_the_new_partitions(tmp_path):
    root, ds = tmp_path / "lake", tmp_path / "ds"
    _commit(root, "2026-11-01", OLD)
    parent = snapshot(root)
    for _ in range(3):  # v2..v4: v1 is no longer kept (KEEP_VERSIONS = 3)
        _commit(root, "2026-11-01", OLD)
    assert _new_ids(root, ds, _dataset(root, ds, "2026-11-01"), parent) == ["a", "b", "c"]


def test_a_warm_plan_skips_only_when_no_parent_has_a_new_or_changed_row(tmp_path):
    """The skip decision and the warm trainer's rows come from the same saved mask."""
    from pipelines.training.warm import parent_new_rows, plan_new_rows, skip_plan, warm_rows

    root, ds = tmp_path / "lake", tmp_path / "ds"
    _commit(root, "2026-11-01", OLD)
    parent_snap = snapshot(root)
    base = {"version": "1", "lake_versions": parent_snap}

    def plan(snap):
        entry = {**base, **plan_new_rows(root, ds, snap, parent_snap)}
        return {"mode": "warm", "reason": "warm", "base": base, "types": {"mlp": "warm"}, "parents": {"mlp": entry}}

    _commit(root, "2026-11-02", OLD)
    same = plan(_dataset(root, ds, "2026-11-02"))
    skipped = skip_plan(same)
    assert skipped is not None and skipped["mode"] == "skip"
    assert skipped["reason"].startswith("nothing new to train on: no new or changed rows since version 1")

    _commit(root, "2026-11-02", [OLD[0], ("b", "Celular Samsung S10 azul", "ES", "PHONES"), OLD[2]])
    retitled = plan(_dataset(root, ds, "2026-11-02"))
    assert skip_plan(retitled) is None  # one changed title: trained
    entry = retitled["parents"]["mlp"]
    assert (entry["new_rows"], entry["new_partitions"]) == (1, ["2026-11-02"])
    dates = pq.read_table(ds / "train.parquet", columns=["ingest_date"]).column(0).to_numpy(zero_copy_only=False)
    is_new = parent_new_rows(entry, dates)
    idx, n_new, n_replay = warm_rows(is_new, 1, seed=0)  # the changed row plus one replayed row
    ids = pq.read_table(ds / "train.parquet", columns=["listing_id"]).column(0).to_pylist()
    assert (n_new, n_replay) == (1, 1) and "b" in {ids[i] for i in idx}


def test_continued_fasttext_training_logs_no_alpha_warning(tmp_path, caplog):
    """Restarting the learning rate for the new words is intended: gensim's warning about it is dropped
    (that message only; the logger's other warnings still pass)."""
    from pipelines.features.embedding import embedding_digests
    from pipelines.training.warm import warm_embedding
    from tests.unit.model.test_models import encoder_and_ft

    enc, ft = encoder_and_ft()
    base = tmp_path / "work" / "2026-11-01" / "embedding"
    base.mkdir(parents=True)
    ft.save(str(base / "fasttext.model"))
    enc.save(base / "encoder.json")
    ds = tmp_path / "work" / "2026-11-02" / "dataset"
    ds.mkdir(parents=True)
    titles = ["Bicicleta rodado 29 aluminio", "Casco ciclismo ruta", "Zapatillas Nike Air Max negras"]
    pq.write_table(pa.table({"title": titles, "ingest_date": ["2026-11-02"] * 3}), ds / "train.parquet")
    plan = {
        "base": {"version": "1", "embedding_dir": str(base), "embedding_sha256": embedding_digests(base)},
        "new_partitions": ["2026-11-02"],
    }
    with caplog.at_level(logging.INFO):
        emb = warm_embedding(ds, plan, seed=1)
    assert emb["continued_on"] == 3 and emb["vocab_size"] > emb["base_vocab_size"]
    assert "Effective 'alpha'" not in caplog.text, caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    from pipelines.training.warm import quiet_alpha_restart

    with quiet_alpha_restart(), caplog.at_level(logging.WARNING):
        logging.getLogger("gensim.models.word2vec").warning("another gensim warning")
    assert "another gensim warning" in caplog.text
