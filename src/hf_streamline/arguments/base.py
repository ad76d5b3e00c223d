"""The one declaration of an option: a dataclass field made with :func:`option`.

Each command's arguments are one dataclass (``PruneArguments``, ``HealArguments`` ...; hf_streamline.arguments).
From it come

- the command's argparse parser (:func:`add_arguments`; the flag, default, type, choices and help of every option),
- the validation of a recipe section (:func:`values_from_mapping`: unknown keys refused with the allowed list, types
  and choices checked),
- the command line that does the same thing (:func:`to_argv`, e.g. for the "continue with" line of a failed run),
- the flag a library error names (:func:`flag_of`).

Like transformers' ``HfArgumentParser``, but torch- and transformers-free, so that ``hf-streamline --help`` and
``run --validate-only`` stay fast (benchmarks/cli_startup.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from dataclasses import MISSING, Field, field, fields
from typing import Any, Callable, Iterable

from ..errors import StreamlineError

# metadata keys an option may carry (anything else is a typo, refused by `option`)
_KEYS = ("help", "flags", "choices", "metavar", "nargs", "group", "required", "deprecated", "parse", "pairs", "consts",
         "exclusive", "positional", "hidden", "recipe", "action", "check")


def option(default: Any = None, *, help: str | Callable[[], str], default_factory: Callable[[], Any] | None = None, **meta: Any) -> Any:
    """A dataclass field that is a command-line option and a recipe key.

    ``help``: the help text (argparse ``%`` escapes as in argparse), or a callable returning it (read when the parser
    is built: a text that lists the plug-ins).  Optional metadata:
    ``flags`` (default ``--field-name``), ``choices`` (a collection, or a callable returning one, read when the parser
    is built), ``metavar``, ``nargs`` (lists: default ``+``), ``group`` (the help section), ``required`` (on the
    command line; a recipe's runner fills it), ``deprecated`` (old flags, hidden, warned about; the recipe key spelt
    like them is read as this one), ``parse`` (a function str -> value, as argparse ``type``; applied to recipe values
    too), ``pairs`` (a list of ``KEY=VALUE`` items that a recipe may also write as a mapping), ``consts`` (``{flag: (value, help)}``: several flags storing constants into this field, mutually exclusive),
    ``exclusive`` (the name of a mutually exclusive group), ``positional``, ``hidden`` (not in ``--help``),
    ``recipe=False`` (no recipe key), ``action`` ("store_false" for a ``--no-x`` flag whose field defaults to True;
    "append" for a list given as ``--flag A --flag B``; "extend" for one given as ``--flag A B`` or
    ``--flag A --flag B``),
    ``check`` (a function (value) -> None raising StreamlineError, run on recipe values)."""
    unknown = sorted(set(meta) - set(_KEYS))
    if unknown:
        raise TypeError(f"option(): unknown metadata {unknown}; known: {list(_KEYS)}")
    meta = {"help": help, **meta}
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def default_of(f: Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def help_text(f: Field) -> str:
    """The help of option ``f`` (a callable help is called: a text that lists plug-ins reads them when shown)."""
    h = f.metadata["help"]
    return h() if callable(h) else h


def option_fields(cls: type) -> list[Field]:
    """The fields of ``cls`` that are options (made with :func:`option`)."""
    return [f for f in fields(cls) if "help" in f.metadata]


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def base_type(hint: Any) -> tuple[Any, bool]:
    """``int | None`` -> (int, False); ``list[str] | None`` -> (str, True); a union of scalars -> (str, False)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)] if _is_union(hint) else [hint]
    if len(args) == 1 and typing.get_origin(args[0]) is list:
        inner = typing.get_args(args[0])
        return (inner[0] if inner else str), True
    if len(args) == 1:
        return args[0], False
    return str, False  # e.g. int | str: the `parse` function decides


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _choices(meta: dict[str, Any]) -> tuple[Any, ...] | None:
    c = meta.get("choices")
    if c is None:
        return None
    return tuple(c() if callable(c) else c)


def field_option(config: type, name: str, **meta: Any) -> Any:
    """The option that is the library dataclass field ``config.<name>`` (``MergeConfig.rule``,
    ``LinearOptions.solver`` ...): its default, and its help (a sentence there) as a help line, with the default added
    where the text does not give it.  The library's field stays the one declaration of both."""
    f = next((f for f in fields(config) if f.name == name), None)
    if f is None:
        raise TypeError(f"{config.__name__} has no field {name!r}")
    default = f.default if f.default is not MISSING else None
    text = f.metadata["help"].strip().rstrip(".")
    if text[:1].isupper() and not text[1:2].isupper():
        text = text[0].lower() + text[1:]
    if default is not None and default is not False and "default" not in text.lower():
        text += f" (default {default})"
    return option(default, help=text.replace("%", "%%"), **meta)


def required(cls: type, name: str) -> Any:
    """The option ``cls.<name>`` (a shared arguments class's), required in the command that redeclares it."""
    f = next(f for f in fields(cls) if f.name == name)
    return option(f.default if f.default is not MISSING else None, **{**f.metadata, "required": True})


def flags_of(f: Field) -> list[str]:
    return list(f.metadata.get("flags") or ["--" + f.name.replace("_", "-")])


def flag_of(cls: type, name: str) -> str | None:
    """The (longest) flag of the option ``name`` of ``cls``; None when ``cls`` has no such option."""
    for f in option_fields(cls):
        if f.name == name:
            if f.metadata.get("positional"):
                return f.name.upper()
            if f.metadata.get("consts"):
                return "/".join(f.metadata["consts"])
            return max(flags_of(f), key=len)
    return None


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> argparse.ArgumentParser:
    """Add every option of the dataclass ``cls`` to ``parser`` (in field order, in their ``group`` sections)."""
    hints = _hints(cls)
    groups: dict[str | None, Any] = {None: parser}
    exclusive: dict[str, Any] = {}
    required_one_of = set(getattr(cls, "REQUIRED_ONE_OF", ()))

    def container(meta: dict[str, Any]):
        name = meta.get("group")
        if name not in groups:
            groups[name] = parser.add_argument_group(name)
        where = groups[name]
        x = meta.get("exclusive")
        if x is None:
            return where
        if x not in exclusive:
            exclusive[x] = where.add_mutually_exclusive_group(required=x in required_one_of)
        return exclusive[x]

    for f in option_fields(cls):
        meta = dict(f.metadata)
        typ, is_list = base_type(hints[f.name])
        default = default_of(f)
        help_ = argparse.SUPPRESS if meta.get("hidden") else help_text(f)
        where = container(meta)
        if meta.get("consts"):
            g = where if meta.get("exclusive") else where.add_mutually_exclusive_group()
            first = True
            for flag, (const, flag_help) in meta["consts"].items():
                kw = {"default": default} if first else {}
                g.add_argument(flag, dest=f.name, action="store_const", const=const, help=flag_help, **kw)
                first = False
            continue
        kw: dict[str, Any] = {"help": help_, "default": default}
        if meta.get("metavar"):
            kw["metavar"] = meta["metavar"]
        if typ is bool and not is_list:
            if meta.get("action") == "store_false":
                kw["action"] = "store_false"
            elif default is False:
                kw["action"] = "store_true"
            else:
                kw["action"] = argparse.BooleanOptionalAction
        else:
            parse = meta.get("parse") or (typ if typ in (int, float) else None)
            if parse is not None:
                kw["type"] = parse
            choices = _choices(meta)
            if choices is not None:
                kw["choices"] = choices
            if is_list and meta.get("action") in ("append", "extend"):  # --flag A --flag B (extend: --flag A B too)
                kw["action"] = meta["action"]
                if meta["action"] == "extend":
                    kw["nargs"] = meta.get("nargs", "+")
            elif is_list:
                kw["nargs"] = meta.get("nargs", "+")
            elif meta.get("nargs"):
                kw["nargs"] = meta["nargs"]
        if meta.get("positional"):
            if default is None and kw.get("nargs") not in ("?", "*"):
                del kw["default"]  # a required positional
            where.add_argument(f.name, **kw)
            continue
        if meta.get("required"):
            kw["required"] = True
        flags = flags_of(f)
        where.add_argument(*flags, dest=f.name, **kw)
        for old in meta.get("deprecated", ()):
            if kw.get("action") not in (None, "append", "extend"):
                raise TypeError(f"{cls.__name__}.{f.name}: a switch has no deprecated spellings")
            extra = {k: kw[k] for k in ("type", "nargs", "choices") if k in kw}
            add_deprecated_flag(parser, old, max(flags, key=len), f.name, **extra)
    return parser


def from_namespace(cls: type, ns: argparse.Namespace) -> Any:
    """The dataclass ``cls`` holding what argparse parsed (``ns``); ``ns``'s other attributes (``func`` ...) are
    kept as plain attributes."""
    names = {f.name for f in fields(cls) if f.init}
    cfg = cls(**{k: v for k, v in vars(ns).items() if k in names})
    for k, v in vars(ns).items():
        if k not in names and k != "command":
            setattr(cfg, k, v)
    return cfg


def recipe_fields(cls: type, reserved: Iterable[str] = ()) -> dict[str, Field]:
    """``{recipe key: field}`` of ``cls``: every option but those the recipe's runner sets itself (``reserved``)."""
    reserved = set(reserved)
    return {f.name: f for f in option_fields(cls) if f.metadata.get("recipe", True) and f.name not in reserved}


def deprecated_keys(cls: type) -> dict[str, str]:
    """Recipe keys spelt like a deprecated flag (``eval_tokens`` for ``--eval-tokens``) -> the field they set."""
    return {old.lstrip("-").replace("-", "_"): f.name for f in option_fields(cls)
            for old in f.metadata.get("deprecated", ())}


def check_value(cls: type, name: str, value: Any, where: str) -> Any:
    """A recipe value for the option ``name`` of ``cls``, checked and converted as the command line would
    (``where`` names the recipe key in errors)."""
    f = next(f for f in option_fields(cls) if f.name == name)
    meta = f.metadata
    typ, is_list = base_type(_hints(cls)[name])
    if meta.get("consts"):
        allowed = [c for c, _ in meta["consts"].values()]
        if value not in allowed:
            raise StreamlineError(f"recipe key `{where}`: {value!r} is not allowed; allowed values: {allowed}")
        return value
    if typ is bool and not is_list:
        if not isinstance(value, bool):
            raise StreamlineError(f"recipe key `{where}` must be true or false, not {value!r}")
        return value
    if is_list and isinstance(value, dict) and meta.get("pairs"):  # a mapping in a recipe: KEY=VALUE items
        values = [f"{k}={v if isinstance(v, (str, int, float, bool)) or v is None else json.dumps(v)}"
                  for k, v in value.items()]
    elif is_list:
        values = value if isinstance(value, list) else [value]
    elif isinstance(value, list):
        raise StreamlineError(f"recipe key `{where}` takes one value, not a list")
    else:
        values = [value]
    out = []
    for v in values:
        if isinstance(v, (dict, list)):
            raise StreamlineError(f"recipe key `{where}` takes a scalar value, not {type(v).__name__}")
        if meta.get("parse") is not None:
            try:
                v = meta["parse"](str(v))
            except (TypeError, ValueError, argparse.ArgumentTypeError) as exc:
                raise StreamlineError(f"recipe key `{where}`: {v!r} is not valid ({exc})") from None
        elif typ is int:
            if isinstance(v, bool) or not isinstance(v, int):
                raise StreamlineError(f"recipe key `{where}` must be a whole number, not {v!r}")
        elif typ is float:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise StreamlineError(f"recipe key `{where}` must be a number, not {v!r}")
            v = float(v)
        elif isinstance(v, bool):
            raise StreamlineError(f"recipe key `{where}` takes a value, not {v!r}")
        else:
            v = str(v)
        choices = _choices(meta)
        if choices is not None and v not in choices:
            raise StreamlineError(f"recipe key `{where}`: {v!r} is not allowed; allowed values: {sorted(choices)}")
        if meta.get("check") is not None:
            meta["check"](v)
        out.append(v)
    return out if is_list else out[0]


def values_from_mapping(cls: type, mapping: dict[str, Any], section: str, reserved: Iterable[str] = (),
                        reserved_why: str = "") -> dict[str, Any]:
    """Validate the recipe section ``section`` (``mapping``) against ``cls``: ``{field: value}``, keys spelt with
    ``-`` or ``_``; an unknown key is refused with the allowed ones, a deprecated one read with a warning, ``None``
    left out (the default)."""
    from ..log import get_logger

    allowed = recipe_fields(cls, reserved)
    everything = {f.name for f in option_fields(cls)}
    old = deprecated_keys(cls)
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        name = str(key).replace("-", "_")
        if name in old and name not in everything:
            new = old[name]
            get_logger(__name__).warning(f"recipe key `{section}.{key}` is deprecated and will be removed in the next "
                                         f"release; write `{section}.{new}`")
            if new in mapping or new.replace("_", "-") in mapping:
                raise StreamlineError(f"recipe keys `{section}.{key}` and `{section}.{new}` name the same option; keep "
                                      f"`{new}`")
            name = new
        if name in everything and name not in allowed:
            raise StreamlineError(f"recipe key `{section}.{key}` is set by the recipe itself{reserved_why}; remove it "
                                  "from this section")
        if name not in allowed:
            raise StreamlineError(f"recipe key `{section}.{key}` is not known; allowed keys for `{section}`: "
                                  f"{sorted(allowed)}")
        if value is None:
            continue
        out[name] = check_value(cls, name, value, f"{section}.{key}")
    return out


def to_argv(cfg: Any) -> list[str]:
    """The command-line options that give ``cfg`` (a command's arguments dataclass): every option whose value
    differs from its default, positional ones first."""
    positional: list[str] = []
    argv: list[str] = []
    for f in option_fields(type(cfg)):
        value = getattr(cfg, f.name)
        if f.metadata.get("positional"):
            if value is not None:
                positional += [str(v) for v in (value if isinstance(value, list) else [value])]
            continue
        if value == default_of(f) or value is None:
            continue
        meta = f.metadata
        if meta.get("consts"):
            argv.append(next(flag for flag, (c, _) in meta["consts"].items() if c == value))
            continue
        flag = max(flags_of(f), key=len)
        if isinstance(value, bool):
            if meta.get("action") == "store_false" or default_of(f) is False:
                argv.append(flag)
            else:
                argv.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, list) and meta.get("action") == "append":
            for v in value:
                argv += [flag, str(v)]
        elif isinstance(value, list):
            argv += [flag, *map(str, value)]
        else:
            argv += [flag, str(value)]
    return positional + argv


def replace(cfg: Any, **changes: Any) -> Any:
    """``dataclasses.replace`` that keeps the plain attributes argparse left on ``cfg`` (``func`` ...)."""
    extra = {k: v for k, v in vars(cfg).items() if k not in {f.name for f in fields(cfg)}}
    new = dataclasses.replace(cfg, **changes)
    for k, v in extra.items():
        setattr(new, k, v)
    return new


class DeprecatedFlag(argparse.Action):
    """An old spelling of an option, kept for one release (README: "One name per concept"): hidden from ``--help``, it
    stores into the new option's dest and warns.  A recipe key spelt like it (``eval_tokens``) is read as the new key
    (hf_streamline.recipes.schema)."""

    def __init__(self, option_strings: list[str], dest: str, new: str, **kwargs: Any):
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        from ..log import get_logger

        get_logger(__name__).warning(f"{option_string} is deprecated and will be removed in the next release; use "
                                     f"{self.new}")
        setattr(namespace, self.dest, values)


def add_deprecated_flag(p: argparse.ArgumentParser | Any, old: str, new: str, dest: str, **kwargs: Any) -> None:
    """``old`` as a deprecated spelling of the option ``new`` (whose dest is ``dest``; ``type`` etc. as for it)."""
    p.add_argument(old, dest=dest, action=DeprecatedFlag, new=new, **kwargs)
