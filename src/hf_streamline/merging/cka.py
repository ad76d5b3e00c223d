"""Layer x layer similarity of decoder-layer outputs from one streaming pass: linear CKA, RBF CKA, cosine.

Estimator
---------
CKA (Kornblith et al., 2019) with the **unbiased** HSIC estimator (Song et al., 2012), computed in float64 through
the U-centred Gram matrices of Székely & Rizzo (2014)::

    HSIC_u(K, L) = <U(K), U(L)> / (n (n - 3))

where ``U`` zeroes the diagonal and removes row/column means with the unbiased normalisers.  The tokens of each
calibration batch (padding excluded) are shuffled with a fixed seed and cut into chunks of at most
``max_gram_tokens`` tokens; each chunk is one HSIC minibatch.  The HSIC values are summed over all minibatches and

    CKA(i, j) = Σ HSIC_u(K_i, K_j) / sqrt(Σ HSIC_u(K_i, K_i) · Σ HSIC_u(K_j, K_j))

(the minibatch CKA of Nguyen, Raghu & Kornblith, 2021).  Because each minibatch term is unbiased, the result does not
drift with the minibatch size the way the biased estimator does; with one minibatch holding every token it is
exactly the full-data unbiased CKA.  Features are centred per chunk first: U-centring is invariant to a constant
shift of the features, and centring keeps float64 exact enough when a few dimensions carry activations of ~1e4.

Memory
------
Per calibration batch: the batch's layer outputs, ``L x tokens x hidden`` float32 (as the block-similarity pass
keeps), plus the U-centred Grams of one chunk for every layer, ``L x m^2`` float64 (m = ``max_gram_tokens``).  The
accumulators are ``L x L`` float64.  Nothing grows with the number of calibration samples.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch
from torch import nn

from ..architecture import get_decoder_layers
from ..capture import LayerHooks, base_forward_module
from ..errors import StreamlineError
from ..log import progress_bar
from ..options import SIMILARITY_MAP_KINDS as KINDS
from ..utils import model_device

MIN_TOKENS = 4  # the unbiased HSIC needs n > 3


def _center(x: torch.Tensor) -> torch.Tensor:
    x = x.to(torch.float64)
    return x - x.mean(dim=0, keepdim=True)


def gram_linear(x: torch.Tensor) -> torch.Tensor:
    """Linear-kernel Gram matrix ``X Xᵀ`` (float64, features centred: same U-centred Gram, better conditioned)."""
    x = _center(x)
    return x @ x.T


def gram_rbf(x: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """RBF Gram matrix ``exp(-|xi - xj|² / (2 σ² median|xi - xj|²))`` (bandwidth relative to the median distance)."""
    x = _center(x)
    sq = x.pow(2).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)).clamp_min(0.0)
    n = d2.shape[0]
    off = d2[~torch.eye(n, dtype=torch.bool, device=d2.device)]
    med = off.median() if off.numel() else d2.new_tensor(1.0)
    if float(med) <= 0.0:
        med = d2.new_tensor(1.0)
    return torch.exp(-d2 / (2.0 * sigma ** 2 * med))


def gram(x: torch.Tensor, kernel: str = "linear", sigma: float = 1.0) -> torch.Tensor:
    if kernel == "linear":
        return gram_linear(x)
    if kernel == "rbf":
        return gram_rbf(x, sigma)
    raise StreamlineError(f"unknown CKA kernel {kernel!r}; use 'linear' or 'rbf'")


def u_center(k: torch.Tensor) -> torch.Tensor:
    """U-centring (Székely & Rizzo 2014): ``<U(K), U(L)> / (n(n-3))`` is the unbiased HSIC."""
    n = k.shape[0]
    if n < MIN_TOKENS:
        raise StreamlineError(f"the unbiased HSIC needs at least {MIN_TOKENS} samples, got {n}")
    k = k.to(torch.float64).clone()
    k.fill_diagonal_(0.0)
    means = k.sum(dim=0) / (n - 2)
    means = means - means.sum() / (2 * (n - 1))
    k -= means[:, None]
    k -= means[None, :]
    k.fill_diagonal_(0.0)
    return k


def hsic_unbiased(k: torch.Tensor, l: torch.Tensor) -> float:
    """Unbiased HSIC of two Gram matrices (via U-centring)."""
    n = k.shape[0]
    return float((u_center(k) * u_center(l)).sum() / (n * (n - 3)))


def hsic_unbiased_direct(k: torch.Tensor, l: torch.Tensor) -> float:
    """Unbiased HSIC written as in Song et al. (2012), eq. 5 -- the reference the U-centred form is tested against."""
    n = k.shape[0]
    kt = k.to(torch.float64).clone()
    lt = l.to(torch.float64).clone()
    kt.fill_diagonal_(0.0)
    lt.fill_diagonal_(0.0)
    one = torch.ones(n, 1, dtype=torch.float64, device=k.device)
    term1 = torch.trace(kt @ lt)
    term2 = (one.T @ kt @ one) * (one.T @ lt @ one) / ((n - 1) * (n - 2))
    term3 = 2.0 / (n - 2) * (one.T @ kt @ lt @ one)
    return float((term1 + term2 - term3).squeeze() / (n * (n - 3)))


def cka(x: torch.Tensor, y: torch.Tensor, kernel: str = "linear", sigma: float = 1.0) -> float:
    """CKA of two feature matrices ``(n, d1)``, ``(n, d2)`` (rows are the same samples), one minibatch, unbiased HSIC."""
    if x.shape[0] != y.shape[0]:
        raise StreamlineError(f"CKA needs the same samples on both sides: {x.shape[0]} vs {y.shape[0]} rows")
    kx, ky = u_center(gram(x, kernel, sigma)), u_center(gram(y, kernel, sigma))
    xy, xx, yy = (kx * ky).sum(), (kx * kx).sum(), (ky * ky).sum()
    return float(xy / torch.sqrt(xx * yy))


def token_chunks(n: int, max_tokens: int, generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """Shuffle ``n`` token positions and split them into near-equal chunks of at most ``max_tokens`` (each >= 4)."""
    if max_tokens < MIN_TOKENS:
        raise StreamlineError(f"max_gram_tokens={max_tokens} must be at least {MIN_TOKENS}")
    if n < MIN_TOKENS:
        return []
    perm = torch.randperm(n, generator=generator)
    k = max(1, math.ceil(n / max_tokens))
    return [c for c in torch.tensor_split(perm, k)]


class CKAAccumulator:
    """Σ HSIC_u(X, Y), Σ HSIC_u(X, X), Σ HSIC_u(Y, Y) over minibatches, for one pair of feature streams."""

    def __init__(self, kernel: str = "linear", sigma: float = 1.0, max_gram_tokens: int = 1024):
        self.kernel, self.sigma, self.m = kernel, sigma, max_gram_tokens
        self.xy = self.xx = self.yy = 0.0
        self.minibatches = 0

    def add(self, x: torch.Tensor, y: torch.Tensor, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        for idx in token_chunks(x.shape[0], self.m, g):
            idx = idx.to(x.device)
            kx = u_center(gram(x[idx], self.kernel, self.sigma))
            ky = u_center(gram(y[idx], self.kernel, self.sigma))
            c = idx.numel() * (idx.numel() - 3)
            self.xy += float((kx * ky).sum()) / c
            self.xx += float((kx * kx).sum()) / c
            self.yy += float((ky * ky).sum()) / c
            self.minibatches += 1

    def value(self) -> float:
        den = math.sqrt(max(self.xx, 0.0) * max(self.yy, 0.0))
        return self.xy / den if den > 0 else float("nan")


@dataclass
class SimilarityMap:
    """``matrix[i][j]``: similarity of the outputs of decoder layers ``i`` and ``j``."""

    kind: str
    matrix: list[list[float]]
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def num_layers(self) -> int:
        return len(self.matrix)

    def tensor(self) -> torch.Tensor:
        return torch.tensor(self.matrix, dtype=torch.float64)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "num_layers": self.num_layers, "matrix": self.matrix, "details": self.details}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SimilarityMap":
        return cls(kind=d["kind"], matrix=d["matrix"], details=d.get("details") or {})

    def save(self, path: str | os.PathLike) -> str:
        from ..utils import write_text_atomic

        write_text_atomic(path, json.dumps(self.to_dict(), indent=1) + "\n")
        return str(path)

    def plot(self, path: str | os.PathLike, title: str | None = None) -> str:
        return plot_similarity_map(self, path, title)


class LayerSimilarityCollector:
    """Hook callbacks + per-batch reduction for :func:`layer_similarity` (register -> accumulate -> finalize)."""

    def __init__(self, num_layers: int, kind: str = "cka_linear", max_gram_tokens: int = 512, sigma: float = 1.0,
                 seed: int = 0, skip_first_tokens: int = 0):
        if kind not in KINDS:
            raise StreamlineError(f"similarity kind {kind!r} is unknown; use one of {list(KINDS)}")
        self.L, self.kind, self.m, self.sigma = num_layers, kind, int(max_gram_tokens), float(sigma)
        if skip_first_tokens < 0:
            raise StreamlineError("must be >= 0", argument="skip_first_tokens", value=skip_first_tokens)
        self.skip = int(skip_first_tokens)
        if self.m < MIN_TOKENS:
            raise StreamlineError(f"must be at least {MIN_TOKENS}", argument="max_gram_tokens", value=self.m)
        self.acc = torch.zeros(num_layers, num_layers, dtype=torch.float64)
        self.generator = torch.Generator().manual_seed(seed)
        self.minibatches = 0
        self.tokens = 0
        self._feats: list[torch.Tensor | None] = [None] * num_layers
        self._mask: torch.Tensor | None = None

    def begin_batch(self, attention_mask: torch.Tensor) -> None:
        mask = attention_mask.bool()
        if self.skip:  # drop each sequence's first real tokens (attention sinks carry huge activations)
            mask = mask & (attention_mask.long().cumsum(dim=1) > self.skip)
        self._mask = mask
        self._feats = [None] * self.L

    def on_output(self, idx: int, hidden: torch.Tensor) -> None:
        h = hidden.detach()
        feats = h[self._mask.to(h.device)].to(torch.float32)  # (n, H), padding dropped
        if self.kind == "cosine":
            feats = feats / feats.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        self._feats[idx] = feats

    def end_batch(self) -> None:
        missing = [i for i, f in enumerate(self._feats) if f is None]
        if missing:
            raise StreamlineError(f"decoder layers {missing} produced no output during the similarity pass")
        n = self._feats[0].shape[0]
        if self.kind == "cosine":
            stack = torch.stack(self._feats)  # (L, n, H)
            self.acc += torch.einsum("lnh,knh->lk", stack, stack).double().cpu()
            self.tokens += n
        else:
            kernel = "linear" if self.kind == "cka_linear" else "rbf"
            for idx in token_chunks(n, self.m, self.generator):
                idx = idx.to(self._feats[0].device)
                us = torch.stack([u_center(gram(f[idx], kernel, self.sigma)).flatten() for f in self._feats])
                c = idx.numel()
                self.acc += (us @ us.T).cpu() / (c * (c - 3))
                self.minibatches += 1
            self.tokens += n
        self._feats = [None] * self.L
        self._mask = None

    def result(self) -> torch.Tensor:
        if self.kind == "cosine":
            if self.tokens == 0:
                raise StreamlineError("no calibration tokens were seen")
            return self.acc / self.tokens
        if self.minibatches == 0:
            raise StreamlineError(f"CKA needs at least {MIN_TOKENS} non-padding tokens per batch; none had enough")
        d = torch.sqrt(torch.diagonal(self.acc).clamp_min(0.0))
        return self.acc / (d[:, None] * d[None, :]).clamp_min(1e-300)


@torch.no_grad()
def layer_similarity(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]] | Any, kind: str = "cka_linear",
                     batch_size: int = 8, max_gram_tokens: int = 512, sigma: float = 1.0, seed: int = 0,
                     skip_first_tokens: int = 0, progress: bool = True) -> SimilarityMap:
    """Layer x layer similarity of the decoder-layer outputs of ``model`` over ``batches`` (one forward per batch).

    ``batches``: a :class:`~hf_streamline.calibration.CalibrationData` or an iterable of ``{"input_ids",
    "attention_mask"}`` dicts.  ``kind``: ``cka_linear`` | ``cka_rbf`` | ``cosine`` (mean per-token cosine).
    ``skip_first_tokens``: leave out each sequence's first k real tokens.  Many trained models put an activation
    hundreds of times larger than the rest on the first token (an attention sink; ~2.5e4 vs ~150 in SmolLM2's middle
    layers); linear CKA then mostly describes that one token.  ``skip_first_tokens=1`` shows the other tokens.
    """
    if hasattr(batches, "batches"):
        batches = list(batches.batches(batch_size))
    else:
        batches = list(batches)
    if not batches:
        raise StreamlineError("no calibration batches given")
    L = len(get_decoder_layers(model))
    collector = LayerSimilarityCollector(L, kind, max_gram_tokens=max_gram_tokens, sigma=sigma, seed=seed,
                                         skip_first_tokens=skip_first_tokens)
    body = base_forward_module(model)
    device = model_device(model)
    was_training = model.training
    model.eval()
    try:
        with LayerHooks(model, on_output=collector.on_output):
            for batch in progress_bar(batches, desc=f"layer similarity ({kind})", disable=not progress, leave=False):
                mask = batch.get("attention_mask")
                if mask is None:
                    mask = torch.ones_like(batch["input_ids"])
                collector.begin_batch(mask)
                body(input_ids=batch["input_ids"].to(device), attention_mask=mask.to(device), use_cache=False)
                collector.end_batch()
    finally:
        model.train(was_training)
    mat = collector.result()
    details = {"tokens": collector.tokens, "batches": len(batches), "seed": seed,
               "skip_first_tokens": skip_first_tokens}
    if kind != "cosine":
        details.update({"estimator": "unbiased HSIC (U-centred Grams), minibatch CKA",
                        "max_gram_tokens": max_gram_tokens, "minibatches": collector.minibatches})
    if kind == "cka_rbf":
        details["sigma"] = sigma
    return SimilarityMap(kind=kind, matrix=mat.tolist(), details=details)


KIND_LABELS = {"cka_linear": "linear CKA (unbiased HSIC)", "cka_rbf": "RBF CKA (unbiased HSIC)",
               "cosine": "mean per-token cosine"}


def plot_similarity_map(sim: SimilarityMap, path: str | os.PathLike, title: str | None = None) -> str:
    """Heat map of a layer x layer similarity matrix, layer 0 at the bottom-left, every layer labelled."""
    from ..plotting import _plt

    plt = _plt()
    mat = sim.tensor().numpy()
    L = mat.shape[0]
    size = min(14.0, max(5.0, 0.32 * L + 2.5))
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    vmin = min(0.0, float(mat.min()))
    im = ax.imshow(mat, origin="lower", cmap="magma", vmin=vmin, vmax=1.0, interpolation="nearest")
    fs = 8 if L <= 32 else 6
    step = 1 if L <= 40 else max(1, L // 32)
    ticks = list(range(0, L, step))
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    ax.set_xticklabels([str(i) for i in ticks], fontsize=fs)
    ax.set_yticklabels([str(i) for i in ticks], fontsize=fs)
    ax.set_xlabel("decoder layer (output)")
    ax.set_ylabel("decoder layer (output)")
    cbar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    cbar.set_label(KIND_LABELS.get(sim.kind, sim.kind))
    ax.set_title(title or f"Layer similarity: {KIND_LABELS.get(sim.kind, sim.kind)}", fontsize=11)
    fig.tight_layout()
    from ..utils import atomic_output_file

    with atomic_output_file(path) as tmp:  # whole or absent
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
    return str(path)
