"""The ``demo`` workflow (``hf-streamline demo``; from Python: ``hf_streamline.cli.call(...Arguments(...))`` or
``workflows.demo.run(arguments)``). The whole pipeline on the bundled SmolLM2 in one command.

It runs the recommended recipe (``bundled:recipes/recommended_25.yaml``, = ``examples/recommended_25.yaml``: the best
25% recipe of the quality benchmark) with smaller budgets, and says which: layer search by measured KL → remove 25% →
distillation from the dense model → evaluate (perplexity + a few hundred task items, against the dense model) → model
card, all in ``streamline-demo/``. ``streamline-demo/streamline_recipe.yaml`` reproduces the result.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

from .common import Say, note


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
        raise StreamlineError(f"lacks {', '.join(missing)}; leave {{data_dir}} out to use the "
                              "data bundled with hf-streamline", argument="data_dir", value=explicit,
                              mentions=("data_dir",))
    return str(root.resolve()) + "/"


RECOMMENDED = "bundled:recipes/recommended_25.yaml"


def _rebase(value, data: str):
    """The recipe's ``bundled:`` data names, under ``--data-dir`` when one is given."""
    if isinstance(value, str) and data != BUNDLED and value.startswith(BUNDLED) and "recipes/" not in value:
        return data + value[len(BUNDLED):]
    if isinstance(value, list):
        return [_rebase(v, data) for v in value]
    if isinstance(value, str) and data != BUNDLED and "=" + BUNDLED in value:  # NAME=bundled:FILE
        name, spec = value.split("=", 1)
        return f"{name}={_rebase(spec, data)}"
    return value


def demo_recipe(args: Any, data: str) -> tuple[dict, list[str]]:
    """The recommended recipe with the demo's budgets, and a line for each budget it scales down."""
    import copy

    from ..recipes import load_recipe

    recipe = copy.deepcopy(load_recipe(RECOMMENDED).data)
    for section in ("calibration", "remove", "heal", "evaluate"):
        if isinstance(recipe.get(section), dict):
            recipe[section] = {k: _rebase(v, data) for k, v in recipe[section].items()}
    full_samples = recipe["calibration"]["samples"]
    recipe.update(model=args.model, output=args.output, overwrite=bool(args.overwrite))
    samples = args.samples or full_samples
    recipe["calibration"].update(samples=samples, seq_len=args.seq_len)
    recipe["remove"]["ratio"] = args.ratio
    scaled = []
    if samples < full_samples:
        scaled.append(f"the layer search measures its KL on {samples} calibration sequences (the recipe: "
                      f"{full_samples}); the layers it picks may differ")
    if recipe["remove"].get("generations"):
        scaled.append(f"the layer search stops after its greedy pass (the recipe adds "
                      f"{recipe['remove']['generations']} generations of evolution)")
        recipe["remove"]["generations"] = 0
    heal = recipe["heal"]
    if args.heal_steps > 0:
        tokens = heal.pop("budget_tokens")
        heal["max_steps"] = args.heal_steps
        # the teacher's logits are cached for the windows the steps use, not for the whole training set
        heal["max_examples"] = args.heal_steps * heal.get("batch_size", 4)
        scaled.append(f"healing: {args.heal_steps} steps of {heal.get('batch_size', 4)} x {heal.get('seq_len', 256)} "
                      f"tokens (the recipe: {tokens:,} tokens, 30 CPU-minutes)")
    else:
        del recipe["heal"]
        scaled.append("no healing (--heal-steps 0)")
    ev = recipe["evaluate"]
    ev.update(tasks=list(DEMO_TASKS), limit=args.limit, ppl_tokens=args.ppl_tokens, ppl_seq_len=256)
    if args.no_speed:
        ev["no_speed"] = True
    scaled.append(f"evaluation: {args.limit} items of {', '.join(DEMO_TASKS)}, perplexity on {args.ppl_tokens:,} "
                  "tokens in 256-token windows (the recipe: 8 tasks, 1024-token windows over 32,768 tokens)")
    return recipe, scaled


def run(args: Any, say: Say = note) -> int:
    args = copy.copy(args)  # the caller's arguments stay as given (defaults are filled in a copy)
    from ..recipes import run_recipe, validate_recipe
    from ..utils import check_output_dir

    data = data_root(args.data_dir)
    raw, scaled = demo_recipe(args, data)
    recipe = validate_recipe(raw, source="demo")
    if args.validate_only:
        say(recipe.to_yaml())
        return 0
    check_output_dir(args.output, args.overwrite)
    say(f"demo: the recommended recipe ({RECOMMENDED}, examples/recommended_25.yaml), scaled down to about 15 "
          "minutes on 2 CPU cores:")
    for line in scaled:
        say(f"  - {line}")
    say(f"  run the recipe itself with: hf-streamline run {RECOMMENDED} --output DIR")
    start = time.time()
    out = run_recipe(recipe)
    minutes = (time.time() - start) / 60
    say("")
    say(f"demo finished in {minutes:.1f} min. Everything is in {out}/:")
    for name, what in (("config.json / model.safetensors", "the pruned (and healed) model, a plain checkpoint"),
                       ("streamline_plan.json", "what was removed and why (scores, calibration, healing)"),
                       ("streamline_recipe.yaml", "the recipe: `hf-streamline run` it to reproduce this folder"),
                       ("report/report.md", "evaluation against the dense model (report.json, PNG charts beside it)"),
                       ("README.md", "the model card")):
        say(f"  {name:<34} {what}")
    say(f"\nPublish it with:\n  hf-streamline push {out} --repo-id YOUR_NAME/{Path(out).name} --private")
    return 0
