"""``linear``: training-free block replacement (ReplaceMe, Shopkhoev et al. 2025, arXiv 2505.02819).

A contiguous block ``[s, s+n)`` is replaced by one linear map ``T`` fitted on calibration activations and folded into
the MLP output projection of layer ``s-1``; then the block is removed with the generic removal.  The result stays a
plain checkpoint of the base architecture.

- ``X``: the MLP output of layer ``s-1``; ``h_s``: the residual stream entering layer ``s`` (= ``r + X``);
  ``h_{s+n}``: the stream leaving layer ``s+n-1`` (from hooks on the layers, never ``output_hidden_states``, whose last
  entry is after the final norm).  The fit asks ``X T + (h_s - X) ≈ h_{s+n}``, i.e. ``X T ≈ Y = h_{s+n} - (h_s - X)``,
  on non-pad tokens only, optionally leaving out the first ``skip_first_tokens`` positions of each sequence (SmolLM2
  carries a ≈2.5e4 activation on its first token, which dominates a squared loss).
- Solvers: ``lstsq`` -- ``T = (XᵀX + λI)⁻¹ XᵀY`` with ``XᵀX`` and ``XᵀY`` accumulated per batch in float64 (d² each
  per candidate start, never the activations; λ is relative: ``ridge · mean(diag XᵀX)``); ``cosine`` -- Adam on the
  mean token cosine distance between ``X T + (h_s - X)`` and ``h_{s+n}``, started from the lstsq solution, over
  activations streamed from the model per epoch (``stream``) or written once to disk shards read one at a time
  (``cache``): RAM bounded by one calibration batch either way.
- Block choice: every candidate start ``s >= 1`` gets its own lstsq fit from one capture pass; ``residual`` picks the
  smallest relative residual ``||X T - Y||² / ||h_{s+n}||²`` (= the relative error of the block's output), ``angular``
  the ReplaceMe rule (smallest angular distance between ``h_s`` and ``h_{s+n}`` at each sample's last token); or the
  user names the block.
- Held-out check: the last calibration sequences are not fitted on; the fold is kept only where it lowers their
  perplexity against plain removal of the same block (else plain removal, with a warning; or an error / the fold
  anyway, ``on_no_gain``).
- Fold: ``W ← Tᵀ W`` (``b ← b T``) in every weight that writes the MLP output (the architecture tables: ``down_proj``,
  ``fc2``, ``dense_4h_to_h``, GPT-2's transposed Conv1D, each expert of a mixture-of-experts layer, fused or not, and
  any shared expert), verified on probe tokens; a layer whose MLP output does not add straight into the residual
  stream (a post-MLP norm) is refused.
- Several blocks (``blocks=K``): fit, fold, remove, re-capture on the shortened model, repeat.

The maps are stored beside the plan (``streamline_linear_maps.safetensors``, float32, the very tensors that were
folded), so ``hf-streamline apply`` reproduces the same weights without the calibration data.

Differences from the authors' released code (which buffers every activation, fits padding tokens, hard-codes CUDA
and Llama module paths and leaves ``layer_idx`` unrenumbered): statistics are streamed, padding is masked, modules
come from the architecture tables, removal renumbers and slices the config, and the last block's target is the last
layer's output before the final norm.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import torch
from torch import nn

from ..architecture import (OutputProjection, check_causal_lm, find_mlp, get_decoder_layers, layer_output_hidden,
                            mlp_output_projections, replace_layer_output_hidden, num_layers, skip_layers, text_config)
from ..capture import base_forward_module
from ..errors import StreamlineError
from ..log import progress_bar
from ..plan import StreamlinePlan, base_config_record, block_positions, register_operation
from ..utils import contiguous_runs, model_device, versions
from .activations import _StopForward, capture_block
from .base import ReplacementKind, register_kind
from ..options import LinearOptions  # noqa: F401  (declared with the other shared options)

LINEAR_MAPS_FILE = "streamline_linear_maps.safetensors"


@register_kind
class LinearReplacement(ReplacementKind):
    name = "linear"
    citation = ("shopkhoev2025replaceme", "training-free replacement of a block by a linear map fitted on calibration "
                "activations and folded into the preceding layer")
    description = ("training-free: a linear map fitted on calibration activations, folded into the previous layer's "
                   "MLP output projection (ReplaceMe); plain checkpoint")
    plain_checkpoint = True
    trainable = False
    fitted = True  # fitted on calibration data by ``replace_linear``, not built and trained

    def build(self, model, start, n, options):
        raise StreamlineError(
            "the linear replacement is fitted on calibration data, not built as a module: use "
            "hf_streamline.replace_linear(model, calibration, block_size=...)")


# ---- tokens that enter the fit --------------------------------------------------------------------------------------

def fit_token_mask(attention_mask: torch.Tensor, skip_first_tokens: int = 0) -> torch.Tensor:
    """(B, T) bool: real (non-pad) tokens, without the first ``skip_first_tokens`` real positions of each sequence
    (counted from the sequence's first real token, so left padding is handled too)."""
    mask = attention_mask.bool()
    if skip_first_tokens > 0:
        pos = attention_mask.long().cumsum(1) - 1
        mask = mask & (pos >= skip_first_tokens)
    return mask


def _last_index(attention_mask: torch.Tensor) -> torch.Tensor:
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device).expand_as(attention_mask)
    return torch.where(attention_mask > 0, positions, torch.full_like(positions, -1)).max(dim=1).values.clamp_min(0)


class _Rows:
    """Picks the fitted tokens out of (B, T, d) or (B*T, d) tensors (no copy when every token is fitted)."""

    def __init__(self, attention_mask: torch.Tensor, skip_first_tokens: int, device: torch.device):
        sel = fit_token_mask(attention_mask, skip_first_tokens).to(device)
        self.B, self.T = sel.shape
        self.flat = sel.reshape(-1)
        self.all = bool(self.flat.all())
        self.count = int(self.flat.sum())
        self.last = _last_index(attention_mask.to(device))

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        h = hidden.reshape(-1, hidden.shape[-1])
        return h if self.all else h[self.flat]

    def last_token(self, hidden: torch.Tensor) -> torch.Tensor:
        h = hidden.reshape(self.B, self.T, hidden.shape[-1])
        return h[torch.arange(self.B, device=h.device), self.last]


# ---- one capture pass: lstsq statistics for every candidate start ---------------------------------------------------

@dataclass
class LinearFitStats:
    """float64 ``XᵀX``, ``XᵀY`` and scalar sums per candidate start ``s`` (blocks ``[s, s+n)``)."""

    n: int
    starts: list[int]
    xtx: dict[int, torch.Tensor]
    xty: dict[int, torch.Tensor]
    yy: dict[int, float]  # ||Y||²
    hh: dict[int, float]  # ||h_{s+n}||² over the fitted tokens
    ang_sum: dict[int, float]  # angular distance h_s vs h_{s+n} at each sample's last real token, summed
    tokens: int = 0
    samples: int = 0

    @classmethod
    def empty(cls, n: int, starts: list[int], d: int, device: torch.device) -> "LinearFitStats":
        z = lambda: torch.zeros(d, d, dtype=torch.float64, device=device)  # noqa: E731
        return cls(n, list(starts), {s: z() for s in starts}, {s: z() for s in starts}, dict.fromkeys(starts, 0.0),
                   dict.fromkeys(starts, 0.0), dict.fromkeys(starts, 0.0))

    def _lambda(self, s: int, ridge: float) -> float:
        return float(ridge) * float(torch.diagonal(self.xtx[s]).mean())

    def solve(self, s: int, ridge: float = 0.0) -> torch.Tensor:
        """``T = (XᵀX + λI)⁻¹ XᵀY`` (float64, d × d); the minimum-norm least-squares solution where XᵀX is singular."""
        G, C = self.xtx[s], self.xty[s]
        lam = self._lambda(s, ridge)
        if lam > 0:
            G = G + lam * torch.eye(G.shape[0], dtype=G.dtype, device=G.device)
        try:
            L = torch.linalg.cholesky(G)
            T = torch.cholesky_solve(C, L)
            if torch.isfinite(T).all():
                return T
        except RuntimeError:  # not positive definite: rank-deficient activations
            pass
        return torch.linalg.pinv(G, hermitian=True) @ C

    def squared_error(self, s: int, T: torch.Tensor) -> float:
        """``||X T - Y||²`` from the accumulated statistics."""
        G, C = self.xtx[s], self.xty[s]
        T = T.to(G.device, torch.float64)
        return float((G @ T * T).sum() - 2 * (C * T).sum() + self.yy[s])

    def residual(self, s: int, T: torch.Tensor) -> float:
        """Relative residual ``||X T - Y||² / ||h_{s+n}||²``: the relative squared error of the block's output."""
        return max(self.squared_error(s, T), 0.0) / max(self.hh[s], 1e-300)

    def removal_residual(self, s: int) -> float:
        """The same for plain removal (``T = I``: ``||h_s - h_{s+n}||² / ||h_{s+n}||²``)."""
        G, C = self.xtx[s], self.xty[s]
        err = float(torch.diagonal(G).sum() - 2 * torch.diagonal(C).sum() + self.yy[s])
        return max(err, 0.0) / max(self.hh[s], 1e-300)

    def angular(self, s: int) -> float:
        return self.ang_sum[s] / max(self.samples, 1)

    def keep_only(self, s: int) -> None:
        for table in (self.xtx, self.xty, self.yy, self.hh, self.ang_sum):
            for c in [c for c in table if c != s]:
                del table[c]
        self.starts = [s]


class _BufferPool:
    """Reusable float64 buffers: the statistics pass converts a few (tokens, d) tensors per candidate and batch, and
    fresh allocations of that size cost page faults every time."""

    def __init__(self):
        self.free: dict[tuple, list[torch.Tensor]] = {}

    def float64(self, src: torch.Tensor) -> torch.Tensor:
        key = (tuple(src.shape), src.device)
        free = self.free.get(key)
        buf = free.pop() if free else torch.empty(src.shape, dtype=torch.float64, device=src.device)
        return buf.copy_(src)

    def put(self, *tensors: torch.Tensor) -> None:
        for t in tensors:
            self.free.setdefault((tuple(t.shape), t.device), []).append(t)


def _gram_upper_(G: torch.Tensor, x: torch.Tensor) -> None:
    """``G += xᵀx`` on the first half of the rows and the lower-right block only (¾ of the work; the lower-left
    block is the transpose of the upper-right one, filled in by :func:`_gram_symmetrize_`)."""
    h = G.shape[0] // 2
    G[:h].addmm_(x[:, :h].T, x)
    G[h:, h:].addmm_(x[:, h:].T, x[:, h:])


def _gram_symmetrize_(G: torch.Tensor) -> None:
    h = G.shape[0] // 2
    G[h:, :h] = G[:h, h:].T


# Memory the least-squares statistics of the candidate blocks may take at once (see replace_linear).
STATS_BUDGET_BYTES = 2 * 2**30


@torch.no_grad()
def collect_linear_fit(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]], n: int, starts: Sequence[int],
                       skip_first_tokens: int = 0, progress: bool = True, total: int | None = None) -> LinearFitStats:
    """One hooked pass over ``batches``: the lstsq statistics of every block ``[s, s+n)``, ``s`` in ``starts``.

    Per batch, ``X`` (layer ``s-1``'s MLP output) and ``h_s - X`` are held (float64, fitted tokens only) until layer
    ``s+n-1`` returns, reduced into ``XᵀX`` / ``XᵀY`` and dropped: memory is 2 d² per candidate plus at most ``n``
    pending candidates of one batch, whatever the number of samples.  The forward stops after the last layer needed.
    """
    layers = get_decoder_layers(model)
    L = len(layers)
    starts = sorted(set(int(s) for s in starts))
    for s in starts:
        check_block(L, s, n)
    d = int(text_config(model).hidden_size)
    device = model_device(model)
    stats = LinearFitStats.empty(n, starts, d, device)
    start_set = set(starts)
    last_layer = max(starts) + n - 1
    pending: dict[int, dict[str, torch.Tensor]] = {}
    cur: dict[str, Any] = {}
    pool = _BufferPool()  # float64 (tokens, d) buffers reused across candidates and batches

    def on_mlp(s: int):
        def hook(module, args, output):
            pending[s] = {"x": pool.float64(cur["rows"](layer_output_hidden(output)))}
        return hook

    def on_layer(j: int):
        def hook(module, args, output):
            h = layer_output_hidden(output)
            rows: _Rows = cur["rows"]
            s_end = j + 1 - n
            if s_end in start_set and s_end in pending:
                p = pending.pop(s_end)
                x, y = p["x"], pool.float64(rows(h))
                stats.hh[s_end] += float(y.view(-1).dot(y.view(-1)))
                y.sub_(p["base"])  # Y = h_{s+n} - (h_s - X)
                _gram_upper_(stats.xtx[s_end], x)
                stats.xty[s_end].addmm_(x.T, y)
                stats.yy[s_end] += float(y.view(-1).dot(y.view(-1)))
                pool.put(x, y, p["base"])
                cos = torch.nn.functional.cosine_similarity(p["last"], rows.last_token(h).float(), dim=-1)
                stats.ang_sum[s_end] += float((torch.arccos(cos.clamp(-1.0, 1.0)) / math.pi).sum())
            s_start = j + 1
            if s_start in start_set:
                p = pending.setdefault(s_start, {})
                if "x" not in p:
                    raise StreamlineError(f"the MLP of layer {j} was not called before the layer returned")
                p["base"] = pool.float64(rows(h)).sub_(p["x"])
                p["last"] = rows.last_token(h).float()
            if j == last_layer:
                raise _StopForward
        return hook

    handles = []
    try:
        for s in starts:
            handles.append(find_mlp(layers[s - 1])[0].register_forward_hook(on_mlp(s)))
        for j in sorted({s - 1 for s in starts} | {s + n - 1 for s in starts}):
            handles.append(layers[j].register_forward_hook(on_layer(j)))
        body = base_forward_module(model)
        for batch in progress_bar(batches, desc="linear fit statistics", disable=not progress, total=total, leave=False):
            mask = batch["attention_mask"]
            cur["rows"] = _Rows(mask, skip_first_tokens, device)
            pending.clear()
            try:
                body(input_ids=batch["input_ids"].to(device), attention_mask=mask.to(device), use_cache=False)
            except _StopForward:
                pass
            stats.tokens += cur["rows"].count
            stats.samples += int(mask.shape[0])
    finally:
        for h in handles:
            h.remove()
        pending.clear()
        pool.free.clear()
    for G in stats.xtx.values():
        _gram_symmetrize_(G)
    if stats.tokens == 0:
        raise StreamlineError(f"leaves no calibration tokens to fit on: every sequence has at most {skip_first_tokens} "
                              "real tokens; lower it or use longer sequences", argument="skip_first_tokens",
                              value=skip_first_tokens)
    return stats


def check_block(L: int, s: int, n: int) -> None:
    if n < 1:
        raise StreamlineError("a block has at least one layer", argument="block_size", value=n)
    if s == 0:
        raise StreamlineError(
            "the linear replacement folds its map into the MLP of the layer before the block, and a block starting at "
            "layer 0 has none; choose a block starting at layer 1 or later")
    if s < 0 or s + n > L:
        raise StreamlineError(f"block {s}..{s + n - 1} does not fit in the model's layers 0..{L - 1}")
    if n >= L:
        raise StreamlineError(f"the model has {L} layers and at least one must stay", argument="block_size", value=n)


# ---- the fold -------------------------------------------------------------------------------------------------------

def _folded(weight: torch.Tensor, layout: str, T: torch.Tensor) -> torch.Tensor:
    W = weight.detach().to(torch.float64)
    if layout == "out_in":  # y = x Wᵀ  ->  y T = x (Tᵀ W)ᵀ
        return T.T @ W
    if layout == "in_out":  # y = x W   ->  y T = x (W T)
        return W @ T
    if layout == "experts_out_in":  # (E, out, in)
        return torch.matmul(T.T, W)
    if layout == "experts_in_out":  # (E, in, out)
        return torch.matmul(W, T)
    raise StreamlineError(f"unknown weight layout {layout!r}")


@torch.no_grad()
def fold_linear_map(layer: nn.Module, T: torch.Tensor) -> list[str]:
    """Fold ``T`` (d × d, acting on row vectors) into every weight that writes ``layer``'s MLP output: afterwards the
    MLP returns ``mlp(x) @ T``.  The products are taken in float64 and cast back.  Returns the folded paths."""
    from ..offload import onload

    onload(layer)  # --sequential: the folded weights must be in memory to be changed (and saved changed)
    projections: list[OutputProjection] = mlp_output_projections(layer)
    seen: set[int] = set()
    done = []
    for p in projections:
        W = getattr(p.module, p.weight)
        if id(W) in seen:
            continue
        seen.add(id(W))
        Td = T.detach().to(W.device, torch.float64)
        W.copy_(_folded(W, p.layout, Td).to(W.dtype))
        if p.bias is not None:
            b = getattr(p.module, p.bias)
            b.copy_((b.detach().to(torch.float64) @ Td).to(b.dtype))
        done.append(p.path)
    return done


@contextmanager
def linear_map_hook(mlp: nn.Module, T: torch.Tensor | None):
    """While active, ``mlp``'s output is multiplied by ``T`` (what folding ``T`` does; ``None``: no change)."""
    if T is None:
        yield
        return

    def hook(module, args, output):
        x = layer_output_hidden(output)
        return replace_layer_output_hidden(output, (x.to(torch.float64) @ T.to(x.device, torch.float64)).to(x.dtype))

    handle = mlp.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _tolerance(dtype: torch.dtype) -> float:
    return max(1e-3, 8 * float(torch.finfo(dtype).eps)) if dtype.is_floating_point else 1e-3


@torch.no_grad()
def _probe_inputs(model: nn.Module, layer_index: int, ids: torch.Tensor, mask: torch.Tensor) -> dict[str, Any]:
    """Layer ``layer_index``'s call (input and context) and its MLP's call, on a few probe tokens."""
    layer = get_decoder_layers(model)[layer_index]
    mlp = find_mlp(layer)[0]
    got: dict[str, Any] = {}

    def pre(module, args, kwargs):
        got.setdefault("mlp_args", tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args))
        got.setdefault("mlp_kwargs", dict(kwargs))

    handle = mlp.register_forward_pre_hook(pre, with_kwargs=True)
    try:
        block = capture_block(model, layer_index, 1, ids, mask)
    finally:
        handle.remove()
    got.update(block)
    return got


def _rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


@torch.no_grad()
def check_mlp_output_is_additive(model: nn.Module, layer_index: int, probe: dict[str, Any]) -> None:
    """Refuse a layer whose MLP output is not added unchanged into the residual stream (the fit assumes
    ``h = r + X``): add a perturbation to the MLP's output and check the layer's output moves by exactly that much."""
    layer = get_decoder_layers(model)[layer_index]
    mlp_output_projections(layer)  # the architecture tables first: a known post-MLP norm gets its own message
    mlp = find_mlp(layer)[0]
    x, args, kwargs = probe["x"], probe["args"], probe["kwargs"]
    base = layer_output_hidden(layer(x, *args, **kwargs))
    g = torch.Generator(device="cpu").manual_seed(0)
    scale = float(base.float().pow(2).mean().sqrt()) + 1.0
    delta_cache: dict[str, torch.Tensor] = {}

    def hook(module, a, output):
        out = layer_output_hidden(output)
        if "d" not in delta_cache:
            delta_cache["d"] = (torch.randn(out.shape, generator=g) * scale).to(out.device, out.dtype)
        return replace_layer_output_hidden(output, out + delta_cache["d"])

    handle = mlp.register_forward_hook(hook)
    try:
        moved = layer_output_hidden(layer(x, *args, **kwargs))
    finally:
        handle.remove()
    delta = delta_cache["d"].reshape(moved.shape)
    err = _rel_error(moved.float() - base.float(), delta.float())
    if not err < _tolerance(base.dtype) * 10:
        raise StreamlineError(
            f"layer {layer_index}: its MLP output is not added unchanged to the residual stream (a perturbation of it "
            f"moves the layer's output by something else, relative error {err:.2g}) -- e.g. a norm after the MLP, or "
            "a post-LN layer; a linear map cannot be folded into this architecture's MLP")


@torch.no_grad()
def fold_and_verify(model: nn.Module, layer_index: int, T: torch.Tensor, probe: dict[str, Any]) -> list[str]:
    """Fold ``T`` into layer ``layer_index``'s MLP and check, on the probe tokens, that the MLP now returns its old
    output times ``T``; on a mismatch the weights are restored and the fold refused."""
    from ..offload import onload

    layer = get_decoder_layers(model)[layer_index]
    onload(layer)  # --sequential: the weights to save (for a restore) and to fold must be in memory
    mlp = find_mlp(layer)[0]
    projections = mlp_output_projections(layer)
    saved = {}
    for p in projections:
        saved[(id(p.module), p.weight)] = getattr(p.module, p.weight).detach().clone()
        if p.bias is not None:
            saved[(id(p.module), p.bias)] = getattr(p.module, p.bias).detach().clone()
    margs, mkw = probe.get("mlp_args", ()), probe.get("mlp_kwargs", {})
    before = layer_output_hidden(mlp(*margs, **mkw)) if margs or mkw else None
    paths = fold_linear_map(layer, T)
    if before is not None:
        after = layer_output_hidden(mlp(*margs, **mkw))
        want = (before.double() @ T.to(before.device, torch.float64))
        err = _rel_error(after, want)
        if not err < _tolerance(after.dtype) * 10:
            for p in projections:
                getattr(p.module, p.weight).copy_(saved[(id(p.module), p.weight)])
                if p.bias is not None:
                    getattr(p.module, p.bias).copy_(saved[(id(p.module), p.bias)])
            raise StreamlineError(
                f"layer {layer_index}: folding the map into {paths} does not give the MLP output times the map "
                f"(relative error {err:.2g}); the weights were restored. Something between the output projection and "
                "the MLP's output is not linear (a norm after each expert?)")
    return paths


# ---- the cosine solver ----------------------------------------------------------------------------------------------

@torch.no_grad()
def block_fit_activations(model: nn.Module, s: int, n: int, batches: Iterable[dict[str, torch.Tensor]],
                          skip_first_tokens: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per batch: ``(X, h_s - X, h_{s+n})`` on the fitted tokens (float32), the forward stopped after layer s+n-1."""
    layers = get_decoder_layers(model)
    check_block(len(layers), s, n)
    device = model_device(model)
    body = base_forward_module(model)
    got: dict[str, torch.Tensor] = {}
    cur: dict[str, Any] = {}

    def on_mlp(module, args, output):
        got["x"] = cur["rows"](layer_output_hidden(output)).float().clone()

    def on_start(module, args, output):
        got["base"] = cur["rows"](layer_output_hidden(output)).float() - got["x"]

    def on_end(module, args, output):
        got["y"] = cur["rows"](layer_output_hidden(output)).float().clone()
        raise _StopForward

    handles = [find_mlp(layers[s - 1])[0].register_forward_hook(on_mlp),
               layers[s - 1].register_forward_hook(on_start), layers[s + n - 1].register_forward_hook(on_end)]
    try:
        for batch in batches:
            cur["rows"] = _Rows(batch["attention_mask"], skip_first_tokens, device)
            got.clear()
            try:
                body(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                     use_cache=False)
            except _StopForward:
                pass
            if cur["rows"].count:
                yield got["x"], got["base"], got["y"]
    finally:
        for h in handles:
            h.remove()


def fit_cosine(model: nn.Module, s: int, n: int, batches: Sequence[dict[str, torch.Tensor]], T0: torch.Tensor,
               options: LinearOptions, cache_dir: str | None = None, progress: bool = True) -> tuple[torch.Tensor, dict]:
    """Adam on ``mean_t (1 - cos(X_t T + (h_s - X)_t, h_{s+n,t}))`` from ``T0``; returns ``(T, record)``.

    ``stream``: every epoch re-runs the model up to the block's end, batch by batch; ``cache``: the first pass writes
    one shard per calibration batch to disk, later epochs read them back one at a time.  Tokens are shuffled within
    each batch with the seed; both modes see the same tokens in the same order and give the same map.
    """
    device = model_device(model)
    T = nn.Parameter(T0.detach().to(device, torch.float32).clone())
    opt = torch.optim.Adam([T], lr=options.cosine_lr)
    g = torch.Generator().manual_seed(options.seed)
    folder = None
    if options.activations == "cache":
        folder = Path(tempfile.mkdtemp(prefix="hf_streamline_linear-", dir=cache_dir))
    shards: list[Path] = []
    history: list[float] = []

    def source(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        if folder is None:
            yield from block_fit_activations(model, s, n, batches, options.skip_first_tokens)
            return
        if epoch == 0:
            for k, item in enumerate(block_fit_activations(model, s, n, batches, options.skip_first_tokens)):
                path = folder / f"shard-{k:05d}.pt"
                torch.save({"x": item[0].cpu(), "base": item[1].cpu(), "y": item[2].cpu()}, path)
                shards.append(path)
                yield item
            return
        for path in shards:  # the calibration's order, as when streaming: stream and cache give the same map
            sh = torch.load(path, map_location=device, weights_only=True)
            yield sh["x"], sh["base"], sh["y"]
            del sh

    try:
        bar = progress_bar(range(options.cosine_epochs), desc="cosine fit", disable=not progress, leave=False)
        with torch.enable_grad():
            for epoch in bar:
                total, count = 0.0, 0
                for x, base, y in source(epoch):
                    perm = torch.randperm(x.shape[0], generator=g).to(x.device)
                    for i in range(0, x.shape[0], options.cosine_token_batch):
                        idx = perm[i:i + options.cosine_token_batch]
                        pred = x[idx] @ T + base[idx]
                        loss = 1.0 - torch.nn.functional.cosine_similarity(pred, y[idx], dim=-1, eps=1e-8).mean()
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        opt.step()
                        total += float(loss.detach()) * len(idx)
                        count += len(idx)
                history.append(total / max(count, 1))
                bar.set_postfix(loss=f"{history[-1]:.5f}")
    finally:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
    record = {"epochs": options.cosine_epochs, "lr": options.cosine_lr, "token_batch": options.cosine_token_batch,
              "activations": options.activations, "loss_first_epoch": history[0] if history else None,
              "loss_last_epoch": history[-1] if history else None, "loss_per_epoch": history}
    return T.detach().to(torch.float64), record


# ---- held-out check -------------------------------------------------------------------------------------------------

@torch.no_grad()
def heldout_perplexity(model: nn.Module, heldout: Any, block: Sequence[int], fold_layer: int | None = None,
                       T: torch.Tensor | None = None, batch_size: int = 8) -> float:
    """Perplexity of ``model`` on ``heldout`` with ``block`` skipped and, if ``T`` is given, layer ``fold_layer``'s MLP
    output multiplied by ``T`` (exactly what the fold + removal gives, without copying the model)."""
    from ..scores.perplexity import calibration_perplexity

    mlp = find_mlp(get_decoder_layers(model)[fold_layer])[0] if T is not None else None
    with skip_layers(model, list(block)), linear_map_hook(mlp, T):
        return calibration_perplexity(model, heldout, batch_size)


# ---- the pipeline ---------------------------------------------------------------------------------------------------

def parse_blocks(layers: Any) -> list[list[int]]:
    """``"12-19"``, ``"12-19,22-25"``, ``[12, ..., 19]``, ``range(12, 20)`` or ``[(12, 19), (22, 25)]`` (inclusive
    ranges) -> blocks of original layer indices."""
    if layers is None:
        return []
    if isinstance(layers, str):
        blocks = []
        for part in layers.split(","):
            part = part.strip()
            if not part:
                continue
            a, sep, b = part.partition("-")
            try:
                lo, hi = int(a), int(b) if sep else int(a)
            except ValueError:
                raise StreamlineError("expected ranges like 12-19 or 12-19,22-25", argument="layers",
                                      value=layers) from None
            if hi < lo:
                raise StreamlineError(f"the range {part!r} runs backwards", argument="layers", value=layers)
            blocks.append(list(range(lo, hi + 1)))
        if not blocks:
            raise StreamlineError("no block given", argument="layers", value=layers)
        return blocks
    items = list(layers)
    if items and all(isinstance(i, (tuple, list)) and len(i) == 2 for i in items):
        return [list(range(int(a), int(b) + 1)) for a, b in items]
    block = sorted(int(i) for i in items)
    if not block or block != list(range(block[0], block[0] + len(block))):
        raise StreamlineError(f"layers {items}: a block is a non-empty run of consecutive layers")
    return [block]


def _split_calibration(calibration: Any, heldout: int) -> tuple[Any, Any]:
    from ..calibration import CalibrationData

    N = len(calibration)
    if heldout <= 0:
        return calibration, None
    if heldout >= N:
        raise StreamlineError(f"the calibration has only {N} sequences and the fit needs at least one; give more "
                              "calibration samples or fewer held-out ones", argument="heldout_samples", value=heldout)
    train = CalibrationData(calibration.input_ids[:N - heldout], calibration.attention_mask[:N - heldout],
                            calibration.config)
    held = CalibrationData(calibration.input_ids[N - heldout:], calibration.attention_mask[N - heldout:],
                           calibration.config)
    return train, held


def _maps_bytes(maps: dict[str, torch.Tensor], meta: dict[str, str]) -> bytes:
    from safetensors.torch import save

    return save({k: v.detach().to("cpu", torch.float32).contiguous() for k, v in maps.items()}, metadata=meta)


def load_linear_maps(data: bytes) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    return load(data)


def replace_linear(model: nn.Module, calibration: Any, *, block_size: int | None = None, blocks: int = 1,
                   layers: Any = None, solver: str = "lstsq", select: str = "residual", skip_first_tokens: int = 0,
                   ridge: float = 0.0, heldout_samples: int | None = None, on_no_gain: str = "remove",
                   cosine_epochs: int = 10, cosine_lr: float = 1e-4, cosine_token_batch: int = 1024,
                   activations: str = "stream", cache_dir: str | None = None, seed: int = 0, batch_size: int = 8,
                   base_model: str | None = None, progress: bool = True) -> tuple[nn.Module, StreamlinePlan]:
    """Training-free block replacement (ReplaceMe): fit a linear map for a block of ``block_size`` layers, fold it into
    the preceding layer's MLP output projection, remove the block; ``blocks`` times (re-capturing in between), or for
    the blocks named by ``layers`` (original indices, e.g. ``"12-19"``).  Returns ``(model, plan)``; the model is
    changed in place and stays a plain checkpoint of its architecture.  ``calibration``: a
    :class:`~hf_streamline.CalibrationData`; its last ``heldout_samples`` sequences are held out for the check.
    """
    from ..modeling import StreamlineForCausalLM
    from .api import install_replacement

    check_causal_lm(model)
    if isinstance(model, StreamlineForCausalLM):
        raise StreamlineError("the linear replacement works on a plain checkpoint; apply it before replacing blocks "
                              "by custom modules")
    opts = LinearOptions(solver=solver, ridge=float(ridge), skip_first_tokens=int(skip_first_tokens), select=select,
                         heldout_samples=heldout_samples, on_no_gain=on_no_gain, cosine_epochs=int(cosine_epochs),
                         cosine_lr=float(cosine_lr), cosine_token_batch=int(cosine_token_batch),
                         activations=activations, seed=int(seed))
    opts.validate()
    if calibration is None or not hasattr(calibration, "input_ids"):
        raise StreamlineError("the linear replacement is fitted on calibration data: pass it "
                              "(build_calibration(tokenizer, ...))", argument="calibration")
    user_blocks = parse_blocks(layers)
    if user_blocks:
        if block_size is not None and any(len(b) != block_size for b in user_blocks):
            raise StreamlineError(f"names blocks of {[len(b) for b in user_blocks]} layers but block_size is "
                                  f"{block_size}; give one or make them agree", argument="layers", value=layers)
        rounds = len(user_blocks)
    else:
        if block_size is None:
            raise StreamlineError("give the number of layers of a block (or name the block with layers='a-b')",
                                  argument="block_size")
        if blocks < 1:
            raise StreamlineError("must be >= 1", argument="blocks", value=blocks)
        rounds = int(blocks)
    L0 = num_layers(model)
    N = len(calibration)
    H = opts.heldout_samples if opts.heldout_samples is not None else (max(1, N // 8) if N >= 2 else 0)
    train, held = _split_calibration(calibration, H)
    if held is None and opts.heldout_samples is None:
        warnings.warn("one calibration sequence only: the fold is not checked on held-out data", stacklevel=2)
    d = int(text_config(model).hidden_size)
    if train.num_tokens < d:
        warnings.warn(f"the fit sees {train.num_tokens} tokens for a hidden size of {d}: XᵀX is rank-deficient and the "
                      "minimum-norm solution is used; give more calibration tokens (or --ridge)", stacklevel=2)
    name = base_model or getattr(model.config, "_name_or_path", "") or "unknown"
    metric = None if user_blocks else ("linear_residual" if opts.select == "residual" else "angular")
    plan = StreamlinePlan(base_model=name, num_layers_before=L0, method="replace_linear", metric=metric,
                          selection="user" if user_blocks else "block",
                          calibration=calibration.recipe() if hasattr(calibration, "recipe") else None,
                          versions=versions(), base_config=base_config_record(model))
    current = list(range(L0))  # original index of each current layer
    maps: dict[str, torch.Tensor] = {}
    n_batches = math.ceil(len(train) / batch_size)
    probe_ids = train.input_ids[:1, :16]
    probe_mask = train.attention_mask[:1, :16]
    for k in range(rounds):
        L = num_layers(model)
        if user_blocks:
            orig = user_blocks[k]
            missing = [o for o in orig if o not in current]
            if missing:
                raise StreamlineError(f"layer(s) {missing} are not in the model (removed by an earlier block, "
                                      f"or beyond its {L0} layers)", argument="layers", value=layers)
            positions = [current.index(o) for o in orig]
            if positions != list(range(positions[0], positions[0] + len(positions))):
                raise StreamlineError(f"block {orig} is not contiguous in the model at that point", argument="layers",
                                      value=layers)
            n = len(orig)
            candidates = [positions[0]]
            check_block(L, positions[0], n)
        else:
            n = int(block_size)
            if n > L - 1:
                raise StreamlineError(f"block {k + 1} of {rounds} needs a layer before it and at least one layer "
                                      f"kept, but the model has {L} layers left", argument="block_size", value=n)
            candidates = list(range(1, L - n + 1))
        layer_list = get_decoder_layers(model)
        for c in candidates:  # refuse unfoldable layers before the capture pass
            mlp_output_projections(layer_list[c - 1])
        first_probe = candidates[0] - 1
        check_mlp_output_is_additive(model, first_probe, _probe_inputs(model, first_probe, probe_ids, probe_mask))
        # the float64 statistics take 2 d² x 8 bytes per candidate (268 MB at d = 4096): past STATS_BUDGET_BYTES the
        # candidates are fitted in groups, one pass each, keeping only the best one's statistics
        per_group = max(1, STATS_BUDGET_BYTES // (2 * d * d * 8))
        residual, angular, removal_res = {}, {}, {}
        stats, best = None, None
        for g in range(0, len(candidates), per_group):
            group = candidates[g:g + per_group]
            part = collect_linear_fit(model, train.batches(batch_size), n, group, opts.skip_first_tokens,
                                      progress=progress, total=n_batches)
            residual.update({c: part.residual(c, part.solve(c, opts.ridge)) for c in group})
            angular.update({c: part.angular(c) for c in group})
            removal_res.update({c: part.removal_residual(c) for c in group})
            key = residual if opts.select == "residual" else angular
            here = min(group, key=lambda c: (key[c], c))
            if best is None or (key[here], here) < (key[best], best):
                best = here
                part.keep_only(here)
                stats = part
            del part
        if user_blocks:
            s = candidates[0]
        else:
            s = best
            per_res = [None] + [residual[c] for c in range(1, L - n + 1)]
            per_ang = [None] + [angular[c] for c in range(1, L - n + 1)]
            from ..scores.base import ScoreResult

            scores = {"linear_residual": ScoreResult("linear_residual", per_block={n: per_res},
                                                     details={"what": "relative residual of the lstsq fit, ||XT-Y||²/||h||²",
                                                              "tokens": stats.tokens}).to_dict(),
                      "angular": ScoreResult("angular", per_block={n: per_ang},
                                             details={"token": "last", "samples": stats.samples}).to_dict()}
            if k == 0:
                plan.scores.update(scores)
            else:
                plan.steps.append({"step": k + 1, "scores": scores})
        block_orig = current[s:s + n]
        into_orig = current[s - 1]
        probe = _probe_inputs(model, s - 1, probe_ids, probe_mask)
        if s - 1 != first_probe:
            check_mlp_output_is_additive(model, s - 1, probe)
        T = T_lstsq = stats.solve(s, opts.ridge)
        tokens = stats.tokens
        stats.keep_only(s)  # drop the other candidates' d × d statistics
        record: dict[str, Any] = {}
        if opts.solver == "cosine":
            T, record = fit_cosine(model, s, n, list(train.batches(batch_size)), T, opts, cache_dir=cache_dir,
                                   progress=progress)
        T32 = T.to(torch.float32)
        op: dict[str, Any] = {"type": "replace_linear", "layers": block_orig, "fold_into": into_orig,
                              "solver": opts.solver, "ridge": opts.ridge, "skip_first_tokens": opts.skip_first_tokens,
                              "tokens": tokens, "residual": stats.residual(s, T32.double()),
                              "lstsq_residual": residual[s], "removal_residual": removal_res[s],
                              "angular": angular[s]}
        if record:
            op["cosine"] = record
        folded = True
        if held is not None:
            block_now = list(range(s, s + n))
            ppl = {"removed": heldout_perplexity(model, held, block_now, batch_size=batch_size),
                   "folded": heldout_perplexity(model, held, block_now, s - 1, T32, batch_size=batch_size)}
            if opts.solver == "cosine":
                ppl["lstsq"] = heldout_perplexity(model, held, block_now, s - 1, T_lstsq.to(torch.float32),
                                                  batch_size=batch_size)
            op["heldout_perplexity"] = ppl
            op["heldout_samples"] = len(held)
            if not ppl["folded"] < ppl["removed"]:
                why = (f"the linear map does not lower held-out perplexity (fold {ppl['folded']:.4g} vs plain removal "
                       f"{ppl['removed']:.4g}, {len(held)} held-out calibration sequences)")
                if opts.on_no_gain == "error":
                    raise StreamlineError(f"block {_span(block_orig)}: {why}; refusing", argument="on_no_gain",
                                          value="error")
                if opts.on_no_gain == "remove":
                    folded = False
                    op["reason"] = why + "; the block was removed without it"
                    warnings.warn(f"block {_span(block_orig)}: {why}; falling back to plain removal", stacklevel=2)
                else:
                    op["reason"] = why + "; folded anyway (--on-no-gain keep)"
                    warnings.warn(f"block {_span(block_orig)}: {why}; folded anyway (--on-no-gain keep)", stacklevel=2)
        op["folded"] = folded
        if folded:
            key = f"block{k}"
            op["folded_into"] = fold_and_verify(model, s - 1, T32, probe)
            op["map"] = key
            maps[key] = T32.cpu()
        model = install_replacement(model, s, n, "none")
        plan.operations.append(op)
        current = [o for o in current if o not in set(block_orig)]
        del stats
    plan.extra["replace_linear"] = {"options": opts.to_dict(), "block_size": block_size, "blocks": rounds,
                                    "fit_samples": len(train), "heldout_samples": 0 if held is None else len(held),
                                    "maps": LINEAR_MAPS_FILE if maps else None,
                                    "maps_stored": "float32 safetensors beside the plan (the folded tensors); "
                                                   "hf-streamline apply reads them, nothing is recomputed"}
    if maps:
        meta = {"format": "hf_streamline linear maps", "convention": "row vectors: mlp_out <- mlp_out @ T",
                "base_model": str(name)}
        plan.attachments[LINEAR_MAPS_FILE] = _maps_bytes(maps, meta)
    return model, plan


def _span(layers: Sequence[int]) -> str:
    layers = list(layers)
    if layers and layers == list(range(layers[0], layers[0] + len(layers))):
        return f"{layers[0]}..{layers[-1]}"
    return ",".join(str(i) for i in layers)


@register_operation("replace_linear")
def _apply_replace_linear(model: nn.Module, op: dict, state: dict, **_: Any) -> nn.Module:
    """Fold the stored map into the layer before the block (if the run folded it), then remove the block."""
    from .api import install_replacement

    current: list[int] = state["current"]
    orig = [int(i) for i in op["layers"]]
    positions = block_positions(state, orig, "replaces")
    s, n = positions[0], len(positions)
    if op.get("folded"):
        if s == 0 or current[s - 1] != int(op["fold_into"]):
            raise StreamlineError(f"plan folds the map of block {orig} into layer {op['fold_into']}, which is not the "
                                  "layer before the block at that point")
        cache = state.setdefault("linear_maps", None)
        if cache is None:
            data = (state.get("attachments") or {}).get(LINEAR_MAPS_FILE)
            if data is None:
                raise StreamlineError(
                    f"the plan folds linear maps stored in {LINEAR_MAPS_FILE} beside streamline_plan.json, and that "
                    "file is missing; load the plan with StreamlinePlan.load(folder) from the folder that holds both")
            cache = state["linear_maps"] = load_linear_maps(data)
        if op["map"] not in cache:
            raise StreamlineError(f"{LINEAR_MAPS_FILE} has no map {op['map']!r} (it holds {sorted(cache)})")
        layer = get_decoder_layers(model)[s - 1]
        fold_linear_map(layer, cache[op["map"]])
    model = install_replacement(model, s, n, "none")
    state["current"] = [o for o in current if o not in set(orig)]
    return model


def fold_removal(model: nn.Module, calibration: Any, selection_plan: StreamlinePlan, *, skip_first_tokens: int = 0,
                 heldout_samples: int | None = None, batch_size: int = 8, base_model: str | None = None,
                 progress: bool = True) -> tuple[nn.Module, StreamlinePlan]:
    """ReplaceMe on a removal chosen elsewhere (``prune --fold linear``): every contiguous run of
    ``selection_plan.removed_layers`` is replaced by a linear map fitted on ``calibration`` and folded into the layer
    before the run (kept only where it lowers the held-out perplexity, as :func:`replace_linear` does).  ``model`` is
    the *unpruned* model (changed in place).  The selection's record (metric, selection, scores, search) is carried
    into the returned plan, so the card and ``apply`` see both what chose the layers and what replaced them."""
    runs = contiguous_runs(selection_plan.removed_layers)
    if not runs:
        raise StreamlineError("removes no whole layer (nothing to fold)", argument="selection_plan")
    if runs[0][0] == 0:
        raise StreamlineError(f"the removed layers {runs[0]} start at layer 0, which has no layer before it to fold a "
                              "map into; keep layer 0 in the selection (protect_first=1)", argument="selection_plan")
    model, plan = replace_linear(model, calibration, layers=[(r[0], r[-1]) for r in runs],
                                 skip_first_tokens=skip_first_tokens, heldout_samples=heldout_samples,
                                 batch_size=batch_size, base_model=base_model or selection_plan.base_model,
                                 progress=progress)
    plan.metric, plan.selection = selection_plan.metric, selection_plan.selection
    plan.scores.update(selection_plan.scores)
    plan.steps = list(selection_plan.steps) + list(plan.steps)
    for key in ("search", "removed_units", "unit"):
        if key in selection_plan.extra:
            plan.extra[key] = selection_plan.extra[key]
    folded = [op["layers"] for op in plan.operations if op.get("folded")]
    plan.extra["fold"] = {"kind": "linear", "selected_by": selection_plan.method, "blocks": runs, "folded": folded}
    return model, plan
