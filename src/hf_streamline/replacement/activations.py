"""Block activations for replacement training, with RAM bounded however much training text is used.

- ``stream``: every batch runs the frozen model only up to the end of the block (a forward hook on the block's last
  layer stops it) and hands the block's input and output to the loss; nothing is kept between batches.
- ``cache``: one pass writes the block's input/output to disk shards (``shard_size`` samples each); training reads one
  shard at a time, shards in random order and samples shuffled within a shard.  For a decoder-layer replacement the
  arguments of the block's first layer (causal mask, rotary embeddings) are rebuilt per batch by a forward in which
  the layers before the block are skipped (embedding + mask only).

The model given to the trainer is :class:`BlockReplacementTask`: the frozen source model plus the trainable
replacement; its forward returns ``{"pred", "target", "token_mask"}`` for the ``mse`` objective.
"""

from __future__ import annotations

import math
import os
import random
import shutil
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch import nn
from torch.utils.data import Dataset, Sampler

from ..architecture import get_decoder_layers, layer_input_hidden, layer_output_hidden, skip_layers
from ..calibration import load_documents
from ..capture import base_forward_module
from ..errors import StreamlineError
from ..log import progress_bar
from ..options import ACTIVATION_MODES  # noqa: F401 - re-exported (hf_streamline.replacement)
from ..utils import model_device


class _StopForward(Exception):
    """Raised by a hook to end a forward pass early (the rest of the model is not needed)."""


def _strip_cache(value: Any) -> Any:
    from transformers.cache_utils import Cache

    return None if isinstance(value, Cache) else value


def _layer_context(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """The arguments of a decoder-layer call other than the hidden states, without KV cache."""
    rest = tuple(_strip_cache(a) for a in args[1:]) if args and isinstance(args[0], torch.Tensor) else tuple(
        _strip_cache(a) for a in args)
    kw = {k: _strip_cache(v) for k, v in kwargs.items() if k != "hidden_states"}
    if "use_cache" in kw:
        kw["use_cache"] = False
    for key in ("past_key_values", "past_key_value", "layer_past"):
        if key in kw:
            kw[key] = None
    return rest, kw


@torch.no_grad()
def capture_block(model: nn.Module, start: int, n: int, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  ) -> dict[str, Any]:
    """Run ``model`` up to the end of block ``start..start+n-1``; return its input ``x``, output ``y`` and the other
    arguments (``args``, ``kwargs``) its first layer received."""
    layers = get_decoder_layers(model)
    got: dict[str, Any] = {}

    def pre(module, args, kwargs):
        got["x"] = layer_input_hidden(args, kwargs).detach()
        got["args"], got["kwargs"] = _layer_context(args, kwargs)

    def post(module, args, output):
        got["y"] = layer_output_hidden(output).detach()
        got["returns"] = "tensor" if isinstance(output, torch.Tensor) else "tuple"
        raise _StopForward

    device = model_device(model)
    handles = [layers[start].register_forward_pre_hook(pre, with_kwargs=True), layers[start + n - 1].register_forward_hook(post)]
    try:
        base_forward_module(model)(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), use_cache=False)
    except _StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
    if "y" not in got:
        raise StreamlineError("could not capture the block's output: the decoder layers were not called")
    return got


@torch.no_grad()
def layer_context(model: nn.Module, start: int, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[tuple, dict]:
    """The arguments layer ``start`` receives at inference for these tokens (the layers before it are skipped)."""
    layers = get_decoder_layers(model)
    got: dict[str, Any] = {}

    def pre(module, args, kwargs):
        got["args"], got["kwargs"] = _layer_context(args, kwargs)
        raise _StopForward

    device = model_device(model)
    handle = layers[start].register_forward_pre_hook(pre, with_kwargs=True)
    try:
        with skip_layers(model, list(range(start))):
            base_forward_module(model)(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                                       use_cache=False)
    except _StopForward:
        pass
    finally:
        handle.remove()
    return got["args"], got["kwargs"]


# ---- training text --------------------------------------------------------------------------------------------------

class TokenWindows(Dataset):
    """Non-overlapping windows of ``seq_len`` tokens over the joined documents (EOS between documents)."""

    def __init__(self, input_ids: torch.Tensor, source: str = ""):
        self.input_ids = input_ids
        self.source = source

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids = self.input_ids[i]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}

    def take(self, n: int, seed: int = 0) -> "TokenWindows":
        """A seeded random ``n`` of the windows, kept in their order (all of them when ``n`` >= their number): what
        a run shorter than one epoch sees, so that nothing is prepared for windows it would never read."""
        if n >= len(self):
            return self
        keep = torch.randperm(len(self), generator=torch.Generator().manual_seed(int(seed)))[:n].sort().values
        return TokenWindows(self.input_ids[keep], self.source)

    def split(self, eval_windows: int) -> tuple["TokenWindows", "TokenWindows | None"]:
        if eval_windows <= 0:
            return self, None
        if eval_windows >= len(self):
            raise StreamlineError(f"training text: {len(self)} windows cannot spare {eval_windows} for evaluation")
        return (TokenWindows(self.input_ids[:-eval_windows], self.source),
                TokenWindows(self.input_ids[-eval_windows:], self.source))


def token_windows(tokenizer: Any, source: str | Sequence[str], seq_len: int = 256, max_windows: int | None = None,
                  text_column: str = "text", what: str = "source") -> TokenWindows:
    """Tokenize ``source`` (file, .jsonl, ``dataset:...`` or strings) into windows of ``seq_len`` tokens.  ``what``
    names the argument ``source`` was given as in errors (``train_data`` ...)."""
    if seq_len < 2:
        raise StreamlineError("must be >= 2", argument="seq_len", value=seq_len)
    docs = load_documents(source, text_column, what)
    sep = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    stream: list[int] = []
    for i, d in enumerate(docs):
        if i:
            stream.extend(sep)
        stream.extend(tokenizer(d, add_special_tokens=False).input_ids)
        if max_windows is not None and len(stream) >= max_windows * seq_len:
            break
    count = len(stream) // seq_len
    if max_windows is not None:
        count = min(count, max_windows)
    ids = torch.tensor(stream[:count * seq_len], dtype=torch.long).view(count, seq_len)
    name = source if isinstance(source, str) else f"<{len(docs)} strings>"
    return TokenWindows(ids, name)


# ---- disk cache ---------------------------------------------------------------------------------------------------

class ShardedActivations(Dataset):
    """Block inputs/outputs in disk shards; keeps at most one shard in memory."""

    def __init__(self, folder: str | os.PathLike, shard_sizes: list[int], cleanup: bool = False):
        self.folder = Path(folder)
        self.shard_sizes = list(shard_sizes)
        self.offsets = [0]
        for s in self.shard_sizes:
            self.offsets.append(self.offsets[-1] + s)
        self._loaded: tuple[int, dict[str, torch.Tensor]] | None = None
        self._cleanup = cleanup

    def __len__(self) -> int:
        return self.offsets[-1]

    def shard_path(self, k: int) -> Path:
        return self.folder / f"shard-{k:05d}.pt"

    def _shard(self, k: int) -> dict[str, torch.Tensor]:
        if self._loaded is None or self._loaded[0] != k:
            self._loaded = None  # drop the previous shard first: at most one in memory
            self._loaded = (k, torch.load(self.shard_path(k), map_location="cpu", weights_only=True))
        return self._loaded[1]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        k = max(j for j in range(len(self.shard_sizes)) if self.offsets[j] <= i)
        shard, r = self._shard(k), i - self.offsets[k]
        return {key: value[r] for key, value in shard.items()}

    def sampler(self, seed: int = 0) -> "ShardGroupedSampler":
        return ShardGroupedSampler(self, seed)

    def delete(self) -> None:
        self._loaded = None
        shutil.rmtree(self.folder, ignore_errors=True)

    def __del__(self) -> None:  # pragma: no cover - best effort
        if getattr(self, "_cleanup", False):
            shutil.rmtree(self.folder, ignore_errors=True)


class ShardGroupedSampler(Sampler[int]):
    """Shards in a random order, samples shuffled within each shard (one shard loaded at a time)."""

    def __init__(self, data: ShardedActivations, seed: int = 0):
        self.data, self.seed, self.epoch = data, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.data)

    def __iter__(self) -> Iterator[int]:
        rng = random.Random(self.seed * 1000003 + self.epoch)
        self.epoch += 1
        order = list(range(len(self.data.shard_sizes)))
        rng.shuffle(order)
        for k in order:
            idx = list(range(self.data.offsets[k], self.data.offsets[k + 1]))
            rng.shuffle(idx)
            yield from idx


@torch.no_grad()
def cache_block_activations(model: nn.Module, start: int, n: int, windows: TokenWindows, folder: str | os.PathLike | None = None,
                            batch_size: int = 8, shard_size: int = 64, dtype: torch.dtype | None = None,
                            progress: bool = True) -> ShardedActivations:
    """One pass over ``windows``: write the block's input/output hidden states to disk shards of ``shard_size``."""
    cleanup = folder is None
    if folder is None:
        from ..utils import make_work_dir

        folder = make_work_dir("activations")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shard_size = max(shard_size, 1)
    sizes: list[int] = []
    buf: dict[str, list[torch.Tensor]] = {"input_ids": [], "attention_mask": [], "hidden_in": [], "hidden_out": []}

    def flush() -> None:
        if not buf["input_ids"]:
            return
        shard = {k: torch.cat(v) for k, v in buf.items()}
        torch.save(shard, folder / f"shard-{len(sizes):05d}.pt")
        sizes.append(int(shard["input_ids"].shape[0]))
        for v in buf.values():
            v.clear()

    n_batches = math.ceil(len(windows) / batch_size)
    for b in progress_bar(range(n_batches), desc="caching block activations", disable=not progress, leave=False):
        rows = [windows[i] for i in range(b * batch_size, min(len(windows), (b + 1) * batch_size))]
        ids = torch.stack([r["input_ids"] for r in rows])
        mask = torch.stack([r["attention_mask"] for r in rows])
        got = capture_block(model, start, n, ids, mask)
        x, y = got["x"].to("cpu"), got["y"].to("cpu")
        if dtype is not None:
            x, y = x.to(dtype), y.to(dtype)
        buf["input_ids"].append(ids)
        buf["attention_mask"].append(mask)
        buf["hidden_in"].append(x)
        buf["hidden_out"].append(y)
        if sum(t.shape[0] for t in buf["input_ids"]) >= shard_size:
            flush()
    flush()
    return ShardedActivations(folder, sizes, cleanup=cleanup)


# ---- the trainer's model for the mse objective ----------------------------------------------------------------------

class BlockReplacementTask(nn.Module):
    """The frozen ``source`` model and the trainable ``replacement`` of its block ``start..start+n-1``.

    ``forward`` takes a batch of token windows (``stream``) or of cached activations (``hidden_in``/``hidden_out``)
    and returns the replacement's prediction, the block's output and the real-token mask.
    """

    def __init__(self, source: nn.Module, replacement: nn.Module, start: int, n: int, needs_context: bool):
        super().__init__()
        self.source = source
        self.replacement = replacement
        self.start, self.n, self.needs_context = int(start), int(n), bool(needs_context)
        for p in self.source.parameters():
            p.requires_grad_(False)
        self.source.eval()

    @property
    def streamline_signature(self) -> dict[str, Any]:
        """Identifies the task in trainer checkpoints (resuming with another block is refused)."""
        return {"task": "block_replacement", "start": self.start, "n": self.n,
                "replacement": type(self.replacement).__name__}

    def train(self, mode: bool = True) -> "BlockReplacementTask":
        super().train(mode)
        self.source.eval()  # the source model is frozen: no dropout
        return self

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, hidden_in: torch.Tensor | None = None,
                hidden_out: torch.Tensor | None = None, open_attention: bool = False, **_: Any) -> dict[str, torch.Tensor]:
        if hidden_in is None:
            got = capture_block(self.source, self.start, self.n, input_ids, attention_mask)
            x, y, args, kwargs = got["x"], got["y"], got["args"], got["kwargs"]
        else:
            ref = next(self.replacement.parameters())
            x, y = hidden_in.to(ref.device, ref.dtype), hidden_out.to(ref.device)
            args, kwargs = layer_context(self.source, self.start, input_ids, attention_mask) if self.needs_context else ((), {})
        if not self.needs_context:
            args, kwargs = (), {}
        elif open_attention:
            from ..training.objectives.mse import visible_everywhere

            args, kwargs = visible_everywhere(args, kwargs, x.shape[0], x.shape[1], x.device)
        pred = layer_output_hidden(self.replacement(x, *args, **kwargs))
        return {"pred": pred, "target": y, "token_mask": attention_mask}
