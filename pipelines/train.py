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
from pipelines.features import EmbeddingConfig, TitleEncoder, read_split
from pipelines.lake import atomic_tree
from pipelines.pyfunc import Bundle, pick_device
from pipelines.settings import REPO_ROOT, Settings

log = logging.getLogger(__name__)


def embedding_config(cfg: TrainConfig) -> EmbeddingConfig:
    return EmbeddingConfig(dim=cfg.embedding_dim, epochs=cfg.embedding_epochs, bucket=cfg.bucket)


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
    """Adam for sparse embedding gradients: ``torch.optim.SparseAdam``'s update (moments and the
    step of only the rows a batch touched; same bias correction), about twice as fast on CPU
    (index_select/index_copy_ instead of sparse-tensor masking, which was ~40% of a training step).
    """

    def __init__(self, params: list, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        import torch

        self.params, self.eps, self.betas = list(params), eps, betas
        self.param_groups = [{"lr": lr}]
        self.state = [
            {"step": 0, "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)} for p in self.params
        ]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        import torch

        lr, (b1, b2) = self.param_groups[0]["lr"], self.betas
        with torch.no_grad():
            for p, st in zip(self.params, self.state, strict=True):
                if p.grad is None:
                    continue
                g = p.grad.coalesce()
                rows, values = g.indices()[0], g.values()
                if rows.numel() == 0:
                    continue
                st["step"] += 1
                m = st["exp_avg"].index_select(0, rows).mul_(b1).add_(values, alpha=1 - b1)
                v = st["exp_avg_sq"].index_select(0, rows).mul_(b2).addcmul_(values, values, value=1 - b2)
                st["exp_avg"].index_copy_(0, rows, m)
                st["exp_avg_sq"].index_copy_(0, rows, v)
                step_size = lr * math.sqrt(1 - b2 ** st["step"]) / (1 - b1 ** st["step"])
                p.index_add_(0, rows, m.div_(v.sqrt_().add_(self.eps)), alpha=-step_size)


def _pip_requirements() -> list[str]:
    import importlib.metadata as md

    pins = []
    for pkg in ("mlflow", "torch", "gensim", "numpy", "pandas", "pyarrow"):
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


def train_classifier(
    settings: Settings,
    dataset_dir: str | Path,
    embedding_dir: str | Path,
    kind: str,
    cfg: TrainConfig,
    parent_run_id: str | None = None,
    run_date: str = "",
    threads: int | None = None,
) -> dict:
    """Train one model type and log it to MLflow. Returns a small dict for XCom. ``threads``: torch
    CPU threads for this process (default: torch's, all cores); set it when trainings run side by side.

    Selection pass: train on the train split, early stopping on validation macro-recall (the best
    epoch's weights are kept). With ``cfg.refit`` the served model is then retrained from the same
    initialisation on train + validation for exactly that many epochs (same learning-rate schedule):
    ~14% more labelled rows, which the selection pass showed are worth ~0.3 points of macro-recall.
    Validation metrics, diagnostics and the ensemble search always come from the selection pass
    (``diagnostics/val_probs.npy``); the refit model is judged on the frozen test split by the gate.
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
    train_df, val_df = read_split(dataset_dir, "train"), read_split(dataset_dir, "validation")
    labels = sorted(train_df["category"].unique().tolist())
    index = {c: i for i, c in enumerate(labels)}
    y_train = np.array([index[c] for c in train_df["category"]], dtype=np.int64)
    x_train = encoder.encode_many(train_df["title"].tolist())
    x_val = encoder.encode_many(val_df["title"].tolist())
    y_val_names = val_df["category"].tolist()
    y_val = np.array([index.get(c, -1) for c in y_val_names], dtype=np.int64)  # -1: class absent from train
    fit = _Fit(kind, cfg, encoder, labels, device, embedding_dir)

    def evaluate_split(model) -> tuple[float, float, np.ndarray]:
        probs = _InMemoryBundle(model, encoder, labels, device).predict_proba_encoded(x_val)
        pred = np.asarray(labels, dtype=object)[probs.argmax(1)]
        p_true = np.where(y_val >= 0, probs[np.arange(len(y_val)), np.maximum(y_val, 0)], 1e-9)
        loss = float(-np.log(np.clip(p_true, 1e-9, 1)).mean())
        return macro_recall(y_val_names, list(pred)), loss, probs

    configure(settings)
    run_kwargs = {"run_name": f"{kind}-{run_date}" if run_date else kind}
    if parent_run_id:
        run_kwargs.update(parent_run_id=parent_run_id, nested=True)
    with mlflow.start_run(**run_kwargs) as run:
        mlflow.set_tags(
            {"meli.model_type": kind, "meli.run_date": run_date, "meli.device": str(device), **_lineage(dataset_dir)}
        )
        mlflow.log_params(
            {
                **{k: v for k, v in cfg.to_dict().items() if k != "models"},
                "model_type": kind,
                "num_classes": len(labels),
                "vocab_size": len(encoder.itos),
                "device": str(device),
                "torch_threads": torch.get_num_threads(),
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
                    "epoch_samples_per_s": len(y_train) / epoch_s,
                },
                step=epoch,
            )
            log.info(
                "%s epoch %d/%d: train_loss %.4f val_loss %.4f val_macro_recall %.4f (%.1fs)",
                kind, epoch, cfg.epochs, train_loss, val_loss, val_mr, epoch_s,
            )  # fmt: skip
            if val_mr > best["val"]:
                state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
                best.update(val=val_mr, epoch=epoch, state=state, probs=probs)
            elif epoch - best["epoch"] >= cfg.patience:
                log.info("%s: early stop after epoch %d (best epoch %d)", kind, epoch, best["epoch"])
                return False
            return True

        model = fit.new_model(x_train)
        seen, train_seconds = fit.run(model, x_train, y_train, cfg.epochs, on_epoch)
        state = best["state"]
        metrics = {
            "best_val_macro_recall": best["val"],
            "best_epoch": best["epoch"],
            "train_seconds": train_seconds,
            "train_samples_per_s": seen / max(train_seconds, 1e-9),
        }
        if cfg.refit:  # the served model: same recipe, train + validation rows, best_epoch epochs
            del model
            keep = np.flatnonzero(y_val >= 0)  # a validation row whose class train lacks has no label id
            x_all, y_all = x_train + [x_val[i] for i in keep], np.concatenate([y_train, y_val[keep]])

            def on_refit_epoch(model, epoch: int, train_loss: float, epoch_s: float) -> bool:
                mlflow.log_metrics({"refit_train_loss": train_loss}, step=epoch)
                log.info("%s refit epoch %d/%d: loss %.4f (%.1fs)", kind, epoch, best["epoch"], train_loss, epoch_s)
                return epoch < best["epoch"]

            model = fit.new_model(x_all)
            _, refit_seconds = fit.run(model, x_all, y_all, cfg.epochs, on_refit_epoch)
            state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
            metrics |= {"refit_rows": len(y_all), "refit_seconds": refit_seconds, "refit_epochs": best["epoch"]}
            train_seconds += refit_seconds
        mlflow.log_metrics(metrics)

        bundle_dir = Path(settings.run_dir(run_date or "adhoc")) / "models" / kind / "bundle"
        with atomic_tree(bundle_dir) as tmp:
            torch.save(state, tmp / "weights.pt")
            (tmp / "labels.json").write_text(json.dumps(labels))
            (tmp / "config.json").write_text(json.dumps({"model": fit.model_cfg.to_dict(), "train": cfg.to_dict()}))
            shutil.copy(embedding_dir / "encoder.json", tmp / "encoder.json")

        info = _log_served_model(bundle_dir, val_df, best["probs"])
        result = {
            "model_type": kind,
            "run_id": run.info.run_id,
            "model_uri": info.model_uri,
            "val_macro_recall": round(best["val"], 6),
            "best_epoch": best["epoch"],
            "train_seconds": round(train_seconds, 2),
            "device": str(device),
            "refit": cfg.refit,
        }
        log.info("%s trained: %s", kind, result)
        return result


class _Fit:
    """One training recipe (model config, initialisation, optimisers, schedule), run on any rows."""

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
        )
        ft = FastText.load(str(Path(embedding_dir) / "fasttext.model"))
        self.init_vectors = embedding_matrix(encoder, ft)
        self.init_vectors[0] = 0.0

    def new_model(self, x_fit: list[list[np.ndarray]]):
        """A freshly initialised model (seeded: the same weights every call); idf from ``x_fit``."""
        import torch

        from pipelines.models import build_model

        seed_everything(self.cfg.seed)
        model = build_model(self.model_cfg)
        with torch.no_grad():
            model.emb.weight.copy_(torch.from_numpy(self.init_vectors))
            if model.wide is not None:
                model.wide.idf.copy_(torch.from_numpy(wide_idf(model.wide, x_fit, self.encoder.width)))
        return model.to(self.device)

    def run(self, model, x: list[list[np.ndarray]], y: np.ndarray, epochs: int, on_epoch) -> tuple[int, float]:
        """Up to ``epochs`` epochs (warm-up + cosine over all of them); ``on_epoch(model, epoch,
        train_loss, seconds)`` after each, in eval mode, returns False to stop. Returns (samples
        seen, training seconds)."""
        import torch
        import torch.nn.functional as F

        from pipelines.pyfunc import collate

        cfg, device = self.cfg, self.device
        use_cuda = device.type == "cuda"
        lengths = np.array([len(t) for t in x])
        counts = np.bincount(y, minlength=len(self.labels)).astype(np.float64)
        class_w, sampler_w = None, None
        if cfg.balance == "weighted":
            w = len(y) / (len(self.labels) * np.maximum(counts, 1))
            class_w = torch.tensor(w, dtype=torch.float32, device=device)
        elif cfg.balance == "sampler":
            sampler_w = 1.0 / counts[y]

        # sparse embedding tables (token and wide bag) -> RowAdam; everything else -> AdamW
        emb_params = [
            m.weight
            for m in model.modules()
            if isinstance(m, torch.nn.Embedding) and m.sparse and m.weight.requires_grad
        ]
        sparse_ids = {id(p) for p in emb_params}
        dense = [p for p in model.parameters() if p.requires_grad and id(p) not in sparse_ids]
        # fused: one kernel per step on CUDA (a step is ~1 ms of GPU work behind ~300 kernel launches)
        opt = torch.optim.AdamW(dense, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=use_cuda or None)
        sparse_opt = RowAdam(emb_params, lr=cfg.embedding_lr) if emb_params else None
        rng = np.random.default_rng(cfg.seed)
        steps_per_epoch = math.ceil(len(y) / cfg.batch_size)
        total_steps = steps_per_epoch * epochs
        warm = max(1, steps_per_epoch // 2)

        def set_lr(step: int) -> None:  # linear warm-up, cosine decay
            decay = 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total_steps - warm)))
            f = step / warm if step < warm else decay
            for g in opt.param_groups:
                g["lr"] = cfg.lr * f
            if sparse_opt:
                sparse_opt.param_groups[0]["lr"] = cfg.embedding_lr * f

        step, seen, seconds = 0, 0, 0.0
        for epoch in range(1, epochs + 1):
            model.train()
            t0 = time.perf_counter()
            total_loss, nb = torch.zeros((), device=device), 0  # summed on the device: no sync per step
            for b_idx in length_bucketed_batches(lengths, cfg.batch_size, rng, sampler_w):
                ids, lens = collate([x[i] for i in b_idx], self.encoder.width)
                if use_cuda:
                    ids = ids.pin_memory().to(device, non_blocking=True)
                target = torch.from_numpy(y[b_idx]).to(device)
                set_lr(step)
                with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_cuda):
                    # multi-branch models: one loss per branch (an ensemble trained in one pass)
                    branches = model.forward_branches(ids, lens)
                loss = sum(
                    F.cross_entropy(lg.float(), target, weight=class_w, label_smoothing=cfg.label_smoothing)
                    for lg in branches
                ) / len(branches)
                opt.zero_grad(set_to_none=True)
                if sparse_opt:
                    sparse_opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(dense, 5.0)
                opt.step()
                if sparse_opt:
                    sparse_opt.step()
                total_loss += loss.detach()
                nb += 1
                step += 1
                seen += len(b_idx)
            if use_cuda:
                torch.cuda.synchronize(device)  # the epoch's time includes its queued GPU work
            epoch_s = time.perf_counter() - t0
            seconds += epoch_s
            model.eval()
            if not on_epoch(model, epoch, float(total_loss) / max(nb, 1), epoch_s):
                break
        model.eval()
        return seen, seconds


def wide_idf(wide, x_train: list[list[np.ndarray]], width: int) -> np.ndarray:
    """Smoothed idf (sklearn's formula) of every wide-bag id over the training titles."""
    import torch

    from pipelines.pyfunc import collate

    df = np.zeros(wide.idf.shape[0], dtype=np.float64)
    for s in range(0, len(x_train), 4096):
        ids, _ = collate(x_train[s : s + 4096], width)
        flat = torch.cat([ids.flatten(1), wide.bigram_rows(ids[..., 0])], dim=1).numpy()
        for row in flat:
            df[np.unique(row[row != 0])] += 1
    n = len(x_train)
    return (np.log((1 + n) / (1 + df)) + 1).astype(np.float32)


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
        pip_requirements=_pip_requirements(),
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
        for name in ("encoder.json", "labels.json"):
            if (src / name).read_bytes() != (first / name).read_bytes():
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
        for kind in members:
            shutil.copytree(sources[kind], tmp / "members" / kind)
        for name in ("encoder.json", "labels.json"):
            shutil.copy(first / name, tmp / name)
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
        }
    log.info("ensemble of %s: %s", members, result)
    return result


def member_val_probs(result: dict, n_rows: int) -> np.ndarray:
    """A trained model's selection-pass validation probabilities, as its run logged them (with refit
    the served weights have seen the validation rows: they must not be scored again)."""
    import mlflow

    path = mlflow.artifacts.download_artifacts(run_id=result["run_id"], artifact_path="diagnostics/val_probs.npy")
    probs = np.load(path).astype(np.float32)
    if probs.shape[0] != n_rows:
        raise ValueError(f"run {result['run_id']}: val_probs.npy has {probs.shape[0]} rows, validation {n_rows}")
    return probs


class _InMemoryBundle(Bundle):
    """A Bundle around a model being trained (no files), for validation scoring."""

    def __init__(self, model, encoder, labels, device):  # noqa: D107 - no super().__init__ on purpose
        self.model, self.encoder, self.labels, self.device = model, encoder, labels, device
        self.models = [model]


def pick_challenger(results: list[dict]) -> dict:
    """The best model of the run on validation macro-recall."""
    if not results:
        raise ValueError("no trained models to choose from")
    return max(results, key=lambda r: (r["val_macro_recall"], -len(r["model_type"])))
