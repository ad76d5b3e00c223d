"""Run a validated recipe: the structural step, optional healing, evaluation, model card and push -- each stage one
arguments dataclass (hf_streamline.arguments) run in this process by ``hf_streamline.cli.call``, as the command line
would run it; no argv round trip.  Everything goes into one output folder written atomically."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
from pathlib import Path
from typing import Any

from ..errors import StreamlineError
from ..utils import atomic_output_dir, check_output_dir
from .schema import LOADING_KEYS, METHOD_COMMANDS, NOT_FOR_TRAINING, Recipe, model_value

RECIPE_FILENAME = "streamline_recipe.yaml"


def stage_arguments(command: str, recipe: Recipe, options: dict[str, Any], model: str | None,
                    calibration: bool = True, loading: bool = True, **fixed: Any) -> Any:
    """The arguments dataclass of ``command`` for one stage of ``recipe``: with ``loading`` the top-level loading keys
    (dtype, device ...) the command takes, with ``calibration`` the ``calibration`` mapping and ``seed`` (the
    structural step), then its section's ``options`` and ``fixed`` (the runner's own: ``output`` ...)."""
    from ..arguments import arguments_class
    from ..arguments.base import option_fields

    cls = arguments_class(command)
    names = {f.name for f in option_fields(cls)}
    data = recipe.data
    kw: dict[str, Any] = {}
    if model is not None and "model" in names:
        kw["model"] = model
    for k in LOADING_KEYS[1:] if loading else ():
        if k in NOT_FOR_TRAINING and command in ("heal", "compare-healing"):
            continue
        if data.get(k) is not None and k in names:
            kw[k] = model_value(k, data[k])
    calib = dict(data.get("calibration") or {}) if calibration else {}
    if "source" in calib:
        calib["calibration"] = calib.pop("source")
    if calibration and "seed" in data and "seed" not in calib:
        calib["seed"] = data["seed"]
    kw.update({k: v for k, v in calib.items() if k in names})
    kw.update(options)
    kw.update(fixed)
    return cls(**kw)


def run_stage(cfg: Any) -> None:
    """Run one stage in this process (``hf_streamline.cli.call``); a non-zero exit code is an error."""
    from ..cli import call

    code = call(cfg, guard=False)  # the runner checked the recipe's inputs and output itself
    if code:
        raise StreamlineError(f"`hf-streamline {cfg.command}` failed with exit code {code}")


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
def keep_partial(recipe: Recipe, result: Path, output: Path, done: list[str], stage: str, cfg: Any):
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
        from ..arguments.base import replace, to_argv

        cont = replace(cfg, model=str(partial) if cfg.model == str(result) else cfg.model,
                       output=str(output) if stage == "heal" else str(partial / "report"))
        if hasattr(cont, "model_path"):
            cont = replace(cont, model_path=None)  # the partial folder is the model's final place now
        command = "hf-streamline " + " ".join(shlex.quote(a) for a in [cfg.command, *to_argv(cont)])
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
        run_stage(stage_arguments(method_cmd, recipe, data.get(recipe.method) or {}, base, output=str(stage)))
        current = stage
        done = [recipe.method]
        if data.get("heal") is not None:
            healed = tmp / "_stage_heal"
            heal_opts = dict(data["heal"])
            if heal_needs_teacher(heal_opts):
                heal_opts.setdefault("teacher", base)  # only distillation / self_distill load the dense model
            cfg = stage_arguments("heal", recipe, heal_opts, str(current), calibration=False, output=str(healed))
            with keep_partial(recipe, current, output, done, "heal", cfg):
                run_stage(cfg)
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
            ev = {"baseline": base, **data["evaluate"]}
            cfg = stage_arguments("evaluate", recipe, ev, str(tmp), calibration=False, loading=False,
                                  model_path=str(output), output=str(tmp / "report"))
            with keep_partial(recipe, tmp, output, done, "evaluate", cfg):
                run_stage(cfg)
            report = tmp / "report" / "report.json"
        try:
            from ..publishing import write_model_card
        except ImportError:  # pragma: no cover - publishing ships with the package
            write_model_card = None
        if write_model_card is not None:
            write_model_card(tmp, report=str(report) if report is not None and report.exists() else None,
                             name=Path(os.path.abspath(output)).name)  # named after the output, not the staging folder
    if data.get("push") is not None:
        run_stage(stage_arguments("push", recipe, data["push"], None, calibration=False, loading=False,
                                  folder=str(output)))
    return output
