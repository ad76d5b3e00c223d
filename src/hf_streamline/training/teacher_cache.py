"""A dense teacher's top-K logits cached on disk, for distillation without the teacher in memory ("sparse KD").

One no-grad pass of the teacher over the examples (:func:`cache_teacher_topk`) writes, for every real token, its K
largest logits and their vocabulary ids into shards; the teacher can then be freed, and training reads back only the
rows of each batch's examples (:class:`TopKTeacherCache`, passed to ``StreamlineTrainer`` as its ``teacher``).

- Keyed by example index, so any sampler order works: the datasets the trainer sees are wrapped in
  :class:`IndexedExamples` (item ``i`` gains ``example_index = offset + i``) and the collator in
  :func:`indexed_collator`; the ``lm`` objective looks the batch's indices up.
- Shards (``shard-00000.safetensors``, ...) hold runs of consecutive example indices.  Per shard: ``values``
  (float32, tokens x K, the raw logits before any temperature), ``indices`` (int32, tokens x K), the real tokens of
  its examples concatenated, and ``offsets`` (int64, where each example starts).  A shard holds about
  ``SHARD_BYTES`` of values + indices.
- The reader keeps at most ``max_resident`` shards (default 2) open, memory-mapped, the least recently used closed
  first, and copies out only the rows it is asked for: RAM does not grow with the number of cached examples.
- Frozen prefix (``hidden_layer`` = p): the same pass also keeps the teacher's input to decoder layer p for every
  real token (``hidden``, tokens x hidden size, in the teacher's dtype).  When the student's layers below p are the
  teacher's own (a pruned model whose first removed layer is at or above p) and frozen, that *is* the student's
  input to its layer p: training then skips the prefix (:func:`hf_streamline.training.objectives.lm` injects it),
  one forward of p layers less per step at the price of hidden-size floats per token on disk.
"""

from __future__ import annotations

import bisect
import contextlib
import math
import os
import shutil
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch.utils.data import Dataset

from ..errors import StreamlineError

SHARD_BYTES = 64 * 2**20  # values (float32) + indices (int32) per shard
EXAMPLE_INDEX = "example_index"
SHARD_PATTERN = "shard-{:05d}.safetensors"
KD_CACHE_FOLDER = "kd_topk_cache"


class IndexedExamples(Dataset):
    """``base[i]`` plus ``example_index = offset + i``: the key of the example's cached teacher logits."""

    def __init__(self, base: Dataset, offset: int = 0):
        self.base, self.offset = base, int(offset)

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {**self.base[i], EXAMPLE_INDEX: self.offset + int(i)}


def indexed_collator(collate: Callable[[Sequence[dict[str, Any]]], dict[str, torch.Tensor]]):
    """``collate`` for items of :class:`IndexedExamples`: the batch gains ``example_index`` (a long tensor)."""

    def wrapped(items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = collate([{k: v for k, v in it.items() if k != EXAMPLE_INDEX} for it in items])
        batch[EXAMPLE_INDEX] = torch.tensor([int(it[EXAMPLE_INDEX]) for it in items], dtype=torch.long)
        return batch

    return wrapped


class TopKTeacherCache:
    """Reader of the shards written by :func:`cache_teacher_topk` (see the module docstring).

    ``lookup(example_index, attention_mask)`` returns the batch's ``(values, indices)``, ``(B, W, K)``, at the
    positions where ``attention_mask`` is 1 (zeros elsewhere).  ``loads`` counts shard openings and
    ``max_resident_seen`` the most shards open at once.
    """

    def __init__(self, folder: str | os.PathLike, k: int, shards: Sequence[tuple[int, int]], max_resident: int = 2,
                 hidden_layer: int | None = None):
        if max_resident < 1:
            raise StreamlineError(f"max_resident {max_resident} must be >= 1")
        self.folder, self.k, self.max_resident = Path(folder), int(k), int(max_resident)
        # the decoder layer whose (teacher) input the shards hold; None: no prefix kept, or not to be used
        self.hidden_layer = None if hidden_layer is None else int(hidden_layer)
        self.firsts = [int(f) for f, _ in shards]
        self.counts = [int(c) for _, c in shards]
        self._lru: OrderedDict[int, tuple[Any, torch.Tensor]] = OrderedDict()
        self.loads = 0
        self.max_resident_seen = 0

    def __len__(self) -> int:
        return sum(self.counts)

    @property
    def num_shards(self) -> int:
        return len(self.counts)

    def shard_path(self, j: int) -> Path:
        return self.folder / SHARD_PATTERN.format(j)

    @property
    def nbytes(self) -> int:
        return sum(self.shard_path(j).stat().st_size for j in range(self.num_shards) if self.shard_path(j).is_file())

    def _shard(self, j: int) -> tuple[Any, torch.Tensor]:
        if j in self._lru:
            self._lru.move_to_end(j)
            return self._lru[j]
        while len(self._lru) >= self.max_resident:
            self._lru.popitem(last=False)  # close the least recently used shard first
        from safetensors import safe_open

        path = self.shard_path(j)
        if not path.is_file():
            raise StreamlineError(f"the teacher's top-k cache shard {str(path)!r} is missing (was the work folder "
                                  "removed during training?)")
        handle = safe_open(str(path), framework="pt")
        entry = (handle, handle.get_tensor("offsets"))
        self._lru[j] = entry
        self.loads += 1
        self.max_resident_seen = max(self.max_resident_seen, len(self._lru))
        return entry

    def _locate(self, i: int) -> tuple[Any, int, int]:
        """The open shard of example ``i`` and the rows ``a:b`` of its tokens there."""
        j = bisect.bisect_right(self.firsts, int(i)) - 1
        if j < 0 or int(i) >= self.firsts[j] + self.counts[j]:
            raise StreamlineError(f"example {i} is not in the teacher's top-k cache ({len(self)} examples)")
        handle, offsets = self._shard(j)
        r = int(i) - self.firsts[j]
        return handle, int(offsets[r]), int(offsets[r + 1])

    def example(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The cached ``(values, indices)`` of example ``i``: ``(tokens, K)`` each."""
        handle, a, b = self._locate(i)
        return handle.get_slice("values")[a:b], handle.get_slice("indices")[a:b]

    def _rows(self, example_index: torch.Tensor, attention_mask: torch.Tensor | None,
              width: int | None) -> tuple[list[int], torch.Tensor]:
        ids = [int(x) for x in example_index.reshape(-1).tolist()]
        if attention_mask is None:
            if width is None:
                raise StreamlineError("TopKTeacherCache.lookup needs the attention mask or the batch width")
            real = torch.ones((len(ids), int(width)), dtype=torch.bool)
        else:
            real = attention_mask.detach().to("cpu").bool()
        return ids, real

    def hidden(self, example_index: torch.Tensor, attention_mask: torch.Tensor | None,
               width: int | None = None) -> torch.Tensor:
        """The batch's cached input to decoder layer :attr:`hidden_layer`, ``(B, W, hidden)``, at the positions where
        ``attention_mask`` is 1 (zeros elsewhere: padding, which attends to nothing and is not scored)."""
        if self.hidden_layer is None:
            raise StreamlineError("this teacher cache holds no layer inputs (cache_teacher_topk(hidden_layer=...))")
        ids, real = self._rows(example_index, attention_mask, width)
        out = None
        for b in sorted(range(len(ids)), key=lambda b: ids[b]):  # each shard opened once per batch
            handle, lo, hi = self._locate(ids[b])
            h = handle.get_slice("hidden")[lo:hi]
            if h.shape[0] != int(real[b].sum()):
                raise StreamlineError(f"example {ids[b]} has {int(real[b].sum())} tokens in this batch but "
                                      f"{h.shape[0]} in the teacher's cache: the cache was written for other data")
            if out is None:
                out = h.new_zeros((len(ids), real.shape[1], h.shape[-1]))
            out[b, real[b]] = h
        return out

    def lookup(self, example_index: torch.Tensor, attention_mask: torch.Tensor | None,
               width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        ids, real = self._rows(example_index, attention_mask, width)
        values = torch.zeros((len(ids), real.shape[1], self.k), dtype=torch.float32)
        indices = torch.zeros((len(ids), real.shape[1], self.k), dtype=torch.long)
        for b in sorted(range(len(ids)), key=lambda b: ids[b]):  # each shard opened once per batch
            v, ix = self.example(ids[b])
            n = int(real[b].sum())
            if v.shape[0] != n:
                raise StreamlineError(f"example {ids[b]} has {n} tokens in this batch but {v.shape[0]} in the teacher's "
                                      "top-k cache: the cache was written for other data")
            values[b, real[b]] = v.float()
            indices[b, real[b]] = ix.long()
        return values, indices

    def close(self) -> None:
        self._lru.clear()

    def delete(self) -> None:
        """Close every shard and remove the cache folder."""
        self.close()
        shutil.rmtree(self.folder, ignore_errors=True)


@torch.no_grad()
def cache_teacher_topk(teacher: torch.nn.Module, datasets: Sequence[Dataset | None],
                       collate: Callable[[Sequence[dict[str, Any]]], dict[str, torch.Tensor]],
                       folder: str | os.PathLike, k: int, batch_size: int = 8, progress: bool = True,
                       shard_bytes: int | None = None, max_resident: int = 2,
                       hidden_layer: int | None = None) -> TopKTeacherCache:
    """One no-grad pass of ``teacher`` over the examples of ``datasets`` (``None`` entries skipped), in order, with
    indices continuing from one to the next (the second's first example is ``len(first)``: wrap them with
    :class:`IndexedExamples` at those offsets).  Batches of ``batch_size`` consecutive examples are collated with
    ``collate`` and run through the teacher with the keys the ``lm`` objective gives it (``input_ids``,
    ``attention_mask``, ``position_ids``); the top ``k`` logits (float32) and their ids are kept for the real tokens
    (``attention_mask`` 1).  ``hidden_layer`` = p: also keep the teacher's input to its decoder layer p for those
    tokens (the frozen prefix, see the module docstring).  ``folder`` is emptied first.  Returns the reader."""
    from safetensors.torch import save_file
    from ..log import progress_bar

    if k < 1:
        raise StreamlineError("must be >= 1", argument="k", value=k)
    folder = Path(folder)
    shutil.rmtree(folder, ignore_errors=True)  # a killed run's leftovers never mix with this cache
    folder.mkdir(parents=True)
    shard_bytes = int(shard_bytes if shard_bytes is not None else SHARD_BYTES)
    teacher.eval()
    device = next((p.device for p in teacher.parameters()), torch.device("cpu"))
    captured: dict[str, torch.Tensor] = {}
    hooks: Any = contextlib.nullcontext()
    per_token = k * 8  # float32 value + int32 index
    if hidden_layer is not None:
        from ..architecture import num_layers
        from ..capture import LayerHooks

        L, p = num_layers(teacher), int(hidden_layer)
        if not 0 < p < L:
            raise StreamlineError(f"hidden_layer {hidden_layer}: the teacher has decoder layers 0..{L - 1}; "
                                  "give the index of the first layer whose input is kept (>= 1)")
        hooks = LayerHooks(teacher, on_input=lambda _i, h: captured.__setitem__("hidden", h), layers=[p])
        param = next(teacher.parameters())
        per_token += int(teacher.config.get_text_config().hidden_size) * param.element_size()
    tokens_per_shard = max(1, shard_bytes // per_token)
    shards: list[tuple[int, int]] = []
    buf_v: list[torch.Tensor] = []
    buf_i: list[torch.Tensor] = []
    buf_h: list[torch.Tensor] = []
    buf_first, buf_tokens = 0, 0

    def flush() -> None:
        nonlocal buf_first, buf_tokens
        if not buf_v:
            return
        lengths = torch.tensor([0] + [v.shape[0] for v in buf_v], dtype=torch.long)
        tensors = {"values": torch.cat(buf_v).contiguous(), "indices": torch.cat(buf_i).contiguous(),
                   "offsets": torch.cumsum(lengths, 0)}
        if buf_h:
            tensors["hidden"] = torch.cat(buf_h).contiguous()
        save_file(tensors, str(folder / SHARD_PATTERN.format(len(shards))),
                  metadata={"format": "pt", "top_k": str(k), "first_example": str(buf_first)})
        shards.append((buf_first, len(buf_v)))
        buf_first += len(buf_v)
        buf_tokens = 0
        buf_v.clear()
        buf_i.clear()
        buf_h.clear()

    sets = [d for d in datasets if d is not None]
    total = sum(math.ceil(len(d) / batch_size) for d in sets)  # type: ignore[arg-type]
    bar = progress_bar(total=total, desc=f"caching the teacher's top-{k} logits", disable=not progress, leave=False)
    try:
        with hooks:
            for data in sets:
                n = len(data)  # type: ignore[arg-type]
                for start in range(0, n, batch_size):
                    batch = collate([data[i] for i in range(start, min(n, start + batch_size))])
                    fwd = {key: batch[key].to(device) for key in ("input_ids", "attention_mask", "position_ids")
                           if key in batch}
                    logits = teacher(**fwd, use_cache=False).logits
                    hidden = captured.pop("hidden", None)
                    if hidden_layer is not None and hidden is None:
                        raise StreamlineError(f"the teacher's decoder layer {hidden_layer} did not run: its input "
                                              "cannot be kept (a model whose forward skips layers?)")
                    if k > logits.shape[-1]:
                        raise StreamlineError(f"larger than the teacher's vocabulary ({logits.shape[-1]} tokens)",
                                              argument="k", value=k)
                    top = logits.float().topk(k, dim=-1)
                    vals, ids = top.values.to("cpu"), top.indices.to("cpu", torch.int32)
                    hidden = hidden.to("cpu") if hidden is not None else None
                    del logits, top
                    mask = batch.get("attention_mask")
                    for b in range(vals.shape[0]):
                        real = mask[b].bool() if mask is not None else slice(None)
                        buf_v.append(vals[b][real].clone())
                        buf_i.append(ids[b][real].clone())
                        if hidden is not None:
                            buf_h.append(hidden[b][real].clone())
                        buf_tokens += int(buf_v[-1].shape[0])
                        if buf_tokens >= tokens_per_shard:
                            flush()
                    bar.update(1)
        flush()
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    finally:
        bar.close()
    return TopKTeacherCache(folder, k, shards, max_resident=max_resident, hidden_layer=hidden_layer)


def cache_teacher_in(workdir: str | os.PathLike, teacher: torch.nn.Module, datasets: Sequence[Dataset | None],
                     collate: Callable[[Sequence[dict[str, Any]]], dict[str, torch.Tensor]], k: int, *,
                     batch_size: int, progress: bool = True,
                     hidden_layer: int | None = None) -> tuple[TopKTeacherCache, dict[str, Any]]:
    """:func:`cache_teacher_topk` into ``workdir/kd_topk_cache`` (one folder per process of a distributed run), timed:
    returns the reader and ``{top_k, examples, shards, bytes, wall_time_s}``."""
    import time

    rank = os.environ.get("RANK")
    folder = Path(workdir) / (KD_CACHE_FOLDER + (f"-rank{rank}" if rank not in (None, "", "0") else ""))
    t0 = time.perf_counter()
    cache = cache_teacher_topk(teacher, datasets, collate, folder, k, batch_size=batch_size, progress=progress,
                               hidden_layer=hidden_layer)
    return cache, {"top_k": k, "examples": len(cache), "shards": cache.num_shards, "bytes": cache.nbytes,
                   "wall_time_s": round(time.perf_counter() - t0, 2)}
