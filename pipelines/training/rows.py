"""Embedding rows: what a CPU training step updates. A batch touches a few hundred rows (one per
word with ``word_rows``; a few thousand subword rows without) of tables with hundreds of thousands;
``RowTables`` holds them outside the model (token and wide rows side by side: one gather serves
both), ``RowAdam`` / ``RowAdagrad`` update just those rows, and ``apply_rows`` applies them after
backward (``loop.batch_branches`` gathers the rows)."""

from __future__ import annotations

import math


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


class RowAdagrad(RowAdam):
    """Adagrad on embedding rows (fastText's family: one state per row, so one read and one write of
    it per touched row, where Adam has two): ``sum += g * g``, ``row -= lr * g / (sqrt(sum) + eps)``.
    Same interface as ``RowAdam``; no bias correction, no step count."""

    def __init__(self, params: list, lr: float, eps: float = 1e-10):
        import torch

        self.params, self.eps = list(params), eps
        self.param_groups = [{"lr": lr}]
        self.state = {id(p): {"sum": torch.zeros_like(p)} for p in self.params}

    def update(self, p, rows, grad) -> None:
        import torch

        if rows.numel() == 0:
            return
        acc = self.state[id(p)]["sum"]
        with torch.no_grad():
            grad = grad.to(p.dtype)
            s = acc.index_select(0, rows).addcmul_(grad, grad)
            acc.index_copy_(0, rows, s)
            new = p.index_select(0, rows).addcdiv_(grad, s.sqrt_().add_(self.eps), value=-self.param_groups[0]["lr"])
            p.index_copy_(0, rows, new)

    def update_dense(self, p) -> None:
        """From ``p``'s dense ``.grad`` (CUDA): an untouched row has a zero gradient, so it moves by 0."""
        import torch

        if p.grad is None:
            return
        acc = self.state[id(p)]["sum"]
        with torch.no_grad():
            acc.addcmul_(p.grad, p.grad)
            p.addcdiv_(p.grad, acc.sqrt().add_(self.eps), value=-self.param_groups[0]["lr"])


def row_optimizer(name: str, params: list, lr: float):
    """``TrainConfig.row_optimizer``: adam (``RowAdam``) or adagrad (``RowAdagrad``)."""
    if name == "adagrad":
        return RowAdagrad(params, lr=lr)
    if name == "adam":
        return RowAdam(params, lr=lr)
    raise ValueError(f"unknown row optimiser {name!r}; choose adam or adagrad")


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


def apply_rows(opt: RowAdam, rows, tables: RowTables | None) -> None:
    """After backward: the row optimiser on the rows a batch touched (see ``batch_branches``). CUDA
    (leaf None): the table's dense ``.grad``, times ``r`` when it is a mask of the trainable rows."""
    for target, r, leaf in rows:
        if leaf is None:
            if r is not None and target.grad is not None:
                target.grad.mul_(r)  # frozen rows (word_rows: the n-gram rows) get no update
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


def row_tables(model) -> list:
    out = [model.emb.weight] if model.emb.weight.requires_grad else []
    return out + ([model.wide.table.weight] if model.wide is not None else [])


def trainable_rows(model, table):
    """[rows, 1] float mask of the rows of ``table`` (the token or the wide table) a word-rows model
    trains: the vocabulary words (ids 2..vocab_size-1) and the wide table's bigram rows; None: every row."""
    import torch

    cfg = model.cfg
    if not cfg.word_rows:
        return None
    mask = torch.zeros(table.shape[0], 1, dtype=table.dtype, device=table.device)
    mask[2 : cfg.vocab_size] = 1
    if model.wide is not None and table is model.wide.table.weight:
        mask[cfg.num_embeddings :] = 1
    return mask
