"""How the window search compares the merged model's final output with the original's (one class per choice).

- ``output_cosine`` (the SLM paper, and its released code): per calibration sequence, the cosine between the
  flattened final outputs (tokens x hidden, padding excluded) of the merged and the original model, averaged over
  sequences.  The final output is the body's ``last_hidden_state`` (after the final norm), the tensor the released
  code reads as ``output_hidden_states[-1]``.
- ``cka``: linear CKA with the unbiased HSIC estimator between the two final outputs, tokens as samples (minibatch
  CKA over calibration batches; see :mod:`hf_streamline.merging.cka`).
"""

from __future__ import annotations

import torch

from ..registry import Registry
from .cka import CKAAccumulator


class OutputSimilarity:
    name = ""

    def add(self, out: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor, batch_index: int) -> None:
        raise NotImplementedError  # pragma: no cover

    def value(self) -> float:
        raise NotImplementedError  # pragma: no cover


class OutputCosine(OutputSimilarity):
    name = "output_cosine"

    def __init__(self, **_: object):
        self.total, self.count = 0.0, 0

    def add(self, out, ref, mask, batch_index):
        m = mask.to(out.device).bool()
        for i in range(out.shape[0]):
            o = out[i][m[i]].double().flatten()
            r = ref[i][m[i]].to(out.device).double().flatten()
            den = o.norm() * r.norm()
            self.total += float((o @ r) / den) if float(den) > 0 else 0.0
            self.count += 1

    def value(self):
        return self.total / max(self.count, 1)


class OutputCKA(OutputSimilarity):
    name = "cka"

    def __init__(self, max_gram_tokens: int = 1024, **_: object):
        self.acc = CKAAccumulator("linear", max_gram_tokens=max_gram_tokens)

    def add(self, out, ref, mask, batch_index):
        m = mask.to(out.device).bool()
        self.acc.add(out[m], ref.to(out.device)[m], seed=batch_index)

    def value(self):
        return self.acc.value()


OUTPUT_SIMILARITIES = Registry("--similarity", (OutputCosine, OutputCKA))


def get_output_similarity(name: str, **kwargs: object) -> OutputSimilarity:
    return OUTPUT_SIMILARITIES.create(name, **kwargs)
