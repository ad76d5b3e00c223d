"""Run a validated recipe: the structural step, optional healing, evaluation, model card and push — through the same
command functions the CLI runs, into one output folder written atomically."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
from pathlib import Path
from typing import Any

from ..errors import StreamlineError
from ..utils import atomic_output_dir, check_output_dir
from .schema import METHOD_COMMANDS, NOT_FOR_TRAINING, Recipe, _option_actions, command_parser

RECIPE_FILENAME = "streamline_recipe.yaml"


def section_argv(command: str, options: dict[str, Any]) -> list[str]:
    """Turn ``{dest: value}`` into the command's argv (flags read from its parser)."""
    actions = _option_actions(command_parser(command))
    argv: list[str] = []
    for dest, value in options.items():
        if value is None:
            continue
        action = actions[dest]
        flag = max(action.option_strings, key=len)
        if isinstance(action, argparse.BooleanOptionalAction):  # --sequential / --no-sequential
            argv.append(action.option_strings[0] if value else "--no-" + action.option_strings[0][2:])
            continue
        if type(action) is argparse._StoreConstAction:  # the flag whose constant is the value
            argv.append(next(max(a.option_strings, key=len) for a in getattr(action, "siblings", [action])
                             if str(a.const) == str(value)))
            continue
        if isinstance(action, argparse._StoreTrueAction):
            if value:
                argv.append(flag)
        elif isinstance(action, argparse._StoreFalseAction):
            if not value:
                argv.append(flag)
        elif isinstance(action, argparse._AppendAction):
            for v in (value if isinstance(value, list) else [value]):
                argv += [flag, str(v)]
        elif isinstance(value, list):
            argv += [flag, *map(str, value)]
        else:
            argv += [flag, str(value)]
    return argv


def _shared_argv(command: str, recipe: Recipe, model: str | None, calibration: bool = True) -> list[str]:
    """Model / precision options (and, for the structural step, the calibration) for a command that has them."""
    data = recipe.data
    actions = _option_actions(command_parser(command))
    opts: dict[str, Any] = {}
    if model is not None and "model" in actions:
        opts["model"] = model
    for k in ("dtype", "device", "device_map", "trust_remote_code", "revision", "attn_implementation", "sequential",
              "max_memory"):
        if k in NOT_FOR_TRAINING and command in ("heal", "compare-healing"):
            continue
        if data.get(k) is not None and k in actions:
            opts[k] = json.dumps(data[k]) if isinstance(data[k], dict) else data[k]
    calib = dict(data.get("calibration") or {}) if calibration else {}
    if "source" in calib:
        calib["calibration"] = calib.pop("source")
    if calibration and "seed" in data and "seed" not in calib:
        calib["seed"] = data["seed"]
    for k, v in calib.items():
        if k in actions:
            opts[k] = v
    return section_argv(command, opts)


def run_command(argv: list[str]) -> None:
    from ..cli import build_parser

    args = build_parser(argv).parse_args(argv)
    code = args.func(args)
    if code:
        raise StreamlineError(f"`hf-streamline {' '.join(argv[:1])}` failed with exit code {code}")


# recipe keys that always name a local file or folder (a ``dataset:`` / ``bundled:`` spec or a Hub dataset id aside)
DATA_KEYS = ("calibration", "data", "train_data", "eval_text", "ppl", "task_dir")
# keys that name a model: a local path when it looks like one (./x, ../x, /x, ~/x, x.gguf), else a Hub id
MODEL_KEYS = ("model", "teacher", "baseline", "model_extra")


def recipe_inputs(recipe: Recipe) -> dict[str, Any]:
    """``{recipe key: value}`` of everything the recipe reads (``heal.data``, ``calibration.source``, ...)."""
    from ..utils import INPUT_DESTS

    data = recipe.data
    found: dict[str, Any] = {}
    if data.get("model") is not None:
        found["model"] = data["model"]
    if (data.get("calibration") or {}).get("source") is not None:
        found["calibration.source"] = data["calibration"]["source"]
    for section in (recipe.method, "heal", "evaluate"):
        for k, v in (data.get(section) or {}).items():
            if k in INPUT_DESTS and v is not None:
                found[f"{section}.{k}"] = v
    return found


def _missing_local(key: str, value: Any) -> str | None:
    """The local path ``value`` names that does not exist, or None (Hub ids, datasets and names are not checked)."""
    from ..data import PREFIX as BUNDLED, resolve_data_spec

    leaf = key.split(".")[-1]
    for v in (value if isinstance(value, list) else [value]):
        s = str(v)
        if s.startswith(BUNDLED):
            try:
                resolve_data_spec(s)
            except StreamlineError:
                return s
            continue
        if leaf == "tasks":
            s = s.split("=", 1)[1] if "=" in s else s
            if not s.endswith((".jsonl", ".yaml", ".yml", ".json")):
                continue  # a task name
        elif leaf == "ppl" and "=" in s:
            s = s.split("=", 1)[1]
        if s.startswith("dataset:"):
            s = s[len("dataset:"):].split(":")[0]
            if not os.path.splitext(s)[1]:
                continue  # a Hub dataset id
        if leaf in MODEL_KEYS or leaf in ("data", "source", "calibration", "train_data"):
            looks_local = s.startswith((".", "/", "~")) or s.endswith((".gguf", ".txt", ".json", ".jsonl"))
            if not looks_local:
                continue  # a Hub id
        if s.startswith(BUNDLED):
            continue
        if not os.path.exists(os.path.expanduser(s)):
            return s
    return None


def check_recipe_inputs(recipe: Recipe, source: str = "recipe") -> None:
    """Every local file / folder the recipe names exists, and its output is none of them (before any work)."""
    from ..utils import check_not_an_input

    inputs = recipe_inputs(recipe)
    for key, value in inputs.items():
        if key.split(".")[-1] not in DATA_KEYS + MODEL_KEYS + ("source", "tasks"):
            continue
        missing = _missing_local(key, value)
        if missing is not None:
            raise StreamlineError(f"{source}: recipe key `{key}` names {missing!r}, which does not exist; fix the "
                                  "path (relative paths are read from the folder you run in) or use bundled:NAME, "
                                  "a dataset: spec or a Hub id")
    check_not_an_input(recipe.output, inputs, what=f"{source}: recipe output")


def heal_needs_teacher(heal_opts: dict[str, Any]) -> bool:
    """Whether the ``heal`` section uses a teacher (distillation, or ``self_distill`` data): only then is the dense
    model loaded."""
    from ..healing import HealingConfig, get_healing_method

    if any(heal_opts.get(k) is not None and heal_opts.get(k) is not False for k in ("self_distill", "self-distill")):
        return True
    method = heal_opts.get("method") or "partial"
    return bool(get_healing_method(HealingConfig(method=str(method))).needs_teacher)


def base_model_spec(recipe: Recipe) -> str:
    from ..loading import resolve_model_spec

    return resolve_model_spec(recipe.data.get("model"))


PARTIAL_NOTE = "streamline_partial.md"


@contextlib.contextmanager
def keep_partial(recipe: Recipe, result: Path, output: Path, done: list[str], stage: str, argv: list[str]):
    """When ``stage`` fails (or is interrupted), move the earlier stages' ``result`` to ``OUTPUT.partial/`` with a
    note of what failed and the command that continues from it, instead of deleting it with the staging folder."""
    try:
        yield
    except (Exception, KeyboardInterrupt) as exc:
        from ..utils import WRITTEN

        partial = output.absolute().with_name(output.name + ".partial")
        if partial.exists():
            shutil.rmtree(partial)
        from ..utils import OWNER_FILE

        os.replace(result, partial)
        (partial / OWNER_FILE).unlink(missing_ok=True)
        (partial / RECIPE_FILENAME).write_text(recipe.to_yaml(), encoding="utf-8")
        cont: list[str] = []
        skip = False
        for a in argv:
            if skip:
                skip = False
            elif a == "--model-path":
                skip = True  # the partial folder is the model's final place now
            else:
                cont.append(str(partial) if a == str(result) else a)
        cont[cont.index("--output") + 1] = str(output) if stage == "heal" else str(partial / "report")
        command = "hf-streamline " + " ".join(shlex.quote(a) for a in cont)
        why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        (partial / PARTIAL_NOTE).write_text(
            f"# Partial result of {output.name}\n\nStages done: {', '.join(done)}. The `{stage}` stage failed: "
            f"{why}\n\nThis folder holds the result of the stages that finished. Continue with:\n\n"
            f"```bash\n{command}\n```\n", encoding="utf-8")
        WRITTEN.append(partial)
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise StreamlineError(f"the `{stage}` stage failed ({why}); the result of the stages before it is kept in "
                              f"{partial} (see its {PARTIAL_NOTE}); continue with: {command}") from exc


def run_recipe(recipe: Recipe, overwrite: bool | None = None) -> Path:
    """Run every stage of ``recipe``; returns the output folder (model + plan + recipe + report + card)."""
    data = recipe.data
    overwrite = bool(data.get("overwrite", False)) if overwrite is None else overwrite
    output = Path(data["output"])
    check_recipe_inputs(recipe)
    check_output_dir(output, overwrite)
    base = base_model_spec(recipe)
    method_cmd = METHOD_COMMANDS[recipe.method]
    with atomic_output_dir(output, overwrite=overwrite) as tmp:
        stage = tmp / "_stage_structure"
        run_command([method_cmd, *_shared_argv(method_cmd, recipe, base),
                     *section_argv(method_cmd, data.get(recipe.method) or {}), "--output", str(stage)])
        current = stage
        done = [recipe.method]
        if data.get("heal") is not None:
            healed = tmp / "_stage_heal"
            heal_opts = dict(data["heal"])
            actions = _option_actions(command_parser("heal"))
            if "teacher" in actions and heal_needs_teacher(heal_opts):
                heal_opts.setdefault("teacher", base)  # only distillation / self_distill load the dense model
            argv = ["heal", *_shared_argv("heal", recipe, str(current), calibration=False),
                    *section_argv("heal", heal_opts), "--output", str(healed)]
            with keep_partial(recipe, current, output, done, "heal", argv):
                run_command(argv)
            current = healed
            done.append("heal")
        for item in list(current.iterdir()):
            os.replace(item, tmp / item.name)
        for leftover in (tmp / "_stage_structure", tmp / "_stage_heal"):
            shutil.rmtree(leftover, ignore_errors=True)
        # portable: no push token, no absolute path of this machine (the folder may be pushed)
        (tmp / RECIPE_FILENAME).write_text(recipe.to_yaml(portable=True), encoding="utf-8")
        report = None
        if data.get("evaluate") is not None:
            ev = dict(data["evaluate"])
            actions = _option_actions(command_parser("evaluate"))
            if "baseline" in actions:
                ev.setdefault("baseline", base)
            argv = ["evaluate", "--model", str(tmp), "--model-path", str(output), *section_argv("evaluate", ev),
                    "--output", str(tmp / "report")]
            with keep_partial(recipe, tmp, output, done, "evaluate", argv):
                run_command(argv)
            report = tmp / "report" / "report.json"
        try:
            from ..publishing import write_model_card
        except ImportError:  # pragma: no cover - publishing ships with the package
            write_model_card = None
        if write_model_card is not None:
            write_model_card(tmp, report=str(report) if report is not None and report.exists() else None,
                             name=Path(os.path.abspath(output)).name)  # named after the output, not the staging folder
    if data.get("push") is not None:
        run_command(["push", str(output), *section_argv("push", data["push"])])
    return output
