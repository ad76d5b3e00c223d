"""One declaration per option: every command's flags come from its arguments dataclass, every recipe key is a field
of one, a dataclass turns back into the command line that gives it, and a recipe gives the same weights as the same
steps called from Python."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields

import pytest
from safetensors.torch import load_file

from hf_streamline.arguments import COMMAND_ARGUMENTS, arguments_class
from hf_streamline.arguments.base import (add_arguments, check_value, from_namespace, option, option_fields,
                                          recipe_fields, to_argv, values_from_mapping)
from hf_streamline.cli import COMMANDS, OneLineParser, build_parser
from hf_streamline.arguments.base import DeprecatedFlag
from hf_streamline.errors import StreamlineError
from hf_streamline.recipes.schema import (CALIBRATION_KEYS, LOADING_KEYS, METHOD_COMMANDS, STAGE_COMMANDS,
                                          normalise_section)


def _command_parser(name: str) -> argparse.ArgumentParser:
    parser = build_parser([name])
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def test_every_command_has_an_arguments_class():
    assert set(COMMAND_ARGUMENTS) == set(COMMANDS)
    for name in COMMANDS:
        cls = arguments_class(name)
        assert cls is not None and cls.command == name, name
        assert all(isinstance(f.metadata.get("help"), str) or callable(f.metadata.get("help"))
                   for f in option_fields(cls))


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_flag_is_a_field_and_every_field_a_flag(name):
    """The parser is generated: each of its options (deprecated spellings included) sets a field of the command's
    arguments dataclass, and each field has its option."""
    cls = arguments_class(name)
    names = {f.name for f in option_fields(cls)}
    dests = set()
    for action in _command_parser(name)._actions:
        if isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            continue
        assert action.dest in names, f"{name}: {action.option_strings or action.dest} has no field in {cls.__name__}"
        if not isinstance(action, DeprecatedFlag):
            dests.add(action.dest)
    assert dests == names


@pytest.mark.parametrize("section,command", sorted({**METHOD_COMMANDS, **STAGE_COMMANDS}.items()))
def test_every_recipe_key_is_a_field_and_takes_its_default(section, command):
    cls = arguments_class(command)
    keys = recipe_fields(cls)
    assert keys and set(keys) <= {f.name for f in fields(cls)}
    for name, f in keys.items():
        default = getattr(cls, name, None) if not callable(getattr(cls, name, None)) else None
        if default is None or f.metadata.get("consts") or f.metadata.get("positional"):
            continue
        assert values_from_mapping(cls, {name: default}, section) == {name: default}, name
    assert set(LOADING_KEYS) <= {f.name for f in fields(arguments_class("prune"))}
    assert {"calibration" if k == "source" else k for k in CALIBRATION_KEYS} <= {f.name for f in
                                                                                 fields(arguments_class("prune"))}


def test_a_recipe_section_is_checked_by_the_dataclass():
    assert normalise_section("remove", "prune", {"remove": 2, "protect-first": 1, "block": True}) == \
        {"remove": 2, "protect_first": 1, "block": True}
    with pytest.raises(StreamlineError, match=r"recipe key `remove.seq-len` is set by the recipe itself"):
        normalise_section("remove", "prune", {"seq-len": 64})  # the top-level `calibration` sets it
    with pytest.raises(StreamlineError, match=r"recipe key `remove.remove` must be a whole number, not '2'"):
        normalise_section("remove", "prune", {"remove": "2"})
    with pytest.raises(StreamlineError, match=r"recipe key `remove.block` must be true or false"):
        normalise_section("remove", "prune", {"block": "yes"})
    with pytest.raises(StreamlineError, match=r"recipe key `remove.unit`: 'head' is not allowed; allowed values: "
                                              r"\['attention', 'layer', 'mlp', 'sublayer'\]"):
        normalise_section("remove", "prune", {"unit": "head"})
    with pytest.raises(StreamlineError, match=r"recipe key `remove.bogus` is not known; allowed keys for `remove`: "
                                              r"\['all_tokens', 'base_model', 'block',"):
        normalise_section("remove", "prune", {"bogus": 1})
    with pytest.raises(StreamlineError, match=r"recipe key `remove.output` is set by the recipe itself"):
        normalise_section("remove", "prune", {"output": "x"})
    assert normalise_section("remove", "prune", {"ratio": 1}) == {"ratio": 1.0}  # an int where a float goes


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_to_argv_parses_back_to_the_same_arguments(name):
    """``to_argv`` is the command line of a dataclass: parsing it gives the same dataclass (every field set away
    from its default where the type allows)."""
    cls = arguments_class(name)
    parser = build_parser([name])
    values = {}
    for f in option_fields(cls):
        meta = f.metadata
        default = getattr(cls(**_required(cls)), f.name)
        if meta.get("consts"):
            values[f.name] = list(meta["consts"].values())[-1][0]
        elif meta.get("choices") is not None:
            choices = meta["choices"]() if callable(meta["choices"]) else meta["choices"]
            values[f.name] = next((c for c in choices if c != default), default)
        elif isinstance(default, bool) or f.type in ("bool", "bool | None"):
            values[f.name] = not default if default is not None else False
        elif f.type in ("int", "int | None"):
            values[f.name] = 7
        elif f.type in ("float", "float | None"):
            values[f.name] = 0.5
        elif f.type in ("str", "str | None") and not meta.get("parse"):
            values[f.name] = "x" + f.name
    values = {k: v for k, v in values.items() if k not in _exclusive_losers(cls)}
    cfg = cls(**{**_required(cls), **values})
    argv = [name, *to_argv(cfg)]
    back = from_namespace(cls, parser.parse_args(argv))
    assert {f.name: getattr(back, f.name) for f in option_fields(cls)} == \
        {f.name: getattr(cfg, f.name) for f in option_fields(cls)}, argv


def _required(cls) -> dict:
    out = {}
    for f in option_fields(cls):
        if f.metadata.get("required") or (f.metadata.get("positional") and f.metadata.get("nargs") not in ("?", "*")):
            out[f.name] = ["xa"] if "list" in str(f.type) else "xa"
    for group in getattr(cls, "REQUIRED_ONE_OF", ()):
        first = next(f for f in option_fields(cls) if f.metadata.get("exclusive") == group)
        out[first.name] = 3 if "int" in str(f.type) else "3"
    return out


def _exclusive_losers(cls) -> set[str]:
    """Of each mutually exclusive group, every field but the first (only one may be set)."""
    seen, out = set(), set()
    for f in option_fields(cls):
        g = f.metadata.get("exclusive")
        if g is not None and not f.metadata.get("consts"):
            (out.add(f.name) if g in seen else seen.add(g))
    return out


@dataclass
class _Demo:
    command = "demo-test"
    flag: bool = option(False, help="a switch")
    on: bool | None = option(help="on or off")
    n: int = option(3, help="a count")
    names: list[str] | None = option(help="names", action="append")
    mode: str | None = option(help="a mode", consts={"--fast": ("fast", "go fast"), "--slow": ("slow", "go slow")})
    old: int | None = option(help="renamed", deprecated=("--old-name",))


def test_the_generator_on_each_kind_of_option():
    p = add_arguments(OneLineParser(prog="t"), _Demo)
    cfg = from_namespace(_Demo, p.parse_args(["--flag", "--no-on", "--n", "5", "--names", "a", "--names", "b",
                                              "--slow", "--old-name", "4"]))
    assert (cfg.flag, cfg.on, cfg.n, cfg.names, cfg.mode, cfg.old) == (True, False, 5, ["a", "b"], "slow", 4)
    assert to_argv(cfg) == ["--flag", "--no-on", "--n", "5", "--names", "a", "--names", "b", "--slow", "--old", "4"]
    assert from_namespace(_Demo, p.parse_args([])) == _Demo()
    with pytest.raises(SystemExit):
        p.parse_args(["--fast", "--slow"])
    assert check_value(_Demo, "names", "a", "s.names") == ["a"]  # one value where a list goes
    with pytest.raises(TypeError, match="unknown metadata"):
        option(help="x", chioces=(1, 2))


def _files(folder):
    return {p.name: load_file(p) for p in sorted(folder.glob("*.safetensors"))}


def test_a_recipe_gives_the_same_weights_as_python(stories_dir, data_dir, tmp_path):
    """The recipe's stages are the library's steps: prune by a metric on calibration data, then partial healing --
    done here by hand with the Python API -- and the weights agree bit for bit."""
    import torch

    from hf_streamline import CalibrationConfig, Target, build_calibration, load_model_and_tokenizer, prune, save_pruned
    from hf_streamline.healing import HealingConfig, HealingDataConfig, heal, plan_for, save_healed
    from hf_streamline.healing.data import load_pooled_healing_data
    from hf_streamline.recipes import run_recipe, validate_recipe

    text = str(data_dir / "text" / "stories260k_samples.txt")
    out = run_recipe(validate_recipe({
        "model": str(stories_dir), "calibration": {"source": text, "samples": 4, "seq_len": 32},
        "method": "remove", "remove": {"metric": "block_influence", "remove": 1},
        "heal": {"method": "partial", "last_k": 1, "data": [text], "max_steps": 2, "seq_len": 32, "eval_size": 0,
                 "batch_size": 2},
        "output": str(tmp_path / "recipe")}))

    model, tok = load_model_and_tokenizer(str(stories_dir))
    calib = build_calibration(tok, text, CalibrationConfig(source=text, n_samples=4, seq_len=32, seed=0))
    model, plan = prune(model, metric="block_influence", target=Target(layers=1), calibration=calib, batch_size=8)
    pruned = save_pruned(model, tok, plan, tmp_path / "pruned")
    model, tok = load_model_and_tokenizer(str(pruned))
    data = load_pooled_healing_data(tok, HealingDataConfig(seq_len=32, eval_size=0, seed=0), [text])
    torch.manual_seed(0)
    result = heal(model, tok, data, HealingConfig(method="partial", last_k=1, max_steps=2, batch_size=2, seed=0),
                  model_path=str(pruned), output_dir=str(tmp_path / "train"))
    healed = save_healed(result, tok, plan_for(result.model, str(pruned)), tmp_path / "python")

    mine, theirs = _files(out), _files(healed)
    assert mine.keys() == theirs.keys() and mine
    for name in mine:
        assert mine[name].keys() == theirs[name].keys()
        for k in mine[name]:
            assert torch.equal(mine[name][k], theirs[name][k]), k
