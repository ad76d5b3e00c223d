"""Hook-based capture of decoder-layer inputs and outputs with streaming statistics.

Hooks sit on each decoder layer's input (forward pre-hook) and output (forward hook).  Nothing is taken from
``output_hidden_states``, whose last entry is *after* the final norm.  Per batch, each layer input is normalised
once (float32) and kept only until the batch ends; when layer ``m``'s output arrives its per-token cosine with
the input of every layer ``l <= m`` is reduced at once into running sums, i.e. the similarity between the input
and the output of every block ``l..m`` -- every block size ``n`` from the same pass.  Peak memory grows with the
batch, never with the number of calibration samples.

The driver is the llm-compressor lifecycle: register hooks -> accumulate per batch -> finalize.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
from torch import nn

from .architecture import get_decoder_layers, layer_input_hidden, layer_output_hidden
from .log import progress_bar
from .utils import model_device


class LayerHooks:
    """Context manager registering ``on_input(idx, hidden)`` / ``on_output(idx, hidden)`` on every decoder layer, or
    only on the layers whose indices ``layers`` names."""

    def __init__(self, model: nn.Module, on_input: Callable[[int, torch.Tensor], None] | None = None,
                 on_output: Callable[[int, torch.Tensor], None] | None = None, layers: Iterable[int] | None = None):
        self.model, self.on_input, self.on_output = model, on_input, on_output
        self.layers = None if layers is None else set(layers)
        self.handles: list[Any] = []

    def __enter__(self) -> "LayerHooks":
        for idx, layer in enumerate(get_decoder_layers(self.model)):
            if self.layers is not None and idx not in self.layers:
                continue
            if self.on_input is not None:
                def pre(module, args, kwargs, _i=idx):
                    self.on_input(_i, layer_input_hidden(args, kwargs))
                self.handles.append(layer.register_forward_pre_hook(pre, with_kwargs=True))
            if self.on_output is not None:
                def post(module, args, output, _i=idx):
                    self.on_output(_i, layer_output_hidden(output))
                self.handles.append(layer.register_forward_hook(post))
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()


def inject_layer_input(layer: nn.Module, hidden: torch.Tensor) -> Any:
    """Make the next forward of decoder ``layer`` take ``hidden`` as its hidden-state input (a forward pre-hook, the
    argument found as :func:`~hf_streamline.architecture.layer_input_hidden` finds it); returns the hook handle, which
    the caller removes.  The searches use it to run only the layers above a recorded input."""
    from .errors import StreamlineError

    def pre(module, args, kwargs):
        if args and isinstance(args[0], torch.Tensor):
            return (hidden,) + tuple(args[1:]), kwargs
        for key in ("hidden_states", "x", "inputs_embeds"):
            if isinstance(kwargs.get(key), torch.Tensor):
                return args, dict(kwargs, **{key: hidden})
        raise StreamlineError("cannot find the hidden-state input of a decoder layer to inject")

    return layer.register_forward_pre_hook(pre, with_kwargs=True)


@dataclass
class BlockSimilarityStats:
    """Running sums for the similarity between the input of layer ``l`` and the output of layer ``m`` (``l <= m``).

    ``cos_sum[l, m]``: sum over non-pad tokens of cos; ``ang_sum[l, m]``: sum over tokens of arccos(cos)/pi;
    ``last_ang_sum[l, m]`` / ``last_cos_sum``: the same at each sample's last non-pad token.
    """

    num_layers: int
    cos_sum: torch.Tensor
    ang_sum: torch.Tensor
    last_cos_sum: torch.Tensor
    last_ang_sum: torch.Tensor
    tokens: int = 0
    samples: int = 0

    @classmethod
    def empty(cls, num_layers: int) -> "BlockSimilarityStats":
        z = lambda: torch.zeros(num_layers, num_layers, dtype=torch.float64)  # noqa: E731
        return cls(num_layers, z(), z(), z(), z())

    def mean_cos(self, last_token: bool = False) -> torch.Tensor:
        return (self.last_cos_sum / max(self.samples, 1)) if last_token else (self.cos_sum / max(self.tokens, 1))

    def mean_angular(self, last_token: bool = True) -> torch.Tensor:
        return (self.last_ang_sum / max(self.samples, 1)) if last_token else (self.ang_sum / max(self.tokens, 1))

    def block_values(self, matrix: torch.Tensor, n: int) -> list[float]:
        """Values for every block of ``n`` consecutive layers, indexed by the block's first layer."""
        return [float(matrix[l, l + n - 1]) for l in range(self.num_layers - n + 1)]


class BlockSimilarityCollector:
    """Accumulates :class:`BlockSimilarityStats` over calibration batches through decoder-layer hooks."""

    def __init__(self, model: nn.Module, max_block: int | None = None):
        self.model = model
        self.L = len(get_decoder_layers(model))
        self.max_block = max_block or self.L
        self.stats = BlockSimilarityStats.empty(self.L)
        self._buf: torch.Tensor | None = None  # (L, B, T, H) normalised layer inputs of the current batch
        self._have: set[int] = set()
        self._last_out: tuple[torch.Tensor, torch.Tensor] | None = None  # (raw output of layer m, its normalised copy)
        self._mask: torch.Tensor | None = None
        self._last_idx: torch.Tensor | None = None
        self._device: torch.device | None = None

    def _normalise(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(hidden.detach().to(self._device, torch.float32), dim=-1, eps=1e-12)

    def on_input(self, idx: int, hidden: torch.Tensor) -> None:
        # the input of layer m+1 is usually the very tensor layer m returned: normalise it once
        last = self._last_out
        h = last[1] if last is not None and last[0] is hidden else self._normalise(hidden)
        if self._buf is None or self._buf.shape[1:] != h.shape:
            self._buf = torch.empty((self.L, *h.shape), dtype=torch.float32, device=h.device)
        self._buf[idx].copy_(h)
        self._have.add(idx)

    def on_output(self, m: int, hidden: torch.Tensor) -> None:
        out = self._normalise(hidden)
        self._last_out = (hidden, out)
        lo = max(0, m - self.max_block + 1)
        if not all(l in self._have for l in range(lo, m + 1)):
            return
        ls = list(range(lo, m + 1))
        ins = self._buf[lo:m + 1]  # (k, B, T, H), a view
        cos = torch.einsum("kbth,bth->kbt", ins, out).clamp(-1.0, 1.0)  # (k, B, T)
        mask = self._mask
        ang = torch.arccos(cos) / math.pi
        cos_tok = (cos * mask).sum(dim=(1, 2)).double()
        ang_tok = (ang * mask).sum(dim=(1, 2)).double()
        b = torch.arange(cos.shape[1], device=cos.device)
        last_cos = cos[:, b, self._last_idx]  # (k, B)
        last_ang = ang[:, b, self._last_idx]
        idx = torch.tensor(ls, dtype=torch.long)
        s = self.stats
        s.cos_sum[idx, m] += cos_tok.cpu()
        s.ang_sum[idx, m] += ang_tok.cpu()
        s.last_cos_sum[idx, m] += last_cos.sum(1).double().cpu()
        s.last_ang_sum[idx, m] += last_ang.sum(1).double().cpu()

    def begin_batch(self, attention_mask: torch.Tensor) -> None:
        self._device = model_device(self.model)
        mask = attention_mask.to(self._device, torch.float32)
        self._mask = mask
        positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
        self._last_idx = torch.where(mask > 0, positions, torch.full_like(positions, -1)).max(dim=1).values.clamp_min(0)
        self.stats.tokens += int(mask.sum())
        self.stats.samples += int(mask.shape[0])

    def end_batch(self) -> None:
        self._have.clear()
        self._last_out = None
        self._mask = self._last_idx = None


def base_forward_module(model: nn.Module) -> nn.Module:
    """The transformer body without the LM head (no logits are needed to collect layer statistics)."""
    base = getattr(model, "base_model", None)
    return base if isinstance(base, nn.Module) and base is not model else model


@torch.no_grad()
def collect_block_similarity(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]], max_block: int | None = None,
                             progress: bool = True, total: int | None = None) -> BlockSimilarityStats:
    """One pass over ``batches``; returns similarity statistics for every block of up to ``max_block`` layers."""
    collector = BlockSimilarityCollector(model, max_block=max_block)
    body = base_forward_module(model)
    device = model_device(model)
    with LayerHooks(model, collector.on_input, collector.on_output):
        for batch in progress_bar(batches, desc="scoring layers", disable=not progress, total=total, leave=False):
            collector.begin_batch(batch["attention_mask"])
            body(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device), use_cache=False)
            collector.end_batch()
    return collector.stats
