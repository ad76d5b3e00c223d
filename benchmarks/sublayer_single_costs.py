"""Exploration behind a note of benchmarks/sublayer_results.md (issue 13, acceptance 1): does *any* choice of 8
attention sub-blocks of SmolLM2-135M-Instruct beat removing 3 whole layers?

1. the perplexity cost of removing each attention sub-block alone (Wikipedia calibration text, 8,192 tokens,
   1024-token windows), and the 8 of smallest cost removed together (WikiText-2 test, 16,384 tokens);
2. the cosine set, the KL search's set and the 3 block-influence layers of sublayer_results.md at 256- and
   1024-token windows (does context length change their order?).

    .venv/bin/python benchmarks/sublayer_single_costs.py      # about 20 min on 2 cores; prints, writes nothing
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import torch

SHARED = Path(os.environ.get("HF_STREAMLINE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def main() -> None:
    torch.set_num_threads(2)
    from hf_streamline import evaluate_perplexity, load_model_and_tokenizer
    from hf_streamline.loading import bundled_model_dir
    from hf_streamline.sublayers import Unit, remove_units

    calib, test = SHARED / "train" / "wikipedia_30_articles.txt", SHARED / "text" / "wikitext2_test.raw"
    model, tok = load_model_and_tokenizer(str(bundled_model_dir()), dtype="float32")
    ppl = lambda m, text, n, sl=1024: evaluate_perplexity(m, tok, str(text), seq_len=sl, max_tokens=n,  # noqa: E731
                                                          batch_size=2, progress=False)
    print("dense, calibration:", round(ppl(model, calib, 8192), 3), flush=True)
    cost = {}
    for i in range(len(model.model.layers)):
        cost[i] = ppl(remove_units(copy.deepcopy(model), [Unit(i, "attention")]), calib, 8192)
        print(f"attention {i} alone: {cost[i]:.3f}", flush=True)
    best = sorted(sorted(cost, key=cost.get)[:8])
    sets = {f"8 smallest single costs {best}": [Unit(i, "attention") for i in best],
            "cosine (5,7,8,9,25,26,28,29)": [Unit(i, "attention") for i in (5, 7, 8, 9, 25, 26, 28, 29)],
            "KL search (5,7,12,17,22,25,26,29)": [Unit(i, "attention") for i in (5, 7, 12, 17, 22, 25, 26, 29)],
            "3 layers, block influence (13,14,17)": [Unit(i) for i in (13, 14, 17)]}
    for name, units in sets.items():
        pruned = remove_units(copy.deepcopy(model), units)
        print(name, {sl: round(ppl(pruned, test, 16384, sl), 2) for sl in (256, 1024)}, flush=True)


if __name__ == "__main__":
    main()
