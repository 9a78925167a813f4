"""Training: PyTorch classifiers on the FastText-initialised embedding, tracked in MLflow.

Same code path on CUDA (bf16 autocast, pinned memory) and CPU. Early stopping on validation
macro-recall; the best epoch's weights are the ones kept and logged as a pyfunc model.
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from pipelines.config import TrainConfig
from pipelines.encoded import EncodedSplit, load_encoded
from pipelines.features import EmbeddingConfig, TitleEncoder, read_split
from pipelines.lake import atomic_tree
from pipelines.pyfunc import pick_device
from pipelines.sentence import dim as sentence_dim
from pipelines.settings import REPO_ROOT, Settings

log = logging.getLogger(__name__)


def embedding_config(cfg: TrainConfig) -> EmbeddingConfig:
    """FastText settings of a run; gensim's worker threads: every core (the embedding task runs alone)."""
    import os

    workers = max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    return EmbeddingConfig(dim=cfg.embedding_dim, epochs=cfg.embedding_epochs, bucket=cfg.bucket, workers=workers)


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def length_bucketed_batches(
    lengths: np.ndarray, batch_size: int, rng: np.random.Generator, sampler_weights: np.ndarray | None = None
) -> list[np.ndarray]:
    """Shuffle, sort within pools of 50 batches by length, cut into batches, shuffle batches."""
    n = len(lengths)
    if sampler_weights is not None:
        order = rng.choice(n, size=n, replace=True, p=sampler_weights / sampler_weights.sum())
    else:
        order = rng.permutation(n)
    pool = batch_size * 50
    batches = []
    for s in range(0, n, pool):
        chunk = order[s : s + pool]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


class RowAdam:
    """Adam on embedding rows: ``torch.optim.SparseAdam``'s update (moments and step of only the
    rows a batch touched; same bias correction). ``update(param, rows, grad)`` takes the dense
    gradient of the gathered rows (the training loop's path); ``step()`` the sparse ``.grad``s.
    """

    def __init__(self, params: list, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        import torch

        self.params, self.eps, self.betas = list(params), eps, betas
        self.param_groups = [{"lr": lr}]
        self.state = {
            id(p): {"step": 0, "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)} for p in self.params
        }

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    def _step_size(self, st: dict) -> float:
        b1, b2 = self.betas
        st["step"] += 1
        return self.param_groups[0]["lr"] * math.sqrt(1 - b2 ** st["step"]) / (1 - b1 ** st["step"])

    def update(self, p, rows, grad) -> None:
        """One Adam step of rows ``rows`` (distinct) of ``p`` with their gradient ``grad`` [R, D].
        Rows are distinct, so the write-back is index_copy_ (on CPU index_add_ is ~4x slower)."""
        import torch

        if rows.numel() == 0:
            return
        st, (b1, b2) = self.state[id(p)], self.betas
        with torch.no_grad():
            grad = grad.to(p.dtype)
            m = st["exp_avg"].index_select(0, rows).lerp_(grad, 1 - b1)
            v = st["exp_avg_sq"].index_select(0, rows).mul_(b2).addcmul_(grad, grad, value=1 - b2)
            st["exp_avg"].index_copy_(0, rows, m)
            st["exp_avg_sq"].index_copy_(0, rows, v)
            new = p.index_select(0, rows).add_(m.div_(v.sqrt_().add_(self.eps)), alpha=-self._step_size(st))
            p.index_copy_(0, rows, new)

    def update_dense(self, p) -> None:
        """The same update from ``p``'s dense ``.grad`` (CUDA): rows with a non-zero gradient are
        the touched ones; every op stays on the device (no host sync)."""
        import torch

        if p.grad is None:
            return
        st, (b1, b2) = self.state[id(p)], self.betas
        with torch.no_grad():
            g = p.grad
            touched = (g != 0).any(1, keepdim=True)
            m, v = st["exp_avg"], st["exp_avg_sq"]
            m.copy_(torch.where(touched, torch.lerp(m, g, 1 - b1), m))
            v.copy_(torch.where(touched, v * b2 + g * g * (1 - b2), v))
            step = self._step_size(st)
            p.sub_(torch.where(touched, m / (v.sqrt() + self.eps), torch.zeros((), device=p.device)) * step)

    def step(self) -> None:
        for p in self.params:
            if p.grad is not None:
                g = p.grad.coalesce() if p.grad.is_sparse else p.grad.to_sparse(1)
                self.update(p, g.indices()[0], g.values())


def _pip_requirements(bundle_dir: Path | None = None) -> list[str]:
    import importlib.metadata as md

    pins = []
    packages = ["mlflow", "torch", "gensim", "numpy", "pandas", "pyarrow"]
    if bundle_dir is not None and (bundle_dir / "sentence" / "meta.json").exists():  # the word vectors' encoder
        packages.append(json.loads((bundle_dir / "sentence" / "meta.json").read_text())["package"].split("==")[0])
    for pkg in packages:
        try:
            pins.append(f"{pkg}=={md.version(pkg).split('+')[0]}")
        except md.PackageNotFoundError:
            continue
    return pins


def start_parent_run(settings: Settings, run_date: str, dataset: dict, tags: dict | None = None) -> str:
    """The retraining run that groups the embedding, each classifier and the gate decision."""
    import mlflow

    from pipelines.tracking import configure

    configure(settings)
    with mlflow.start_run(run_name=f"retrain-{run_date}") as run:
        mlflow.set_tags(
            {"meli.run_date": run_date, "meli.stage": "retrain", **_lineage(Path(dataset["dir"])), **(tags or {})}
        )
        mlflow.log_params({f"rows_{k}": v for k, v in dataset["counts"].items()})
        mlflow.log_param("num_categories", dataset["num_categories"])
        mlflow.log_artifact(str(Path(dataset["dir"]) / "dataset.json"), artifact_path="data")
        return run.info.run_id


def log_embedding(settings: Settings, parent_run_id: str, emb: dict, cfg: TrainConfig) -> None:
    import mlflow

    from pipelines.tracking import configure

    configure(settings)
    with mlflow.start_run(run_id=parent_run_id):
        mlflow.log_params({f"embedding_{k}": v for k, v in asdict(embedding_config(cfg)).items()})
        mlflow.log_metrics({"embedding_vocab_size": emb["vocab_size"], "embedding_train_seconds": emb["seconds"]})
        encoded = emb.get("encoded")
        if encoded:
            mlflow.log_metrics({"encode_seconds": encoded["seconds"], "encoded_tokens": encoded["distinct_tokens"]})
            mlflow.log_param("sentence_encoder", encoded.get("sentence_encoder", "none"))
            if encoded.get("sentence_encoder", "none") != "none":
                mlflow.log_metric("sentence_vector_seconds", encoded.get("sentence_s", 0.0))
        plan = emb.get("plan")
        if plan:
            mlflow.set_tags({"meli.mode": plan["mode"], "meli.mode_reason": plan["reason"][:4000]})
            if plan["mode"] == "warm":
                mlflow.set_tag("meli.base_version", plan["base"]["version"])
                mlflow.log_metrics(
                    {"vocab_growth": plan["vocab_growth"], "new_partitions": len(plan["new_partitions"])}
                )


def _lineage(dataset_dir: Path) -> dict:
    info = json.loads((dataset_dir / "dataset.json").read_text())
    return {
        "meli.data_version": info.get("data_version", ""),
        "meli.lake_versions": ",".join(f"{d}@v{v}" for d, v in sorted(info.get("lake_versions", {}).items()))[:4000],
        "meli.partitions": ",".join(p["ingest_date"] for p in info["lineage"])[:4000],
        "meli.source_sha256": ",".join(
            sorted({s["sha256"][:16] for p in info["lineage"] for s in p["sources"] if s.get("sha256")})
        )[:4000],
    }


def _hardware(device) -> str:
    """Where a model was trained, for its model card: host, CPU cores, the GPU if any, torch."""
    import os
    import platform
    import socket

    import torch

    gpu = torch.cuda.get_device_name(device) if str(device).startswith("cuda") else "no GPU"
    return f"{socket.gethostname()} ({platform.machine()}, {os.cpu_count()} cores, {gpu}, torch {torch.__version__})"


def train_classifier(
    settings: Settings,
    dataset_dir: str | Path,
    embedding_dir: str | Path,
    kind: str,
    cfg: TrainConfig,
    parent_run_id: str | None = None,
    run_date: str = "",
    threads: int | None = None,
    plan: dict | None = None,
    epoch_callback=None,
    log_model: bool = True,
) -> dict:
    """Train one model type and log it to MLflow. Returns a small dict for XCom. ``threads``: torch
    CPU threads for this process (default: torch's, all cores); set it when trainings run side by side.

    Selection pass: train on the train split, early stopping on validation macro-recall (the best
    epoch's weights are kept). With ``cfg.refit`` the served model is then retrained from the same
    initialisation on train + validation for exactly that many epochs (same learning-rate schedule):
    ~14% more labelled rows, which the selection pass showed are worth ~0.3 points of macro-recall.
    Validation metrics, diagnostics and the ensemble search always come from the selection pass
    (``diagnostics/val_probs.npy``); the refit model is judged on the frozen test split by the gate.

    ``plan`` (pipelines/warm.py; None = full): in a warm plan this type starts from its parent's
    weights and both passes train on the new partitions' rows plus a replay sample, for at most
    ``cfg.warm_epochs`` epochs.

    ``epoch_callback(epoch, val_macro_recall)`` (hyperparameter tuning, pipelines/tune.py) is called
    after each selection-pass epoch is logged; it may raise (e.g. ``optuna.TrialPruned``) to stop the
    run there. ``log_model=False``: no bundle and no logged model (a tuning trial; result model_uri "").
    """
    import mlflow
    import torch

    from pipelines.evaluate import macro_recall
    from pipelines.pyfunc import pick_device
    from pipelines.tracking import configure

    dataset_dir, embedding_dir = Path(dataset_dir), Path(embedding_dir)
    device = pick_device(cfg.device if cfg.device != "auto" else settings.device)
    if threads and device.type == "cpu":
        torch.set_num_threads(threads)
    encoder = TitleEncoder.load(embedding_dir / "encoder.json")
    encoded = load_encoded(dataset_dir, embedding_dir, cfg.sentence_encoder, settings.sentence_cache_dir)
    labels = encoded.labels
    train_data, val_data = encoded.split("train"), encoded.split("validation")
    train_df = read_split(dataset_dir, "train", columns=["listing_id", "category", "ingest_date"])
    val_df = read_split(dataset_dir, "validation", columns=["category"])
    y_val_names = val_df["category"].tolist()
    y_val = np.asarray(val_data.labels, dtype=np.int64)  # -1: class absent from train
    fit = _Fit(kind, cfg, encoder, labels, device, embedding_dir)
    fit.set_tokens(encoded.tokens, encoded.sentence)
    keep = np.flatnonzero(y_val >= 0)  # a validation row whose class train lacks has no label id
    idf_data = EncodedSplit.concat([train_data, val_data.take(keep)])  # refit's idf: every labelled row
    fit_rows, refit_rows = train_data, idf_data
    parent = (plan or {}).get("parents", {}).get(kind) if (plan or {}).get("mode") == "warm" else None
    mode, epochs, lineage = "full", cfg.epochs, {"meli.mode": "full"}
    if parent is not None:
        from pipelines.warm import parent_bundle, parent_state, warm_rows

        mode, epochs = "warm", cfg.warm_epochs
        bundle = parent_bundle(settings, parent, kind, Path(settings.run_dir(run_date or "adhoc")) / "parents" / kind)
        fit.parent = (bundle, lambda fresh: parent_state(fresh, fit.model_cfg, encoder, labels, bundle))
        t_idx, n_new, n_replay = warm_rows(
            train_df["ingest_date"].to_numpy(), parent["new_partitions"], cfg.replay_rows, cfg.seed
        )
        fit_rows = train_data.take(t_idx)
        lineage = {
            "meli.mode": "warm",
            "meli.parent_version": parent["version"],
            "meli.parent_model_type": parent["model_type"],
            "meli.full_run_date": parent["full_run_date"],
        }
        log.info(
            "%s warm from version %s: %d new + %d replayed training rows (of %d), partitions %s",
            kind, parent["version"], n_new, n_replay, len(train_data), parent["new_partitions"],
        )  # fmt: skip
    else:
        lineage["meli.full_run_date"] = run_date
        n_new, n_replay = len(train_data), 0

    def evaluate_split(model) -> tuple[float, float, np.ndarray]:
        probs, p_true = predict_split(model, fit.tokens_t, val_data, device, sent=fit.sent_t)
        p_true = np.where(y_val >= 0, p_true, 1e-9)
        loss = float(-np.log(np.clip(p_true, 1e-9, 1)).mean())
        pred = np.asarray(labels, dtype=object)[probs.argmax(1)]
        return macro_recall(y_val_names, list(pred)), loss, probs

    configure(settings)
    run_kwargs = {"run_name": f"{kind}-{run_date}" if run_date else kind}
    if parent_run_id:
        run_kwargs.update(parent_run_id=parent_run_id, nested=True)
    with mlflow.start_run(**run_kwargs) as run:
        mlflow.set_tags(
            {
                "meli.model_type": kind,
                "meli.run_date": run_date,
                "meli.device": str(device),
                "meli.hardware": _hardware(device),
                **_lineage(dataset_dir),
                **lineage,
            }
        )
        mlflow.log_params(
            {
                **{k: v for k, v in cfg.to_dict().items() if k != "models"},
                "model_type": kind,
                "num_classes": len(labels),
                "vocab_size": len(encoder.itos),
                "device": str(device),
                "torch_threads": torch.get_num_threads(),
                "effective_batch_size": fit.batch_size,
                "effective_lr": fit.lr,
                "effective_embedding_lr": fit.embedding_lr,
                "mode": mode,
            }
        )
        try:
            mlflow.log_input(
                mlflow.data.from_pandas(
                    train_df, source=str(dataset_dir / "train.parquet"), name=f"train-{run_date}", targets="category"
                ),
                context="training",
            )
        except Exception as exc:  # lineage tags above still hold the manifest data
            log.warning("mlflow.log_input failed: %s", exc)

        # selection pass: train split only, early stopping on validation macro-recall
        best = {"val": -1.0, "epoch": 0, "state": None, "probs": None}

        def on_epoch(model, epoch: int, train_loss: float, epoch_s: float) -> bool:
            val_mr, val_loss, probs = evaluate_split(model)
            mlflow.log_metrics(
                {
                    "train_loss": train_loss,
                    "val_loss": val_loss,
                    "val_macro_recall": val_mr,
                    "epoch_samples_per_s": len(fit_rows) / epoch_s,
                },
                step=epoch,
            )
            log.info(
                "%s epoch %d/%d: train_loss %.4f val_loss %.4f val_macro_recall %.4f (%.1fs)",
                kind, epoch, cfg.epochs, train_loss, val_loss, val_mr, epoch_s,
            )  # fmt: skip
            if epoch_callback is not None:
                epoch_callback(epoch, val_mr)
            if val_mr > best["val"]:
                state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
                best.update(val=val_mr, epoch=epoch, state=state, probs=probs)
            elif epoch - best["epoch"] >= cfg.patience:
                log.info("%s: early stop after epoch %d (best epoch %d)", kind, epoch, best["epoch"])
                return False
            return True

        model = fit.new_model(train_data)
        seen, train_seconds = fit.run(model, fit_rows, epochs, on_epoch)
        state = best["state"]
        metrics = {
            "best_val_macro_recall": best["val"],
            "best_epoch": best["epoch"],
            "train_seconds": train_seconds,
            "train_samples_per_s": seen / max(train_seconds, 1e-9),
            "train_rows": len(fit_rows),
            "train_rows_new": n_new,
            "train_rows_replayed": n_replay,
        }
        # the served model: same recipe, train + validation rows, best_epoch epochs. Not in warm mode:
        # its extra rows would be the new partitions' validation rows (~10% of a night) for twice the time
        if cfg.refit and mode == "full":
            del model

            def on_refit_epoch(model, epoch: int, train_loss: float, epoch_s: float) -> bool:
                mlflow.log_metrics({"refit_train_loss": train_loss}, step=epoch)
                log.info("%s refit epoch %d/%d: loss %.4f (%.1fs)", kind, epoch, best["epoch"], train_loss, epoch_s)
                return epoch < best["epoch"]

            model = fit.new_model(idf_data)
            _, refit_seconds = fit.run(model, refit_rows, epochs, on_refit_epoch)
            state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
            metrics |= {"refit_rows": len(refit_rows), "refit_seconds": refit_seconds, "refit_epochs": best["epoch"]}
            train_seconds += refit_seconds
        mlflow.log_metrics(metrics)
        if not log_model:
            return {"model_type": kind, "run_id": run.info.run_id, "model_uri": "", "device": str(device),
                    "val_macro_recall": round(best["val"], 6), "best_epoch": best["epoch"],
                    "train_seconds": round(train_seconds, 2)}  # fmt: skip

        bundle_dir = Path(settings.run_dir(run_date or "adhoc")) / "models" / kind / "bundle"
        with atomic_tree(bundle_dir) as tmp:
            torch.save(state, tmp / "weights.pt")
            (tmp / "labels.json").write_text(json.dumps(labels))
            (tmp / "config.json").write_text(json.dumps({"model": fit.model_cfg.to_dict(), "train": cfg.to_dict()}))
            shutil.copy(embedding_dir / "encoder.json", tmp / "encoder.json")
            if encoded.sentence is not None:  # what serving needs to give each word the same vector
                from pipelines.sentence import SentenceTable, WordEncoder

                words, version = encoded.words(), WordEncoder(cfg.sentence_encoder).version
                SentenceTable.write(tmp / "sentence", cfg.sentence_encoder, words[1:], encoded.sentence[1:], version)

        info = _log_served_model(bundle_dir, val_df, best["probs"])
        mlflow.set_tag("meli.model_uri", info.model_uri)  # a later warm run may start from it
        result = {
            "model_type": kind,
            "run_id": run.info.run_id,
            "model_uri": info.model_uri,
            "val_macro_recall": round(best["val"], 6),
            "best_epoch": best["epoch"],
            "train_seconds": round(train_seconds, 2),
            "device": str(device),
            "refit": cfg.refit and mode == "full",
            "mode": mode,
            "parent_version": parent["version"] if parent else "",
            "full_run_date": lineage["meli.full_run_date"],
            "train_rows": len(fit_rows),
        }
        log.info("%s trained: %s", kind, result)
        return result


class _Fit:
    """One training recipe (model config, initialisation, optimisers, schedule), run on any rows.

    Rows are an ``EncodedSplit`` over the run's ``tokens`` table (pipelines/encoded.py): a batch is
    an index array, gathered and padded as arrays. On CPU a step gathers the embedding rows its
    tokens touch once (``torch.unique``), runs ``embedding_bag`` over that slice and updates exactly
    those rows (dense [rows, dim] gradients, no sparse tensors); each distinct token of the batch is
    computed once. On CUDA the arrays live on the device, batches are drawn there, and the tables
    get dense gradients with a masked row update: no host sync per step.
    """

    def __init__(self, kind: str, cfg: TrainConfig, encoder: TitleEncoder, labels: list[str], device, embedding_dir):
        from gensim.models import FastText

        from pipelines.features import embedding_matrix
        from pipelines.models import ModelConfig

        self.cfg, self.encoder, self.labels, self.device = cfg, encoder, labels, device
        self.model_cfg = ModelConfig(
            kind=kind,
            num_embeddings=encoder.num_embeddings,
            dim=encoder.emb.dim,
            num_classes=len(labels),
            hidden=cfg.hidden,
            dropout=cfg.dropout,
            freeze_embedding=cfg.freeze_embedding,
            vocab_size=len(encoder.itos),
            wide_dim=cfg.wide_dim,
            wide_bigrams=cfg.wide_bigrams if cfg.wide_dim else 0,
            sentence_dim=sentence_dim(cfg.sentence_encoder),
        )
        ft = FastText.load(str(Path(embedding_dir) / "fasttext.model"))
        self.init_vectors = embedding_matrix(encoder, ft)
        self.init_vectors[0] = 0.0
        self.parent = None  # warm start: (bundle dir, fresh state -> the parent's state on this vocabulary)
        self.batch_size, self.lr, self.embedding_lr = effective_recipe(cfg, device)
        self.on_device = device.type == "cuda"
        self.tokens_t = None  # the run's token table on the device (set_tokens)
        self.sent_t = None  # float16 [V, S]: each token's pretrained vector (a sentence encoder), or None

    def set_tokens(self, tokens: np.ndarray, sentence: np.ndarray | None = None) -> None:
        import torch

        self.tokens_t = torch.from_numpy(np.ascontiguousarray(tokens, dtype=np.int64)).to(self.device)
        if self.model_cfg.sentence_dim and sentence is None:
            raise ValueError(f"sentence_encoder={self.cfg.sentence_encoder!r} but the encoded splits carry no vectors")
        if sentence is not None and self.model_cfg.sentence_dim:
            self.sent_t = torch.from_numpy(np.array(sentence, dtype=np.float16)).to(self.device)  # a copy: writable

    def new_model(self, data: EncodedSplit):
        """A freshly initialised model (seeded: the same weights every call; warm: the parent's
        weights on this vocabulary, new rows from FastText); the wide idf from ``data``."""
        import torch

        from pipelines.models import build_model

        seed_everything(self.cfg.seed)
        model = build_model(self.model_cfg)
        with torch.no_grad():
            model.emb.weight.copy_(torch.from_numpy(self.init_vectors))
            if self.parent is not None:
                model.load_state_dict(self.parent[1](model.state_dict()))
            if model.wide is not None:
                model.wide.idf.copy_(torch.from_numpy(wide_idf(model.wide, data, self.tokens_t.cpu().numpy())))
        return model.to(self.device)

    def run(self, model, data: EncodedSplit, epochs: int, on_epoch) -> tuple[int, float]:
        """Up to ``epochs`` epochs (warm-up + cosine over all of them); ``on_epoch(model, epoch,
        train_loss, seconds)`` after each, in eval mode, returns False to stop. Returns (samples
        seen, training seconds)."""
        import torch
        import torch.nn.functional as F

        cfg, device, on_device = self.cfg, self.device, self.on_device
        y = np.asarray(data.labels, dtype=np.int64)
        lengths = np.asarray(data.lengths)
        counts = np.bincount(y, minlength=len(self.labels)).astype(np.float64)
        class_w, sampler_w = None, None
        if cfg.balance == "weighted":
            w = len(y) / (len(self.labels) * np.maximum(counts, 1))
            class_w = torch.tensor(w, dtype=torch.float32, device=device)
        elif cfg.balance == "sampler":
            sampler_w = 1.0 / counts[y]

        table_params = {id(model.emb.weight)} | ({id(model.wide.table.weight)} if model.wide is not None else set())
        dense = [p for p in model.parameters() if p.requires_grad and id(p) not in table_params]
        # fused: one kernel per step on CUDA (a step is ~1 ms of GPU work behind ~300 kernel launches)
        opt = torch.optim.AdamW(dense, lr=self.lr, weight_decay=cfg.weight_decay, fused=on_device or None)
        # CPU: the tables' rows live in RowTables during the run; CUDA: the model's own tables
        tables = None if on_device else RowTables(model)
        row_opt = RowAdam(_tables(model) if on_device else tables.tensors, lr=self.embedding_lr)
        rng = np.random.default_rng(cfg.seed)
        batch_size = self.batch_size
        steps_per_epoch = math.ceil(len(y) / batch_size)
        total_steps = steps_per_epoch * epochs
        warm = max(1, steps_per_epoch // 2)

        def set_lr(step: int) -> None:  # linear warm-up, cosine decay
            decay = 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total_steps - warm)))
            f = step / warm if step < warm else decay
            for g in opt.param_groups:
                g["lr"] = self.lr * f
            row_opt.param_groups[0]["lr"] = self.embedding_lr * f

        if on_device:  # the whole split on the GPU once; batches are gathered there
            keys_d = torch.from_numpy(np.asarray(data.keys, dtype=np.int64)).to(device)
            offsets_d = torch.from_numpy(np.asarray(data.offsets)).to(device)
            y_d = torch.from_numpy(y).to(device)

        step, seen, seconds = 0, 0, 0.0
        for epoch in range(1, epochs + 1):
            model.train()
            t0 = time.perf_counter()
            total_loss, nb = torch.zeros((), device=device), 0  # summed on the device: no sync per step
            for b_idx in length_bucketed_batches(lengths, batch_size, rng, sampler_w):
                T = max(1, int(lengths[b_idx].max(initial=0)))
                lens = torch.from_numpy(lengths[b_idx])
                if on_device:
                    idx = torch.from_numpy(b_idx).pin_memory().to(device, non_blocking=True)
                    keys = gather_keys_t(keys_d, offsets_d, idx, lens.pin_memory().to(device, non_blocking=True), T)
                    target = y_d[idx]
                else:
                    keys = torch.from_numpy(data.batch(b_idx)[0])
                    target = torch.from_numpy(y[b_idx])
                set_lr(step)
                with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=on_device):
                    # multi-branch models: one loss per branch (an ensemble trained in one pass)
                    branches, rows = batch_branches(
                        model, self.tokens_t, keys, lens, not on_device, tables, self.sent_t
                    )
                loss = sum(
                    F.cross_entropy(lg.float(), target, weight=class_w, label_smoothing=cfg.label_smoothing)
                    for lg in branches
                ) / len(branches)
                opt.zero_grad(set_to_none=True)
                row_opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(dense, 5.0)
                opt.step()
                apply_rows(row_opt, rows, tables)
                total_loss += loss.detach()
                nb += 1
                step += 1
                seen += len(b_idx)
            if on_device:
                torch.cuda.synchronize(device)  # the epoch's time includes its queued GPU work
            epoch_s = time.perf_counter() - t0
            seconds += epoch_s
            if tables is not None:
                tables.write_back(model)
            model.eval()
            if not on_epoch(model, epoch, float(total_loss) / max(nb, 1), epoch_s):
                break
        model.eval()
        return seen, seconds


def effective_recipe(cfg: TrainConfig, device) -> tuple[int, float, float]:
    """(batch size, dense lr, embedding lr) on ``device``. On CUDA, unless ``cfg.gpu_batch_size`` is
    0, the GPU recipe: that batch size with both learning rates scaled by sqrt(its ratio to
    ``cfg.batch_size``) (batch 512 at x2.83 kept validation macro-recall within noise on an H100)."""
    if device.type != "cuda" or not cfg.gpu_batch_size or cfg.gpu_batch_size <= cfg.batch_size:
        return cfg.batch_size, cfg.lr, cfg.embedding_lr
    scale = math.sqrt(cfg.gpu_batch_size / cfg.batch_size)
    return cfg.gpu_batch_size, cfg.lr * scale, cfg.embedding_lr * scale


def gather_keys_t(keys, offsets, idx, lens, T: int):
    """Torch twin of ``EncodedSplit.batch`` for arrays on the device: keys [B, T]."""
    import torch

    ar = torch.arange(T, device=keys.device)
    pos = (offsets[idx].unsqueeze(1) + ar).clamp(max=max(keys.numel() - 1, 0))
    return torch.where(ar < lens.unsqueeze(1), keys[pos], torch.zeros((), dtype=keys.dtype, device=keys.device))


class RowTables:
    """The embedding rows a CPU training run updates, outside the model: every token row of the
    token table and of the wide table side by side ([N, dim + wide_dim]: one gather and one row
    update per step serve both), the wide table's bigram rows apart. ``write_back`` copies them
    into the model (before it is evaluated or saved)."""

    def __init__(self, model):
        import torch

        self.dim, self.n = model.emb.weight.shape[1], model.emb.weight.shape[0]
        self.freeze = not model.emb.weight.requires_grad
        with torch.no_grad():
            emb = model.emb.weight.detach()
            if model.wide is not None:
                wide = model.wide.table.weight.detach()
                self.tok = torch.cat([emb, wide[: self.n]], dim=1).contiguous()
                self.bi = wide[self.n :].clone()
            else:
                self.tok, self.bi = emb.clone(), None

    @property
    def tensors(self) -> list:
        return [self.tok] + ([self.bi] if self.bi is not None and len(self.bi) else [])

    def write_back(self, model) -> None:
        import torch

        with torch.no_grad():
            model.emb.weight.copy_(self.tok[:, : self.dim])
            if model.wide is not None:
                model.wide.table.weight[: self.n].copy_(self.tok[:, self.dim :])
                model.wide.table.weight[self.n :].copy_(self.bi)


def batch_branches(model, tokens, keys, lengths, gather: bool = True, tables: RowTables | None = None, sent=None):
    """One batch of token keys [B, T] through ``model.branches``. Returns (branch logits, rows):
    rows is [(table, row ids, leaf)] to update after backward with ``leaf.grad``; row 0 (padding)
    is never updated. ``sent``: the pretrained vector of every key (models that read them).

    ``gather`` (CPU): each distinct token of the batch is computed once, over the rows of
    ``tables`` (RowTables) it touches, gathered into one leaf: its gradient is the rows' gradient,
    dense and small. Without (CUDA): the whole model on the ids, leaf None, the tables' own
    ``.grad`` dense."""
    import torch

    mask = keys != 0
    if not gather:
        ids = tokens[keys]
        rows = [(p, None, None) for p in _tables(model)]
        from pipelines.models import sentence_mean

        sentence = None if sent is None else sentence_mean(sent, keys)
        return model.forward_branches(ids, lengths, sentence), rows
    tables = tables or RowTables(model)
    # index_select, not advanced indexing: ~6x faster on CPU
    uk, inv = torch.unique(keys, return_inverse=True)
    sub = tokens.index_select(0, uk)  # [U, K] ids of the batch's distinct tokens
    r_tok, local = torch.unique(sub, return_inverse=True)
    words = sub[:, 0].index_select(0, inv.flatten()).view_as(inv)
    leaf = tables.tok.index_select(0, r_tok).requires_grad_(True)
    rows = [(tables.tok, r_tok, leaf)]
    emb, wide, bigrams, sentence = leaf[:, : tables.dim], None, None, None
    if model.wide is not None:
        w = model.wide
        wide = leaf[:, tables.dim :]
        if w.cfg.wide_bigrams > 0 and words.shape[1] > 1:
            b = w.bigram_rows(words)  # rows of the wide table: >= n, 0 = none
            r_bi, b_local = torch.unique(b, return_inverse=True)
            bi_leaf = tables.bi.index_select(0, (r_bi - tables.n).clamp(min=0)).requires_grad_(True)
            rows.append((tables.bi, torch.where(r_bi > 0, r_bi - tables.n + 1, 0), bi_leaf))
            bigrams = w.token_parts(b, b_local, bi_leaf)
    feats_u = model.token_features(sub, local, emb, wide)
    feats = feats_u.index_select(0, inv.flatten()).view(*inv.shape, feats_u.shape[-1])
    if sent is not None:
        from pipelines.models import sentence_mean

        sentence = sentence_mean(sent, keys)
    return model.branches(feats, mask, lengths, words, bigrams, sentence), rows


def apply_rows(opt: RowAdam, rows, tables: RowTables | None) -> None:
    """After backward: RowAdam on the rows a batch touched (see ``batch_branches``)."""
    for target, r, leaf in rows:
        if leaf is None:
            opt.update_dense(target)
            continue
        if leaf.grad is None:
            continue
        g = leaf.grad
        if tables is not None and target is tables.tok and tables.freeze:
            g[:, : tables.dim] = 0  # a frozen embedding: only the wide columns learn
        keep = r != 0
        rr = r[keep]
        if tables is not None and target is tables.bi:
            rr = rr - 1  # bigram rows were shifted by one so that 0 means "none"
        opt.update(target, rr, g[keep])


def _tables(model) -> list:
    out = [model.emb.weight] if model.emb.weight.requires_grad else []
    return out + ([model.wide.table.weight] if model.wide is not None else [])


def wide_idf(wide, data: EncodedSplit, tokens: np.ndarray) -> np.ndarray:
    """Smoothed idf (sklearn's formula) of every wide-bag id (subword ids and hashed word-bigram
    rows) over the titles of ``data``: per chunk of titles, the (title, id) pairs of their tokens
    (no padding), made distinct with one sort, counted with one bincount."""
    from pipelines.models import BIGRAM_PRIME

    rows, cfg = wide.idf.shape[0], wide.cfg
    df = np.zeros(rows, dtype=np.int64)
    n, offsets = len(data), np.asarray(data.offsets)
    for s in range(0, n, 65536):
        e = min(n, s + 65536)
        keys = np.asarray(data.keys[offsets[s] : offsets[e]], dtype=np.int64)
        title = np.repeat(np.arange(e - s, dtype=np.int64), np.diff(offsets[s : e + 1]))
        ids = tokens[keys]  # [tokens, K]
        r, c = np.nonzero(ids)
        parts = [title[r] * rows + ids[r, c]]
        if cfg.wide_bigrams > 0 and len(keys) > 1:  # as models.bigram_ids: both in-vocabulary words
            w = ids[:, 0]
            same = title[1:] == title[:-1]
            ok = same & (w[:-1] >= 2) & (w[:-1] < cfg.vocab_size) & (w[1:] >= 2) & (w[1:] < cfg.vocab_size)
            b = (w[:-1][ok] * BIGRAM_PRIME + w[1:][ok]) % cfg.wide_bigrams + cfg.num_embeddings
            parts.append(title[:-1][ok] * rows + b)
        pair = np.sort(np.concatenate(parts))  # (np.unique is ~20x slower than a sort here)
        pair = pair[np.concatenate(([True], pair[1:] != pair[:-1]))]  # one per title and id
        df += np.bincount(pair % rows, minlength=rows)
    df[0] = 0
    return (np.log((1 + n) / (1 + df)) + 1).astype(np.float32)


def predict_split(
    model, tokens, data: EncodedSplit, device, batch_size: int = 2048, sent=None
) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities (float16 [n, C]) and each row's probability of its label (float32; 0
    where the label is -1) of an encoded split. Every distinct token's features are computed once,
    then titles are classified in length-sorted batches (the serving bundle's path)."""
    import torch

    from pipelines.models import sentence_mean

    n = len(data)
    probs = np.zeros((n, model.cfg.num_classes), dtype=np.float16)
    p_true = np.zeros(n, dtype=np.float32)
    y = np.asarray(data.labels, dtype=np.int64)
    with torch.inference_mode():
        tok = tokens if torch.is_tensor(tokens) else torch.from_numpy(np.asarray(tokens, dtype=np.int64))
        tok = tok.to(device)
        if sent is not None and not torch.is_tensor(sent):
            sent = torch.from_numpy(np.array(sent, dtype=np.float16))
        sent = None if sent is None or not model.cfg.sentence_dim else sent.to(device)
        feats = torch.cat([model.token_features(tok[s : s + 16384]).float() for s in range(0, len(tok), 16384)])
        words = tok[:, 0]
        order = np.argsort(data.lengths, kind="stable")
        for s in range(0, n, batch_size):
            idx = order[s : s + batch_size]
            keys, lengths = data.batch(idx)
            kt = torch.from_numpy(keys).to(device)
            sentence = None if sent is None else sentence_mean(sent, kt)
            logits = model.classify(feats[kt], kt != 0, torch.from_numpy(lengths), words[kt], sentence)
            pr = torch.softmax(logits.float(), -1)
            pr = pr.cpu().numpy()
            probs[idx] = pr
            yi = y[idx]
            p_true[idx] = np.where(yi >= 0, pr[np.arange(len(idx)), np.maximum(yi, 0)], 0.0)
    return probs, p_true


def _log_served_model(bundle_dir: Path, val_df, val_probs: np.ndarray):
    """In the active MLflow run: validation diagnostics, then the bundle as a pyfunc model.

    ``val_probs`` are the selection pass's validation probabilities (columns = the bundle's labels;
    with refit the served weights have seen the validation rows, so never score it with them).
    They are logged as ``diagnostics/val_probs.npy`` (float16) for the ensemble search, with the
    per-class recall and top confusions they imply. Returns the ModelInfo."""
    import tempfile

    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    from pipelines.evaluate import confusion_summary, per_class_recall
    from pipelines.pyfunc import TitleClassifierModel

    labels = np.asarray(json.loads((bundle_dir / "labels.json").read_text()), dtype=object)
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "val_probs.npy", val_probs.astype(np.float16))
        mlflow.log_artifact(str(Path(tmp) / "val_probs.npy"), artifact_path="diagnostics")
    val_pred = list(labels[val_probs.argmax(1)])
    rec = per_class_recall(val_df["category"].tolist(), val_pred)
    worst_first = sorted(rec.items(), key=lambda x: x[1])
    mlflow.log_text(
        "category,recall\n" + "\n".join(f"{c},{r:.4f}" for c, r in worst_first), "diagnostics/val_per_class_recall.csv"
    )
    mlflow.log_dict(
        {"top_confusions": confusion_summary(val_df["category"].tolist(), val_pred)},
        "diagnostics/val_confusions.json",
    )
    return mlflow.pyfunc.log_model(
        name="model",
        python_model=TitleClassifierModel(),
        artifacts={"bundle": str(bundle_dir)},
        code_paths=[str(REPO_ROOT / "pipelines")],
        pip_requirements=_pip_requirements(bundle_dir),
        signature=ModelSignature(inputs=Schema([ColSpec("string", "title")])),
    )


def train_ensemble(
    settings: Settings,
    dataset_dir: str | Path,
    results: list[dict],
    parent_run_id: str | None = None,
    run_date: str = "",
) -> dict | None:
    """An ensemble of the run's trained models as one more candidate challenger.

    Members are fetched from MLflow by model URI (training tasks may have run on other workers).
    Every subset of two or more members is scored on the validation split (mean of the members'
    selection-pass probabilities, logged by each training run); the best subset (ties: fewer members, cheaper to
    serve) becomes an ensemble bundle (members/<type>/ + the shared encoder and labels), logged as a
    child run with model type ``ensemble`` and every subset's score. Returns a result dict like
    train_classifier's, or None with fewer than two trained models.
    """
    import itertools

    import mlflow

    from pipelines.evaluate import macro_recall
    from pipelines.tracking import configure

    results = sorted((r for r in results if r.get("model_type") != "ensemble"), key=lambda r: r["model_type"])
    if len(results) < 2:
        return None
    configure(settings)
    val_df = read_split(dataset_dir, "validation")
    y_val = val_df["category"].tolist()
    out = Path(settings.run_dir(run_date or "adhoc")) / "models" / "ensemble"
    if out.exists():
        shutil.rmtree(out)
    t0 = time.perf_counter()
    sources: dict[str, Path] = {}
    for r in results:
        local = Path(
            mlflow.artifacts.download_artifacts(artifact_uri=r["model_uri"], dst_path=str(out / r["model_type"]))
        )
        sources[r["model_type"]] = next(p for p in (local / "artifacts" / "bundle", local / "bundle") if p.is_dir())
    first = sources[results[0]["model_type"]]
    for kind, src in sources.items():
        for name in ("encoder.json", "labels.json", "sentence/meta.json", "sentence/words.json"):
            if not (src / name).exists() and not (first / name).exists():
                continue  # no sentence vectors in either
            if not (src / name).exists() or (src / name).read_bytes() != (first / name).read_bytes():
                raise ValueError(f"ensemble members disagree on {name}: {results[0]['model_type']} vs {kind}")

    probs = {r["model_type"]: member_val_probs(r, len(val_df)) for r in results}
    labels = np.asarray(json.loads((first / "labels.json").read_text()), dtype=object)
    scores = {}
    for size in range(2, len(sources) + 1):
        for subset in itertools.combinations(sorted(sources), size):
            mean = sum(probs[k] for k in subset) / size
            scores["+".join(subset)] = macro_recall(y_val, list(labels[mean.argmax(1)]))
    best = max(scores, key=lambda s: (scores[s], -s.count("+")))
    members = best.split("+")
    log.info("ensemble candidates on validation: %s -> %s", scores, best)

    bundle_dir = out / "bundle"
    with atomic_tree(bundle_dir) as tmp:
        for kind in members:  # the members share the bundle's word vectors (one copy, at its root)
            shutil.copytree(sources[kind], tmp / "members" / kind, ignore=shutil.ignore_patterns("sentence"))
        for name in ("encoder.json", "labels.json"):
            shutil.copy(first / name, tmp / name)
        if (first / "sentence").is_dir():
            shutil.copytree(first / "sentence", tmp / "sentence")
        (tmp / "config.json").write_text(json.dumps({"members": [f"members/{k}" for k in members]}))
    for kind in sources:
        shutil.rmtree(out / kind, ignore_errors=True)

    run_kwargs = {"run_name": "ensemble"}
    if parent_run_id:
        run_kwargs.update(parent_run_id=parent_run_id, nested=True)
    with mlflow.start_run(**run_kwargs) as run:
        mlflow.set_tags({"meli.model_type": "ensemble", "meli.run_date": run_date, **_lineage(Path(dataset_dir))})
        mlflow.log_params({"model_type": "ensemble", "members": best, "candidates": ",".join(sorted(sources))})
        mlflow.log_metrics(
            {"val_macro_recall": scores[best], "best_val_macro_recall": scores[best]}
            | {f"val_macro_recall_{s.replace('+', '_')}": v for s, v in scores.items()}
            | {f"val_macro_recall_{r['model_type']}": r["val_macro_recall"] for r in results}
        )
        info = _log_served_model(bundle_dir, val_df, sum(probs[k] for k in members) / len(members))
        result = {
            "model_type": "ensemble",
            "members": members,
            "run_id": run.info.run_id,
            "model_uri": info.model_uri,
            "val_macro_recall": round(scores[best], 6),
            "best_epoch": 0,
            "train_seconds": round(time.perf_counter() - t0, 2),
            "device": str(pick_device(settings.device)),
            **_ensemble_lineage([r for r in results if r["model_type"] in members]),
        }
    log.info("ensemble of %s: %s", members, result)
    return result


def _ensemble_lineage(members: list[dict]) -> dict:
    """An ensemble is warm if a member is; its last full retrain is its members' oldest."""
    dates = [m.get("full_run_date") for m in members if m.get("full_run_date")]
    warm = [m for m in members if m.get("mode") == "warm"]
    return {
        "mode": "warm" if warm else "full",
        "parent_version": ",".join(sorted({m["parent_version"] for m in warm if m.get("parent_version")})),
        "full_run_date": min(dates) if dates else "",
    }


def member_val_probs(result: dict, n_rows: int) -> np.ndarray:
    """A trained model's selection-pass validation probabilities, as its run logged them (with refit
    the served weights have seen the validation rows: they must not be scored again)."""
    import mlflow

    path = mlflow.artifacts.download_artifacts(run_id=result["run_id"], artifact_path="diagnostics/val_probs.npy")
    probs = np.load(path).astype(np.float32)
    if probs.shape[0] != n_rows:
        raise ValueError(f"run {result['run_id']}: val_probs.npy has {probs.shape[0]} rows, validation {n_rows}")
    return probs


def pick_challenger(results: list[dict]) -> dict:
    """The best model of the run on validation macro-recall."""
    if not results:
        raise ValueError("no trained models to choose from")
    return max(results, key=lambda r: (r["val_macro_recall"], -len(r["model_type"])))
