"""``hf-streamline demo``: the whole pipeline on the bundled SmolLM2 in one command.

score → prune 25% with block influence (the best one-shot method measured on this model) → short healing →
evaluate (perplexity + a few hundred task items, against the dense model) → model card, all in ``streamline-demo/``.
It builds a recipe and runs it, so ``streamline-demo/streamline_recipe.yaml`` reproduces the result.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

DEMO_TASKS = ("arc_easy", "piqa", "boolq")
BUNDLED = "bundled:"  # the package's own data (hf_streamline/data): the demo needs nothing beside the install


def data_root(explicit: str | None = None) -> str:
    """``bundled:`` (the data installed with the package) or a folder of the same layout (train/, text/, eval/)."""
    if explicit is None:
        return BUNDLED
    from ..errors import StreamlineError

    root = Path(explicit)
    missing = [p for p in ("train/wikipedia_30_articles.txt", "train/c4_300_docs.jsonl", "text/wikitext2_test.raw",
                           "eval") if not (root / p).exists()]
    if missing:
        raise StreamlineError(f"--data-dir {explicit!r} lacks {', '.join(missing)}; leave --data-dir out to use the "
                              "data bundled with hf-streamline")
    return str(root.resolve()) + "/"


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help="prune, heal, evaluate and card the bundled SmolLM2 in one command (~15 min on 2 CPUs)")
    p.add_argument("--model", default=None, help="model to use instead of the bundled SmolLM2-135M-Instruct")
    p.add_argument("--output", default="streamline-demo", help="output folder (default streamline-demo)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--data-dir", default=None,
                   help="folder with train/, text/ and eval/ laid out as the bundled data (default: the data bundled "
                        "with hf-streamline, so the demo runs offline)")
    p.add_argument("--ratio", type=float, default=0.25, help="fraction of layers to remove (default 0.25)")
    p.add_argument("--samples", type=int, default=32, help="calibration sequences (default 32)")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per sequence (default 256)")
    p.add_argument("--heal-steps", type=int, default=60, help="healing optimizer steps (default 60; 0 = no healing)")
    p.add_argument("--limit", type=int, default=100, help="items per task (default 100, three tasks)")
    p.add_argument("--ppl-tokens", type=int, default=16384, help="WikiText-2 tokens for perplexity (default 16384)")
    p.add_argument("--no-speed", action="store_true", help="skip the prefill/decode timing in the report")
    p.add_argument("--validate-only", action="store_true", help="print the recipe the demo would run and exit")
    p.set_defaults(func=run)


def demo_recipe(args: argparse.Namespace, data: str) -> dict:
    train = f"{data}train/wikipedia_30_articles.txt"
    wiki = f"{data}text/wikitext2_test.raw"
    recipe = {
        "model": args.model,
        "dtype": "float32",
        "calibration": {"source": train, "samples": args.samples, "seq_len": args.seq_len, "seed": 0},
        "method": "remove",
        "remove": {"method": "block_influence", "ratio": args.ratio, "eval_text": wiki, "eval_tokens": args.ppl_tokens},
        "evaluate": {"ppl": [f"wikitext2={wiki}"], "tasks": list(DEMO_TASKS), "task_dir": f"{data}eval",
                     "limit": args.limit, "ppl_max_tokens": args.ppl_tokens},
        "output": args.output,
        "overwrite": bool(args.overwrite),
    }
    if args.no_speed:
        recipe["evaluate"]["no_speed"] = True
    if args.heal_steps > 0:
        # train-shared keeps lm_head tied to the input embedding: untying would add a 28M-parameter copy and the
        # "pruned" model would be no smaller than the dense one
        recipe["heal"] = {"method": "partial", "last_k": 1, "tied_policy": "train-shared",
                          "data": f"{data}train/c4_300_docs.jsonl", "max_steps": args.heal_steps}
    return recipe


def run(args: argparse.Namespace) -> int:
    from ..recipes import run_recipe, validate_recipe
    from ..utils import check_output_dir

    data = data_root(args.data_dir)
    recipe = validate_recipe(demo_recipe(args, data), source="demo")
    if args.validate_only:
        print(recipe.to_yaml())
        return 0
    check_output_dir(args.output, args.overwrite)
    start = time.time()
    out = run_recipe(recipe)
    minutes = (time.time() - start) / 60
    print()
    print(f"demo finished in {minutes:.1f} min. Everything is in {out}/:")
    for name, what in (("config.json / model.safetensors", "the pruned (and healed) model, a plain checkpoint"),
                       ("streamline_plan.json", "what was removed and why (scores, calibration, healing)"),
                       ("streamline_recipe.yaml", "the recipe: `hf-streamline run` it to reproduce this folder"),
                       ("report/report.md", "evaluation against the dense model (report.json, PNG charts beside it)"),
                       ("README.md", "the model card")):
        print(f"  {name:<34} {what}")
    print(f"\nPublish it with:\n  hf-streamline push {out} --repo-id YOUR_NAME/{Path(out).name} --private")
    return 0
