"""The quality benchmark (issue 12): every method of hf-streamline on one harness, at several pruning ratios and
recovery budgets, against the dense model.

The methods are not listed here: they come from the library's registries, so a new metric, fitness, replacement
kind, training objective, merge rule or healing method joins the grid with no edit of this file:

- ``remove:<metric>`` for every scorer (``--block`` where the metric's paper removes a contiguous block,
  ``Scorer.paper_selection``);
- ``search:<fitness>`` for every fitness of the unit search (greedy + a short evolution);
- ``replace:<kind>`` / ``replace:<kind>:<objective>`` for every replacement kind (trained kinds once per training
  objective, and ``lm_kd``: the LM loss plus KL to the dense model's top-64 logits, cached in one pass, the
  authors' current choice);
- ``merge:<rule>`` for every merge rule under the library's default search, and ``merge:<rule>:paper`` for SLM's own
  search (cosine of flattened outputs, cumulative) where the rule is the authors' (``top_weights``);
- healing (budget > 0): ``<cell>+<heal>`` for the healing recipes of ``HEALS`` (partial:k, LoRA, KD ...), each built
  from ``HEALING_METHODS``.

A cell is ``<method>@<layers removed>`` (or ``...+<heal>``). Every cell is produced by one ``hf-streamline`` command in
a fresh process (recorded: command, wall time, peak RSS, load average), and evaluated by ``hf-streamline evaluate``
against the dense model (recorded too). Stages write into one JSON file, so cells can be run in separate invocations:

    python benchmarks/quality.py --stage build --only 'remove:*,merge:*' --ks 4,8,11
    python benchmarks/quality.py --stage eval                 # cheap columns of every built cell
    python benchmarks/quality.py --stage acc --only 'search:kl@8,remove:block_influence@8'
    python benchmarks/quality.py --stage heal --only 'search:kl@8' --heal kd_partial3 --budget-tokens 270000
    python benchmarks/quality.py --stage speed                # prefill / decode against dense, one model per ratio
    python benchmarks/quality.py --stage report               # quality_results.md + .png

``--preset smoke`` runs the same stages on the stories260K test model with tiny numbers (the test suite does this);
``--results PREFIX`` writes PREFIX.json / .md / .png elsewhere.

Columns: WikiText-2 and PTB perplexity (1024-token windows, first 32,768 tokens of each test set), KL(dense || model)
per token and top-1 agreement on held-out text (WikiText-2 validation), the 8-task zero-shot mean (``acc_norm`` where
the task defines it, else ``acc``; 500 items per task or the full set), % of dense for each, parameters, prefill /
decode speed-up, and the wall time and peak RSS of the command that built the cell. Calibration (Wikipedia articles)
and training text (C4 documents) are disjoint from every evaluation text.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from bench_common import loadavg, machine, versions

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SHARED = Path(os.environ.get("HF_STREAMLINE_SHARED_DATA", ROOT.parent / "shared" / "data"))
HF = [sys.executable, "-m", "hf_streamline.cli"]
TASKS = ("arc_easy", "arc_challenge", "piqa", "boolq", "winogrande", "openbookqa", "copa", "lambada_openai")
# the prompt version of an accuracy record: "lm-eval" (stock templates, issue 14); records without the key were
# measured with hf-streamline 0.1's prompts and are kept under "acc_v01" when a cell is re-measured
ACC_PROMPTS = "lm-eval"


@dataclass
class Preset:
    """Everything a run of the grid depends on (recorded in the JSON)."""

    model: str | None                     # None: the bundled SmolLM2-135M-Instruct
    ks: tuple[int, ...]                   # layers removed
    calibration: str
    samples: int
    seq_len: int
    search_samples: int                   # calibration sequences for the search fitness / SLM trials
    ppl: dict[str, str]                   # name -> text
    ppl_seq_len: int
    ppl_max_tokens: int
    agreement_text: str
    agreement_tokens: int
    task_dir: str
    limit: int
    train_data: str                       # replacement training and healing text
    replace_steps: int
    heal_seq_len: int
    search_generations: int
    search_offspring: int
    tasks: tuple[str, ...] = TASKS
    batch_size: int = 8


def _shared_or_bundled(shared: str, bundled: str) -> str:
    return str(SHARED / shared) if (SHARED / shared).exists() else bundled


def preset(name: str) -> Preset:
    if name == "smoke":
        stories = ROOT / "tests" / "fixtures" / "models" / "stories260K"
        text = "bundled:text/stories260k_samples.txt"
        return Preset(model=str(stories), ks=(1,), calibration=text, samples=4, seq_len=64, search_samples=2,
                      ppl={"stories": text}, ppl_seq_len=128, ppl_max_tokens=1024, agreement_text=text,
                      agreement_tokens=512, task_dir="bundled:eval", limit=4, train_data=text, replace_steps=2,
                      heal_seq_len=64, search_generations=1, search_offspring=2, tasks=("copa", "piqa"),
                      batch_size=4)
    ptb = SHARED / "text" / "ptb.test.txt"  # LDC-derived: never vendored, read from ../shared/data when present
    return Preset(model=None, ks=(4, 8, 11), calibration="bundled:train/wikipedia_30_articles.txt", samples=32,
                  seq_len=256, search_samples=8,
                  ppl={"wikitext2": "bundled:text/wikitext2_test.raw", **({"ptb": str(ptb)} if ptb.exists() else {})},
                  ppl_seq_len=1024, ppl_max_tokens=32768,
                  agreement_text=_shared_or_bundled("train/wikitext2_valid_tokenized.txt",
                                                    "bundled:text/wikitext2_test.raw"),
                  agreement_tokens=8192, task_dir=_shared_or_bundled("eval", "bundled:eval"), limit=500,
                  train_data="bundled:train/c4_300_docs.jsonl", replace_steps=100, heal_seq_len=256,
                  search_generations=5, search_offspring=4)


# --------------------------------------------------------------------------------------------------------- methods

@dataclass
class Method:
    name: str
    family: str
    argv: Callable[[int, Preset], list[str]]   # the command (after `hf-streamline`) that builds the cell, sans output
    seed: str | None = None                    # the seed paper whose own recipe this is
    note: str = ""


def _calib(p: Preset, samples: int | None = None) -> list[str]:
    return ["--calibration", p.calibration, "--samples", str(samples or p.samples), "--seq-len", str(p.seq_len),
            "--seed", "0", "--batch-size", str(p.batch_size)]


def methods() -> dict[str, Method]:
    """Every method of the library, read from its registries."""
    from hf_streamline.merging.base import MERGE_RULES
    from hf_streamline.replacement.base import KINDS
    from hf_streamline.scores import SCORERS
    from hf_streamline.training.objectives import OBJECTIVES
    from hf_streamline.unit_search import FITNESSES

    seeds = {"block_influence": "ShortGPT", "block_cosine": "LLM-Streamline (block choice)",
             "reverse_order": "Reassessing Layer Pruning", "angular": "Gromov et al."}
    out: dict[str, Method] = {}
    for metric, cls in sorted(SCORERS.items()):
        block = getattr(cls, "paper_selection", "layers") == "block"
        name = f"remove:{metric}" + (":block" if block else "")
        samples = 8 if metric == "perplexity" else None  # leave-one-out: one pass per layer over the calibration
        out[name] = Method(name, "remove", lambda k, p, m=metric, b=block, s=samples: (
            ["prune", "--metric", m, "--remove", str(k), *(["--block"] if b else []), *_calib(p, s)]),
            seed=seeds.get(metric))
    for fitness in FITNESSES:
        name = f"search:{fitness}"
        out[name] = Method(name, "search", lambda k, p, f=fitness: (
            ["prune", "--selection", "search", "--fitness", f, "--remove", str(k), "--greedy-candidates", "6",
             "--generations",
             str(p.search_generations), "--offspring", str(p.search_offspring), *_calib(p, p.search_samples)]),
            note="EvoPress-style: lazy greedy (6 candidates) by measured KL, then a short (1+λ) evolution")
        name = f"search:{fitness}:linear"
        out[name] = Method(name, "search", lambda k, p, f=fitness: (
            ["prune", "--selection", "search", "--fitness", f, "--remove", str(k), "--greedy-candidates", "6",
             "--generations", str(p.search_generations), "--offspring", str(p.search_offspring),
             "--search-samples", str(p.search_samples), "--fold", "linear", *_calib(p)]),
            note="the same search (on a spread of the calibration), then a ReplaceMe linear map folded in place of "
                 "each removed run (fitted on the whole calibration)")
    for kind in sorted(KINDS):
        trained = kind not in ("none", "linear")
        # a trained module takes the block's place: block of k+1 layers -> 1 module = k layers removed
        size = (lambda k: k + 1) if trained else (lambda k: k)
        variants = {f"replace:{kind}": []} if not trained else {
            **{f"replace:{kind}:{o}": ["--objective", o] for o in sorted(OBJECTIVES)},
            f"replace:{kind}:lm_kd": ["--objective", "lm", "--kl-weight", "1.0", "--kd-top-k", "64"]}
        for name, extra in variants.items():
            train = ["--train-data", "{train}", "--max-steps", "{steps}"] if trained else []
            out[name] = Method(name, "replace", lambda k, p, kind=kind, size=size, extra=extra, train=train: (
                ["replace", "--replacement", kind, "--block-size", str(size(k)), *extra,
                 *[a.format(train=p.train_data, steps=p.replace_steps) for a in train], *_calib(p)]),
                seed="LLM-Streamline" if name in ("replace:mlp:mse", "replace:decoder_layer:mse") else None,
                note=("one module trained in place of a block of k+1 layers" if trained else ""))
    for rule in sorted(MERGE_RULES):
        name = f"merge:{rule}"
        out[name] = Method(name, "merge", lambda k, p, r=rule: (
            ["merge", "--remove", str(k), "--rule", r, "--no-eval", *_calib(p, p.search_samples)]))
    # SLM's own search (the authors' rule: top-layer weights, cosine of flattened outputs, cumulative windows)
    out["merge:top_weights:paper"] = Method("merge:top_weights:paper", "merge", lambda k, p: (
        ["merge", "--remove", str(k), "--rule", "top_weights", "--similarity", "output_cosine", "--scoring",
         "cumulative", "--no-eval", *_calib(p, p.search_samples)]), seed="SLM")
    return out


# healing recipes (budget > 0): name -> `hf-streamline heal` arguments (besides model, data, output and budget)
HEALS: dict[str, list[str]] = {
    **{f"partial{k}": ["--method", "partial", "--last-k", str(k), "--learning-rate", "1e-4"] for k in (0, 1, 3)},
    "lora": ["--method", "lora", "--learning-rate", "1e-3"],
    **{f"kd_partial{k}": ["--method", "distill", "--distill-subset", "partial", "--last-k", str(k), "--kd-top-k", "64",
                          "--learning-rate", "1e-4"] for k in (3, 10)},
    "kd_lora": ["--method", "distill", "--distill-subset", "lora", "--kd-top-k", "64", "--learning-rate", "1e-3"],
    # every layer above the cut, on Wikipedia articles and C4 pooled (distinct tokens instead of a second epoch)
    "kd_cut_wiki_c4": ["--method", "distill", "--distill-subset", "partial", "--last-k", "cut", "--kd-top-k", "64",
                       "--learning-rate", "3e-4", "--data", "bundled:train/wikipedia_30_articles.txt",
                       "bundled:train/c4_300_docs.jsonl"],
    # the same with lm_head frozen (tied, the model keeps the pruned size; a step is cheaper) and the frozen prefix
    # read from the teacher's pass (on by default): more tokens in the same 30 minutes
    "kd_cut_frozen_head": ["--method", "distill", "--distill-subset", "partial", "--last-k", "cut", "--kd-top-k", "64",
                           "--freeze-lm-head", "--learning-rate", "3e-4", "--data",
                           "bundled:train/wikipedia_30_articles.txt", "bundled:train/c4_300_docs.jsonl"],
    # the same, training also the N layers just below the cut (benchmarks/healing_proxy_results.md: the strongest
    # lever; cut+2 is the recipe's, cut+4 asks whether the trend goes on)
    **{f"kd_cut{n}_frozen_head": ["--method", "distill", "--distill-subset", "partial", "--last-k", f"cut+{n}",
                                  "--kd-top-k", "64", "--freeze-lm-head", "--learning-rate", "3e-4", "--data",
                                  "bundled:train/wikipedia_30_articles.txt", "bundled:train/c4_300_docs.jsonl"]
       for n in (2, 4)},
    # the recipe's heal on the dense model's own continuations (`heal --self-distill`): 32-token prompts from the
    # same text, 224 tokens generated greedily by the teacher, so each example is a 256-token window as elsewhere
    "kd_cut2_frozen_head_sd": ["--method", "distill", "--distill-subset", "partial", "--last-k", "cut+2", "--kd-top-k",
                               "64", "--freeze-lm-head", "--learning-rate", "3e-4", "--self-distill", "224", "--data",
                               "bundled:train/wikipedia_30_articles.txt", "bundled:train/c4_300_docs.jsonl"],
}
HEAL_SEEDS = {"partial3": "Reassessing Layer Pruning (lm_head + last 3 layers)", "lora": "LoRA baseline"}


# ------------------------------------------------------------------------------------------------------ bookkeeping

class Bench:
    def __init__(self, a: argparse.Namespace):
        self.a = a
        self.p = preset(a.preset)
        prefix = Path(a.results) if a.results else HERE / ("quality_results" if a.preset == "full"
                                                           else f"quality_{a.preset}_results")
        self.json, self.md, self.png = (prefix.with_suffix(s) for s in (".json", ".md", ".png"))
        self.work = Path(a.work or os.environ.get("HF_STREAMLINE_BENCH_WORK", f"/tmp/hf_streamline_quality_{a.preset}"))
        self.res = json.loads(self.json.read_text()) if self.json.exists() else {}
        self.res.setdefault("cells", {})
        self.res["preset"] = a.preset
        self.res["config"] = {k: v for k, v in vars(self.p).items()}

    def save(self) -> None:
        self.res["machine"], self.res["versions"] = machine(), versions()
        tmp = self.json.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.res, indent=1, default=str))
        tmp.replace(self.json)

    def folder(self, cell: str) -> Path:
        return self.work / "cells" / cell.replace(":", "-").replace("@", "-at-").replace("+", "-heal-").replace("~", "-")

    def dense(self) -> str:
        if self.p.model:
            return self.p.model
        from hf_streamline.loading import bundled_model_dir

        return str(bundled_model_dir())

    def run(self, cmd: list[str], log: Path | None = None) -> dict:
        """One command in a fresh process: its record (command as shown, wall time, peak RSS, load before/after)."""
        shown = "hf-streamline " + " ".join(shlex.quote(c) for c in cmd)
        shown = shown.replace(str(self.work) + "/", "$WORK/").replace(self.dense(), "$DENSE")
        shown = shown.replace(str(SHARED) + "/", "$SHARED/").replace(str(ROOT) + "/", "")
        print("+", shown, flush=True)
        if log is not None:
            log.parent.mkdir(parents=True, exist_ok=True)
        before = loadavg()
        t = time.perf_counter()
        env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
        with open(log if log is not None else os.devnull, "w") as sink:
            proc = subprocess.Popen(HF + cmd, env=env, stdout=None if log is None else sink,
                                    stderr=subprocess.STDOUT if log is not None else None)
            try:
                _, status, usage = os.wait4(proc.pid, 0)  # the child's own peak RSS, not this process's
            except BaseException:  # stopped (Ctrl-C, SIGTERM): the child must not go on writing into the cell
                proc.kill()
                proc.wait()
                raise
            proc.returncode = os.waitstatus_to_exitcode(status)
        secs = time.perf_counter() - t
        if proc.returncode:
            raise SystemExit(f"command failed with exit code {proc.returncode}: {shown}"
                             + (f" (log: {log})" if log else ""))
        return {"command": shown, "seconds": round(secs, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024),
                "loadavg": [before, loadavg()]}

    def selected(self, names, pattern: str | None) -> list[str]:
        # tagged cells (`~pilot...`) are measurements of their own (a training loss): only a pattern naming a tag
        # selects them
        if not pattern:
            return [n for n in names if "~" not in n]
        pats = [x.strip() for x in pattern.split(",") if x.strip()]
        tags = any("~" in q for q in pats)
        return [n for n in names if ("~" not in n or tags)
                and any(fnmatch.fnmatchcase(n, q) or fnmatch.fnmatchcase(n.split("@")[0], q) for q in pats)]


# ----------------------------------------------------------------------------------------------------------- stages

def stage_build(b: Bench) -> None:
    ms = methods()
    ks = [int(k) for k in b.a.ks.split(",")] if b.a.ks else list(b.p.ks)
    cells = [f"{m}@{k}" for k in ks for m in ms]
    for cell in b.selected(cells, b.a.only):
        if cell in b.res["cells"] and not b.a.redo:
            print(f"= {cell} already built (--redo to build it again)")
            continue
        name, k = cell.split("@")
        out = b.folder(cell)
        out.parent.mkdir(parents=True, exist_ok=True)
        cmd = [*ms[name].argv(int(k), b.p), "--output", str(out), "--overwrite"]
        if b.p.model:
            cmd += ["--model", b.p.model]
        try:
            rec = b.run(cmd, log=out.with_suffix(".log"))
        except SystemExit as exc:  # a method that cannot run at this ratio keeps its row, with the reason
            b.res["cells"][cell] = {"method": name, "k": int(k), "budget": 0, "error": str(exc)}
            b.save()
            print(exc)
            continue
        plan = json.loads((out / "streamline_plan.json").read_text())
        b.res["cells"][cell] = {"method": name, "family": ms[name].family, "k": int(k), "budget": 0,
                                "seed": ms[name].seed, "build": rec, "removed_layers": plan.get("removed_layers"),
                                "layers_after": plan.get("num_layers_after"), "eval": None}
        b.save()


def stage_adopt(b: Bench) -> None:
    """A cell whose choice an earlier benchmark already made with the same method and calibration (a search that took
    half an hour): rebuild that choice with ``prune --layers`` and record where it came from."""
    if not (b.a.cell and b.a.layers and b.a.source):
        raise SystemExit("--stage adopt needs --cell METHOD@K, --layers I,J,... and --source (where the choice was made)")
    name, k = b.a.cell.split("@")
    ms = methods()
    if name not in ms or len(b.a.layers.split(",")) != int(k):
        raise SystemExit(f"--cell {b.a.cell}: a method of `--stage list` and as many --layers as layers removed")
    out = b.folder(b.a.cell)
    cmd = ["prune", "--layers", b.a.layers, "--output", str(out), "--overwrite"]
    if b.p.model:
        cmd += ["--model", b.p.model]
    rec = b.run(cmd, log=out.with_suffix(".log"))
    plan = json.loads((out / "streamline_plan.json").read_text())
    b.res["cells"][b.a.cell] = {"method": name, "family": ms[name].family, "k": int(k), "budget": 0,
                                "seed": ms[name].seed, "build": rec, "removed_layers": plan.get("removed_layers"),
                                "layers_after": plan.get("num_layers_after"), "eval": None, "adopted": b.a.source,
                                "method_command": " ".join(["hf-streamline", *ms[name].argv(int(k), b.p)])}
    b.save()


def stage_heal(b: Bench) -> None:
    if not b.a.heal or b.a.heal not in HEALS:
        raise SystemExit(f"--heal: choose from {', '.join(HEALS)}")
    budget = b.a.budget_tokens
    if not budget:
        raise SystemExit("--budget-tokens: the token budget (derive it from a pilot's tokens/s; record how in "
                         "--budget-note)")
    from hf_streamline.healing import get_healing_method
    from hf_streamline.healing.base import HealingConfig

    for base in b.selected([c for c in b.res["cells"] if "+" not in c], b.a.only):
        cell = f"{base}+{b.a.heal}" + (f"~{b.a.tag}" if b.a.tag else "")
        if cell in b.res["cells"] and not b.a.redo:
            print(f"= {cell} already built")
            continue
        out = b.folder(cell)
        args = list(HEALS[b.a.heal])
        if b.a.learning_rate:
            args[args.index("--learning-rate") + 1] = str(b.a.learning_rate)
        data = [] if "--data" in args else ["--data", b.p.train_data]
        cmd = ["heal", "--model", str(b.folder(base)), *data, "--seq-len", str(b.p.heal_seq_len),
               "--batch-size", "4", "--budget-tokens", str(budget), "--eval-size", "0", *args,
               *(["--max-examples", str(b.a.max_examples)] if b.a.max_examples else []),
               "--output", str(out), "--overwrite"]
        if get_healing_method(HealingConfig(method=args[args.index("--method") + 1])).needs_teacher:
            cmd += ["--teacher", b.dense()]
        rec = b.run(cmd, log=out.with_suffix(".log"))
        plan = json.loads((out / "streamline_plan.json").read_text())
        heal = plan.get("healing")
        heal = heal[-1] if isinstance(heal, list) and heal else heal or {}
        tokens = heal.get("train_tokens") or budget
        src = b.res["cells"][base]
        b.res["cells"][cell] = {**{k: src.get(k) for k in ("method", "family", "k", "seed", "removed_layers",
                                                            "layers_after")},
                                "base": base, "heal": b.a.heal, "learning_rate": args[args.index("--learning-rate") + 1], "heal_seed": HEAL_SEEDS.get(b.a.heal),
                                "budget": budget, "budget_note": b.a.budget_note, "build": rec,
                                "train_tokens": tokens, "tokens_per_s": round(tokens / rec["seconds"], 1),
                                "train_loss": [e["loss"] for e in heal.get("loss_curve", []) if e.get("loss") is not None],
                                "train_seconds": heal.get("wall_time_s"), "kd_cache": heal.get("kd_cache"),
                                "self_distill": heal.get("self_distill"),
                                "eval": None}
        b.save()


def _evaluate(b: Bench, cells: list[str], name: str, extra: list[str], with_dense: bool) -> dict:
    out = b.work / "eval" / name
    cmd = ["evaluate", "--model", str(b.folder(cells[0])), "--label", cells[0]]
    if len(cells) > 1:
        cmd += ["--model-extra", *[str(b.folder(c)) for c in cells[1:]]]
    if with_dense:
        cmd += ["--baseline", b.dense()]
    cmd += [*extra, "--no-plots", "--no-samples", "--output", str(out), "--overwrite"]
    rec = b.run(cmd, log=out.with_suffix(".log"))
    rec["report"] = json.loads((out / "report.json").read_text())
    return rec


def _labels(cells: list[str], b: Bench) -> dict[str, str]:
    """report label -> cell (evaluate labels --model by --label, the others by folder name)."""
    return {(cells[0] if i == 0 else b.folder(c).name): c for i, c in enumerate(cells)}


def stage_eval(b: Bench) -> None:
    """The cheap columns: perplexity on each text, KL and top-1 agreement against dense; parameters."""
    todo = [c for c in b.selected(b.res["cells"], b.a.only)
            if b.res["cells"][c].get("build") and (b.a.redo or not b.res["cells"][c].get("eval"))]
    p = b.p
    extra = ["--ppl", *[f"{n}={t}" for n, t in p.ppl.items()], "--ppl-seq-len", str(p.ppl_seq_len),
             "--ppl-tokens", str(p.ppl_max_tokens), "--agreement-text", p.agreement_text,
             "--agreement-tokens", str(p.agreement_tokens), "--no-speed", "--batch-size", str(p.batch_size)]
    for i in range(0, len(todo), b.a.chunk):
        chunk = todo[i:i + b.a.chunk]
        rec = _evaluate(b, chunk, f"cheap_{int(time.time())}_{i}", extra, with_dense=True)
        rep = rec.pop("report")
        dense = {"ppl": {n: v["dense"] for n, v in rep["perplexity"].items()},
                 "params": rep["models"]["dense"].get("params")}
        b.res.setdefault("dense", {}).update({k: v for k, v in dense.items() if v})
        for label, cell in _labels(chunk, b).items():
            pair = next((v for k, v in rep["pairs"].items() if k.startswith(label + "_vs_")), {})
            b.res["cells"][cell]["eval"] = {
                "ppl": {n: v[label] for n, v in rep["perplexity"].items()}, "kl": pair.get("kl"),
                "top1": pair.get("top1_agreement"), "params": rep["models"][label].get("params"),
                "command": rec["command"], "seconds": rec["seconds"], "loadavg": rec["loadavg"],
                "dense_ppl_same_run": {n: v["dense"] for n, v in rep["perplexity"].items()}}
        b.save()


def dense_acc_for(res: dict, acc: dict | None) -> dict | None:
    """The dense model's accuracy record measured with the same prompts as ``acc`` (None when there is none)."""
    if not acc:
        return None
    dense = res.get("dense", {})
    for rec in (dense.get("acc"), dense.get("acc_v01")):
        if rec and rec.get("prompts") == acc.get("prompts"):
            return rec
    return None


# the tasks whose stock lm-eval configuration reports acc_norm (length-normalised); the others report acc alone
ACC_NORM_TASKS = ("arc_easy", "arc_challenge", "piqa", "openbook_qa", "openbookqa", "hellaswag")


def mean_acc(tasks: dict, label: str) -> tuple[float | None, dict]:
    """Mean over the tasks of ``acc_norm`` where lm-eval defines it (``ACC_NORM_TASKS``), else ``acc``."""
    per = {}
    for task, by in tasks.items():
        m = by.get(label) or {}
        metric = "acc_norm" if task in ACC_NORM_TASKS and m.get("acc_norm") is not None else "acc"
        if m.get(metric) is not None:
            per[task] = {"score": float(m[metric]), "metric": metric, "acc": m.get("acc"),
                         "acc_norm": m.get("acc_norm"), "n": m.get("n")}
    return (sum(x["score"] for x in per.values()) / len(per) if per else None), per


def _acc_noise(tasks: dict | None, mean: float | None) -> str:
    """One standard error of an 8-task mean accuracy at these item counts (binomial, the tasks independent), in
    accuracy and in points of % dense: differences below it are noise."""
    if not tasks or not mean:
        return ""
    se = sum(t["score"] * (1 - t["score"]) / t["n"] for t in tasks.values() if t.get("n")) ** 0.5 / len(tasks)
    return (f" One standard error of a mean accuracy at these item counts is about {se:.4f} ({100 * se / mean:.1f} "
            "points of % dense; binomial, tasks independent): differences between cells below it are within noise.")


def stage_rescore(b: Bench) -> None:
    """Recompute the accuracy columns from the evaluation reports the ``acc`` stage wrote (after a change of rule)."""
    reports: dict[str, dict] = {}

    def report(command: str) -> dict:
        out = command.split("--output ")[1].split()[0].replace("$WORK", str(b.work))
        if out not in reports:
            reports[out] = json.loads((Path(out) / "report.json").read_text())
        return reports[out]

    dense = b.res.get("dense", {}).get("acc")
    if dense:
        dense["mean"], dense["tasks"] = mean_acc(report(dense["command"])["tasks"], "dense")
    for cell, r in b.res["cells"].items():
        if r.get("acc"):
            rep = report(r["acc"]["command"])
            label = next(lb for lb, m in rep["models"].items()
                         if Path(m["path"]).name == b.folder(cell).name or lb == cell)
            r["acc"]["mean"], r["acc"]["tasks"] = mean_acc(rep["tasks"], label)
    b.save()


def stage_acc(b: Bench) -> None:
    """The accuracy columns (expensive): the cells named by --only, and dense once."""
    cells = [c for c in b.selected(b.res["cells"], b.a.only) if b.res["cells"][c].get("build")
             and (b.a.redo or (b.res["cells"][c].get("acc") or {}).get("prompts") != ACC_PROMPTS)]
    with_dense = (b.res.get("dense", {}).get("acc") or {}).get("prompts") != ACC_PROMPTS
    if not cells and not with_dense:
        print("nothing to do")
        return
    p = b.p
    extra = ["--tasks", *p.tasks, "--task-dir", p.task_dir, "--limit", str(p.limit), "--sample-seed", "0",
             "--no-speed", "--batch-size", str(p.batch_size)]
    if not cells:  # dense alone
        raise SystemExit("--only: name at least one built cell (dense is evaluated beside it)")
    rec = _evaluate(b, cells, f"acc_{int(time.time())}", extra, with_dense=with_dense)
    rep = rec.pop("report")
    if with_dense:
        mean, per = mean_acc(rep["tasks"], "dense")
        dense = b.res.setdefault("dense", {})
        if dense.get("acc") and dense["acc"].get("prompts") is None:
            dense["acc_v01"] = dense["acc"]
        dense["acc"] = {"mean": mean, "tasks": per, "command": rec["command"], "prompts": ACC_PROMPTS}
    for label, cell in _labels(cells, b).items():
        mean, per = mean_acc(rep["tasks"], label)
        r = b.res["cells"][cell]
        if r.get("acc") and r["acc"].get("prompts") is None:
            r["acc_v01"] = r["acc"]
        r["acc"] = {"mean": mean, "tasks": per, "command": rec["command"], "seconds": rec["seconds"],
                    "loadavg": rec["loadavg"], "prompts": ACC_PROMPTS}
    b.save()


def stage_speed(b: Bench) -> None:
    """Prefill / decode tokens/s against dense: speed depends on the layers kept, not on which, so one plain
    checkpoint per ratio (a built cell of the family ``remove``, else ``search``, whose folder is in the work folder)."""
    by_k: dict[int, str] = {}
    for family in ("remove", "search"):
        for c, r in b.res["cells"].items():
            if r.get("family") == family and r.get("build") and "+" not in c and b.folder(c).is_dir():
                by_k.setdefault(r["k"], c)
    for k, cell in sorted(by_k.items()):
        if b.res.setdefault("speed", {}).get(str(k)) and not b.a.redo:
            continue
        name = next(iter(b.p.ppl))
        rec = _evaluate(b, [cell], f"speed_{k}", ["--ppl", f"{name}={b.p.ppl[name]}", "--ppl-tokens",
                                                  str(b.p.ppl_seq_len), "--speed-repeats", "5"], with_dense=True)
        rep = rec.pop("report")
        sp = rep["speed"]
        b.res["speed"][str(k)] = {"cell": cell, "dense": sp["dense"], "pruned": sp[cell], **rec,
                                  "prefill_speedup": sp[cell]["prefill_tokens_per_s"] / sp["dense"]["prefill_tokens_per_s"],
                                  "decode_speedup": sp[cell]["decode_tokens_per_s"] / sp["dense"]["decode_tokens_per_s"]}
        b.save()


# ----------------------------------------------------------------------------------------------------------- report

def _f(v, fmt="{:.2f}") -> str:
    if v is None or v != v:
        return "—"
    if isinstance(v, float) and abs(v) >= 1e4:
        return f"{v:.2e}"
    return fmt.format(v)


def ranking(res: dict, k: int) -> list[str]:
    """Budget-0 cells at ratio k, best first: by held-out KL, then WikiText-2 PPL."""
    cells = [(c, r) for c, r in res["cells"].items() if r["k"] == k and r.get("budget") == 0 and r.get("eval")]
    first = next(iter(res["config"]["ppl"]))
    return [c for c, r in sorted(cells, key=lambda cr: (cr[1]["eval"]["kl"] if cr[1]["eval"]["kl"] is not None
                                                        else float("inf"), cr[1]["eval"]["ppl"][first]))]


def chance_acc(p: Preset) -> float | None:
    """The 8-task mean a uniform guess scores on the accuracy stage's items (1 / number of choices per item; 0 for a
    task with one request per item, such as LAMBADA's last word): the floor under every "% of dense" figure."""
    from hf_streamline.evaluation.tasks import resolve_tasks

    try:
        tasks = resolve_tasks(list(p.tasks), p.task_dir)
    except Exception as exc:  # the report must not fail for want of the task files
        print(f"chance level not computed: {exc}", file=sys.stderr)
        return None
    per = []
    for t in tasks:
        items = t.select(p.limit, seed=0).items
        per.append(sum(1 / i.num_requests if i.num_requests > 1 else 0.0 for i in items) / max(1, len(items)))
    return sum(per) / len(per) if per else None


def _trains(heal: str) -> str:
    """What a HEALS recipe trains, in words (from its arguments)."""
    args = HEALS.get(heal, [])
    opt = {a: args[i + 1] for i, a in enumerate(args[:-1]) if a.startswith("--")}
    method, subset = opt.get("--method"), opt.get("--distill-subset", "partial")
    if method == "lora" or (method == "distill" and subset == "lora"):
        what = "LoRA on every decoder layer"
    else:
        k = opt.get("--last-k", "?")
        k = {"cut": "every layer above the cut"}.get(k, f"every layer above the cut and the {k[4:]} below it"
                                                     if k.startswith("cut+") else f"the last {k} layers")
        what = ("norm" if "--freeze-lm-head" in args else "lm_head + norm") + ("" if k == "the last 0 layers"
                                                                              else f" + {k}")
    return (what + (f", KD from dense (top-{opt.get('--kd-top-k', 'all')} logits)" if method == "distill" else ", LM loss")
            + (f", on dense's own continuations ({opt['--self-distill']} tokens per prompt)" if "--self-distill" in opt
               else ""))


def healing_table(res: dict, texts: list[str], chance: float | None = None) -> list[str]:
    """One table per (ratio, base) with healed cells: the base at budget 0, then each recipe (what it trains, tokens,
    time, memory and what it recovered) -- the Reassessing comparison (partial:k vs LoRA vs KD) reads off it."""
    dense = res.get("dense", {})
    groups: dict[tuple[int, str], list[str]] = {}
    for c, r in res["cells"].items():
        if r.get("budget") and r.get("base") and r.get("eval") and "~" not in c:
            groups.setdefault((r["k"], r["base"]), []).append(c)
    if not groups:
        return []
    lines = ["## Recovery at a budget: what to train", "",
             "Each healed cell against its own budget-0 base (pilots left out). Tokens/s and wall time are of the whole "
             "`heal` process (teacher pass included); accuracy as % of dense, and as the share of dense's margin over "
             "a uniform guess that is kept (above chance: (acc − chance) / (dense − chance)).", "",
             "| base (k) | recipe | trains | lr | tokens | wall s | tokens/s | peak RSS MB | "
             + " | ".join(f"{n} × dense" for n in texts) + " | KL | top-1 | acc % dense | above chance % |",
             "|---|---|---|---:|---:|---:|---:|---:|" + "---:|" * len(texts) + "---:|---:|---:|---:|"]

    def row(c: str, r: dict, recipe: str, trains: str) -> str:
        e, build = r.get("eval") or {}, r.get("build") or {}
        ppl = [((e.get("ppl") or {}).get(n), (dense.get("ppl") or {}).get(n)) for n in texts]
        acc, da = (r.get("acc") or {}).get("mean"), (dense_acc_for(res, r.get("acc")) or {}).get("mean")
        budget = bool(r.get("budget"))
        return (f"| `{r.get('base', c)}` ({r['k']}) | {recipe} | {trains} | {r.get('learning_rate', '') if budget else ''} | "
                f"{r.get('train_tokens', 0):,} | " + (f"{_f(build.get('seconds'), '{:.0f}')} | {r.get('tokens_per_s', '—')} | "
                                                      f"{build.get('peak_rss_mb', '—')}" if budget else "— | — | —")
                + " | " + " | ".join(_f(v / d if v and d else None) for v, d in ppl)
                + f" | {_f(e.get('kl'), '{:.3f}')} | {_f(e.get('top1'), '{:.3f}')} | "
                + (f"{100 * acc / da:.1f}" if acc is not None and da else "—") + " | "
                + (f"{100 * (acc - chance) / (da - chance):.0f}" if acc is not None and da and chance is not None
                   and (r.get("acc") or {}).get("prompts") and da > chance else "—") + " |")

    for (k, base), cells in sorted(groups.items()):
        b0 = res["cells"].get(base)
        if b0:
            lines.append(row(base, b0, "none (budget 0)", "—"))
        for c in sorted(cells, key=lambda c: (res["cells"][c].get("train_tokens") or 0, c)):
            r = res["cells"][c]
            lines.append(row(c, r, f"`{r['heal']}`" + (f" ({r['heal_seed']})" if r.get("heal_seed") else ""),
                             _trains(r["heal"])))
    return lines + [""]


def _distinct_top(res: dict, rank: list[str], n: int) -> tuple[set[str], dict[str, str]]:
    """The first ``n`` cells of ``rank`` that are distinct models, and {cell: the cell that stands for it} for the
    cells that produced the same model as another (same removed layers and the same cheap columns: e.g. two searches
    whose fitnesses chose the same layers); the one with the accuracy column, else the first, stands for its twins."""
    def key(c: str):
        r = res["cells"][c]
        e = r["eval"]
        # rounded: two evaluation runs of one model agree to float32 reduction order, not bit for bit
        return (tuple(r.get("removed_layers") or ()), r.get("heal"), round(e["kl"], 4),
                tuple(sorted((text, round(v, 2)) for text, v in (e.get("ppl") or {}).items() if v is not None)))
    twins: dict = {}
    for c in rank:
        if (res["cells"][c].get("eval") or {}).get("kl") is not None:
            twins.setdefault(key(c), []).append(c)
    same: dict[str, str] = {}
    for members in twins.values():
        first = next((c for c in members if res["cells"][c].get("acc")), members[0])
        same.update({c: first for c in members if c != first})
    return set([c for c in rank if c not in same][:n]), same


def stage_report(b: Bench) -> None:
    res, p = b.res, b.p
    texts = list(p.ppl)
    dense = res.get("dense", {})
    chance = chance_acc(p) if (dense.get("acc") or {}).get("mean") else None  # the floor under "% of dense"
    lines = ["# Quality benchmark: every method on one harness", "",
             f"Script: `benchmarks/quality.py` (preset `{res['preset']}`); stages and the command of every cell below. "
             f"Machine: {res.get('machine')}; versions: "
             + ", ".join(f"{k} {v}" for k, v in (res.get("versions") or {}).items()) + ".", "",
             f"- Model: {'the bundled SmolLM2-135M-Instruct (fp32)' if not p.model else Path(p.model).name}.",
             f"- Perplexity: {', '.join(texts)}, {p.ppl_seq_len}-token windows over the first {p.ppl_max_tokens:,} "
             f"tokens of each test text. KL(dense ‖ model) per token and top-1 agreement: {p.agreement_tokens:,} tokens "
             f"of `{Path(p.agreement_text).name}` (held out: no method sees it).",
             f"- Accuracy: {len(p.tasks)} tasks ({', '.join(p.tasks)}), {p.limit} items per task or the whole set, "
             "mean of `acc_norm` where lm-eval's stock task reports it (ARC, PIQA, OpenBookQA), else `acc` "
             "(LAMBADA: last-word accuracy), on the same seeded sample of items for every model (`--sample-seed 0`). "
             "Since issue 14 the prompts are lm-eval's stock templates; cells measured before keep hf-streamline "
             "0.1's (marked †, compared with the dense model measured with them).",
             f"- Calibration: {p.samples} × {p.seq_len} tokens of `{p.calibration}` (searches and SLM trials: "
             f"{p.search_samples} sequences); replacement training and healing: `{p.train_data}` (unless a heal names its own `--data` in its command).",
             "- Budget 0 = the method alone (a replacement's own training included, at "
             f"{p.replace_steps} steps); a budget > 0 is a token count for the healing step, derived from the "
             "tokens/s this machine reaches (the note of each healed cell says how).",
             f"- Ranking within a ratio: held-out KL, then {texts[0]} PPL; ★ marks the three best budget-0 cells, "
             "distinct models (two methods that produce the same model count once; the note says which; the "
             "accuracy columns are for them and for the healed cells; — where not measured). † = accuracy measured "
             "with hf-streamline 0.1's prompts, as a % of the dense model measured the same way; the others use "
             "lm-eval's stock prompts (issue 14).", ""]
    if dense:
        dp = dense.get("ppl", {})
        da = (dense.get("acc") or {}).get("mean")
        old = (dense.get("acc_v01") or {}).get("mean") if (dense.get("acc") or {}).get("prompts") else None
        lines += [f"Dense: {', '.join(f'{n} PPL {_f(v)}' for n, v in dp.items())}; mean accuracy {_f(da, '{:.3f}')}"
                  + (f" (lm-eval's prompts; {old:.3f} with hf-streamline 0.1's)" if old is not None else "")
                  + f"; {_f((dense.get('params') or 0) / 1e6, '{:.1f}')} M parameters."
                  + _acc_noise((dense.get("acc") or {}).get("tasks"), da), ""]
        if chance is not None:
            lines += [f"A uniform guess over each item's choices scores {chance:.3f} on the same items "
                      f"({100 * chance / da:.1f} % of dense): the floor under every % of dense figure below, so a "
                      f"model at {100 * (chance + 0.5 * (da - chance)) / da:.0f} % of dense has kept half of dense's "
                      "margin over chance.", ""]
    if res.get("notes"):  # what the runs showed (--note), before the tables they are about
        lines += ["## Findings", ""] + [f"- {x}" for x in res["notes"]] + [""]
    for k in sorted({r["k"] for r in res["cells"].values()}):
        rank = ranking(res, k)
        top, same = _distinct_top(res, rank, 3)
        lines += [f"## {k} layers removed", "",
                  "| cell | removed | " + " | ".join(f"{n} PPL (× dense)" for n in texts)
                  + " | KL | top-1 | mean acc (% dense) | params | build s | peak RSS MB | note |",
                  "|---|---|" + "---:|" * len(texts) + "---:|---:|---:|---:|---:|---:|---|"]
        order = rank + sorted(c for c, r in res["cells"].items() if r["k"] == k and c not in rank)
        for c in order:
            r = res["cells"][c]
            e = r.get("eval") or {}
            ppl = [(e.get("ppl") or {}).get(n) for n in texts]
            pcells = [f"{_f(v)} ({_f(v / dense['ppl'][n] if v and dense.get('ppl', {}).get(n) else None)})"
                      for v, n in zip(ppl, texts)]
            acc = (r.get("acc") or {}).get("mean")
            da = (dense_acc_for(res, r.get("acc")) or {}).get("mean")
            mark = "" if (r.get("acc") or {}).get("prompts") else "†"
            acc_s = f"{acc:.3f} ({100 * acc / da:.1f}%){mark}" if acc is not None and da else "—"
            params = e.get("params")
            note = []
            if c in same:
                note.append(f"the same model as `{same[c]}` (same layers, same numbers)")
            if r.get("adopted"):
                note.append(f"choice adopted from {r['adopted']}")
            if r.get("error"):
                note.append("failed: " + r["error"][:160])
            if r.get("seed"):
                note.append(f"seed: {r['seed']}")
            if r.get("heal_seed"):
                note.append(f"seed: {r['heal_seed']}")
            if r.get("budget"):
                loss = r.get("train_loss") or []
                note.append(f"heal {r['heal']} (lr {r.get('learning_rate', '?')}) on {r['train_tokens']:,} tokens ({r['tokens_per_s']} tokens/s over the "
                            "whole process" + (f"; train loss {loss[0]:.3f} → {loss[-1]:.3f}" if loss else "") + ")")
            if ppl[0] and dense.get("ppl", {}).get(texts[0]) and ppl[0] > 100 * dense["ppl"][texts[0]]:
                note.append("collapsed (PPL > 100× dense)")
            removed = r.get("removed_layers")
            rem = ",".join(map(str, removed)) if removed else "—"
            build = r.get("build") or {}
            lines.append(f"| {'★ ' if c in top else ''}`{c}` | {rem} | " + " | ".join(pcells)
                         + f" | {_f(e.get('kl'), '{:.3f}')} | {_f(e.get('top1'), '{:.3f}')} | {acc_s} | "
                         f"{_f(params / 1e6 if params else None, '{:.1f}')} M | {_f(build.get('seconds'), '{:.0f}')} | "
                         f"{build.get('peak_rss_mb', '—')} | {'; '.join(note)} |")
        sp = (res.get("speed") or {}).get(str(k))
        if sp:
            lines += ["", f"Speed at {k} layers removed (`{sp['cell']}` against dense, median of 5 interleaved "
                      f"repeats, load {sp['loadavg'][0].split()[0]}): prefill {sp['prefill_speedup']:.2f}×, decode "
                      f"{sp['decode_speedup']:.2f}×."]
        lines.append("")
    lines += healing_table(res, texts, chance)
    plot = draw(res, b.png)
    if plot:
        lines += [f"![quality]({b.png.name})", ""]
    lines += ["## Commands", "", "`$WORK` is the work folder, `$DENSE` the dense model folder, `$SHARED` "
              "`../shared/data`. Each cell's evaluation command is in the JSON (`eval.command`, `acc.command`).", ""]
    for c, r in res["cells"].items():
        build = r.get("build") or {}
        if build:
            lines.append(f"- `{c}`: `{build['command']}` ({build['seconds']:.0f} s, peak RSS {build['peak_rss_mb']} MB, "
                         f"load {build['loadavg'][0].split()[0]} → {build['loadavg'][1].split()[0]})"
                         + (f"; budget: {r['budget_note']}" if r.get("budget_note") else ""))
    evals = sorted({(r.get("eval") or {}).get("command") for r in res["cells"].values()} - {None})
    accs = sorted({(r.get("acc") or {}).get("command") for r in res["cells"].values()} - {None})
    lines += ["", "Evaluation commands:", ""] + [f"- `{c}`" for c in evals + accs]
    b.md.write_text("\n".join(lines) + "\n")
    print(f"wrote {b.md}")


def draw(res: dict, path: Path) -> bool:
    """Three panels, each with its legend below it: % of dense mean accuracy against layers removed at budget 0 (one
    solid line per method), the same for the healed cells (dashed; pilots, tagged ``~``, left out), and WikiText-2
    PPL × dense for every budget-0 method (log scale, collapses included)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dense = res.get("dense", {})
    first = next(iter(res["config"]["ppl"]))
    if not dense.get("ppl"):
        return False
    series: dict[tuple[str, str], list[tuple[int, float, float | None]]] = {}
    for c, r in res["cells"].items():
        e = r.get("eval") or {}
        if not e.get("ppl") or "~" in c:
            continue
        key = (r["method"], r.get("heal") or "")
        acc = (r.get("acc") or {}).get("mean")
        da = (dense_acc_for(res, r.get("acc")) or {}).get("mean")
        series.setdefault(key, []).append((r["k"], e["ppl"][first] / dense["ppl"][first],
                                           100 * acc / da if acc is not None and da else None))
    n_legend = max(len([1 for (_, h) in series if not h]), len([1 for (_, h) in series if h]), 1)
    fig, axes = plt.subplots(1, 3, figsize=(18, 5.5 + 0.11 * n_legend))
    markers = "osD^v<>Ph*X"
    for i, ((method, heal), pts) in enumerate(sorted(series.items())):
        pts.sort()
        look = {"color": plt.cm.tab20(i % 20), "marker": markers[i % len(markers)]}
        acc_pts = [(k, a) for k, _, a in pts if a is not None]
        if acc_pts:
            axes[1 if heal else 0].plot([0] + [k for k, _ in acc_pts], [100] + [a for _, a in acc_pts],
                                        "--" if heal else "-", label=method + (f" + {heal}" if heal else ""), **look)
        if not heal:
            axes[2].plot([0] + [k for k, _, _ in pts], [1.0] + [x for _, x, _ in pts], "-", label=method, **look)
    axes[0].set(title="budget 0: mean zero-shot accuracy, % of dense", xlabel="layers removed", ylabel="% of dense")
    axes[1].set(title="healed (30 CPU-minutes): mean zero-shot accuracy, % of dense", xlabel="layers removed",
                ylabel="% of dense")
    lo = min([y for ax in axes[:2] for ln in ax.lines for y in ln.get_ydata()] or [90])
    for ax in axes[:2]:
        ax.axhline(93, color="grey", lw=0.8, ls=":")
        ax.set_ylim(min(lo, 93) - 1, 101)
    axes[2].set(title=f"budget 0: {first} perplexity × dense (log)", xlabel="layers removed", ylabel="× dense",
                yscale="log")
    axes[2].axhline(2, color="grey", lw=0.8, ls=":")
    for ax in axes:
        ax.set_xticks(sorted({0, *(r["k"] for r in res["cells"].values())}))
        if ax.lines:
            ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=1, frameon=False)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return True


class Stopped(BaseException):
    """SIGTERM: not a SystemExit, which a stage reads as 'this method cannot run here' and goes on."""


def _stop(signum, _frame) -> None:
    raise Stopped(signum)


def main() -> None:
    signal.signal(signal.SIGTERM, _stop)  # `kill` of the benchmark stops the command it runs too
    a_ = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a_.add_argument("--stage", required=True,
                    choices=["list", "build", "adopt", "heal", "eval", "acc", "rescore", "speed", "report"])
    a_.add_argument("--cell", default=None, help="adopt: the cell, METHOD@K")
    a_.add_argument("--layers", default=None, help="adopt: the layers the earlier run of the method chose")
    a_.add_argument("--source", default=None, help="adopt: where that run is recorded (command, file)")
    a_.add_argument("--preset", choices=["full", "smoke"], default="full")
    a_.add_argument("--only", default=None, help="comma-separated cell or method patterns (fnmatch), e.g. 'remove:*@8'")
    a_.add_argument("--ks", default=None, help="build: comma-separated layers-removed counts (default: the preset's)")
    a_.add_argument("--heal", default=None, help=f"heal: one of {', '.join(HEALS)}")
    a_.add_argument("--budget-tokens", type=int, default=None, help="heal: training tokens")
    a_.add_argument("--budget-note", default="", help="heal: how the budget was derived (recorded)")
    a_.add_argument("--max-examples", type=int, default=None,
                    help="heal: train on (and cache the teacher for) at most this many windows (pilots)")
    a_.add_argument("--learning-rate", type=float, default=None, help="heal: instead of the recipe's learning rate")
    a_.add_argument("--tag", default="", help="heal: suffix of the healed cell's name (e.g. 'pilot')")
    a_.add_argument("--chunk", type=int, default=6, help="eval: models per evaluate call (dense once per call)")
    a_.add_argument("--redo", action="store_true", help="build / evaluate again what is already in the JSON")
    a_.add_argument("--results", default=None, help="write PREFIX.json/.md/.png (default benchmarks/quality_results)")
    a_.add_argument("--work", default=None, help="work folder (default $HF_STREAMLINE_BENCH_WORK or /tmp/...)")
    a_.add_argument("--note", action="append", default=[], help="report: add a note (kept in the JSON)")
    a = a_.parse_args()
    b = Bench(a)
    if a.stage == "list":
        for name, m in methods().items():
            print(f"{name:<34} {m.family:<8} {m.seed or ''}")
        print("heals:", ", ".join(HEALS))
        return
    b.res.setdefault("notes", []).extend(n for n in a.note if n not in b.res["notes"])
    {"build": stage_build, "adopt": stage_adopt, "heal": stage_heal, "eval": stage_eval, "acc": stage_acc,
     "rescore": stage_rescore, "speed": stage_speed,
     "report": stage_report}[a.stage](b)
    b.save()


if __name__ == "__main__":
    try:
        main()
    except Stopped as stop:  # the cells finished before the signal are saved already
        print(f"stopped by signal {stop.args[0]}", file=sys.stderr)
        sys.exit(128 + stop.args[0])
