"""Run a validated recipe: the structural step, optional healing, evaluation, model card and push — through the same
command functions the CLI runs, into one output folder written atomically."""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path
from typing import Any

from ..errors import StreamlineError
from ..utils import atomic_output_dir, check_output_dir
from .schema import METHOD_COMMANDS, Recipe, _option_actions, command_parser

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
    for k in ("dtype", "device", "device_map", "trust_remote_code"):
        if data.get(k) is not None and k in actions:
            opts[k] = data[k]
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

    args = build_parser().parse_args(argv)
    code = args.func(args)
    if code:
        raise StreamlineError(f"`hf-streamline {' '.join(argv[:1])}` failed with exit code {code}")


def base_model_spec(recipe: Recipe) -> str:
    from ..loading import resolve_model_spec

    return resolve_model_spec(recipe.data.get("model"))


def run_recipe(recipe: Recipe, overwrite: bool | None = None) -> Path:
    """Run every stage of ``recipe``; returns the output folder (model + plan + recipe + report + card)."""
    data = recipe.data
    overwrite = bool(data.get("overwrite", False)) if overwrite is None else overwrite
    output = Path(data["output"])
    check_output_dir(output, overwrite)
    base = base_model_spec(recipe)
    method_cmd = METHOD_COMMANDS[recipe.method]
    with atomic_output_dir(output, overwrite=overwrite) as tmp:
        stage = tmp / "_stage_structure"
        run_command([method_cmd, *_shared_argv(method_cmd, recipe, base),
                     *section_argv(method_cmd, data.get(recipe.method) or {}), "--output", str(stage)])
        current = stage
        if data.get("heal") is not None:
            healed = tmp / "_stage_heal"
            heal_opts = dict(data["heal"])
            actions = _option_actions(command_parser("heal"))
            if "teacher" in actions:
                heal_opts.setdefault("teacher", base)
            run_command(["heal", *_shared_argv("heal", recipe, str(current), calibration=False),
                         *section_argv("heal", heal_opts),
                         "--output", str(healed)])
            current = healed
        for item in list(current.iterdir()):
            os.replace(item, tmp / item.name)
        for leftover in (tmp / "_stage_structure", tmp / "_stage_heal"):
            shutil.rmtree(leftover, ignore_errors=True)
        (tmp / RECIPE_FILENAME).write_text(recipe.to_yaml(), encoding="utf-8")
        report = None
        if data.get("evaluate") is not None:
            ev = dict(data["evaluate"])
            actions = _option_actions(command_parser("evaluate"))
            if "baseline" in actions:
                ev.setdefault("baseline", base)
            run_command(["evaluate", "--model", str(tmp), "--model-path", str(output),
                         *section_argv("evaluate", ev), "--output", str(tmp / "report")])
            report = tmp / "report" / "report.json"
        try:
            from ..publishing import write_model_card
        except ImportError:  # pragma: no cover - publishing ships with the package
            write_model_card = None
        if write_model_card is not None:
            write_model_card(tmp, report=str(report) if report is not None and report.exists() else None)
    if data.get("push") is not None:
        run_command(["push", str(output), *section_argv("push", data["push"])])
    return output
