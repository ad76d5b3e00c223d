"""One name → class table per kind of plug-in (metrics, replacement kinds, export formats, objectives, merge rules,
healing methods, output similarities): a new plug-in is one file whose class carries ``name`` and is decorated with
the table's ``register``, plus one line in :mod:`hf_streamline.plugins` naming its module.

A table knows its built-in names without importing their modules (torch, transformers, peft): the command line's
choices and recipe validation read them for free, and a plug-in's module is imported when the plug-in is first used.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any, TypeVar

from .errors import StreamlineError

T = TypeVar("T", bound=type)
_MISSING = object()


def _literal_attribute(module: str, name: str, attribute: str) -> Any:
    """``attribute`` of the class in ``module`` (one of hf_streamline's, read as source) whose ``name = <name>``; a
    base class of that module is followed when the attribute is inherited; ``_MISSING`` where it is not a literal."""
    import ast
    from pathlib import Path

    root, _, rest = module.partition(".")
    if root != __name__.split(".")[0]:
        return _MISSING
    path = Path(__file__).resolve().parent.joinpath(*rest.split("."))
    path = path.with_suffix(".py") if path.with_suffix(".py").exists() else path / "__init__.py"
    try:
        classes = {n.name: n for n in ast.parse(path.read_text(encoding="utf-8")).body if isinstance(n, ast.ClassDef)}
    except (OSError, SyntaxError):
        return _MISSING

    def assigned(cls: ast.ClassDef, key: str) -> Any:
        for node in cls.body:
            target = node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else \
                node.target if isinstance(node, ast.AnnAssign) and node.value is not None else None
            if isinstance(target, ast.Name) and target.id == key:
                try:
                    return ast.literal_eval(node.value)
                except ValueError:
                    return _MISSING
        for base in cls.bases:  # inherited within the same module
            if isinstance(base, ast.Name) and base.id in classes:
                value = assigned(classes[base.id], key)
                if value is not _MISSING:
                    return value
        return _MISSING

    for cls in classes.values():
        if assigned(cls, "name") == name:
            return assigned(cls, attribute)
    return _MISSING


class Registry(MutableMapping):
    """``{name: class}`` with ``register`` (a class decorator keyed by ``cls.name``) and ``create`` (instantiate by
    name; an unknown name is a :class:`StreamlineError` listing the known ones).  ``what`` names the kind of plug-in in
    that error, e.g. ``"metric"``.  ``modules`` maps each built-in name to the module that defines and registers it:
    those names are listed, tested for membership and sorted without importing anything; reading one imports its
    module."""

    def __init__(self, what: str, modules: Mapping[str, str] | None = None, *, classes: tuple[type, ...] = ()):
        self.what = what
        self.modules: dict[str, str] = dict(modules or {})
        self._classes: dict[str, type] = {}
        for cls in classes:
            self.register(cls)

    def register(self, cls: T) -> T:
        self._classes[cls.name] = cls
        return cls

    # -- the mapping: names from the table and from registration, classes loaded on first read --------------------
    def __getitem__(self, name: str) -> type:
        if name not in self._classes and name in self.modules:
            importlib.import_module(self.modules[name])  # registers the class
            if name not in self._classes:
                raise LookupError(f"{self.modules[name]} did not register the {self.what} {name!r} (its class's "
                                  f"`name` and hf_streamline.plugins disagree)")
        return self._classes[name]

    def __setitem__(self, name: str, cls: type) -> None:
        self._classes[name] = cls

    def __delitem__(self, name: str) -> None:
        if name not in self:
            raise KeyError(name)
        self._classes.pop(name, None)
        self.modules.pop(name, None)

    def __iter__(self) -> Iterator[str]:
        yield from self.modules
        yield from (n for n in self._classes if n not in self.modules)

    def __len__(self) -> int:
        return len(self.modules.keys() | self._classes.keys())

    def __contains__(self, name: object) -> bool:
        return name in self.modules or name in self._classes

    def __repr__(self) -> str:
        return f"Registry({self.what!r}, {sorted(self)})"

    def lookup(self, name: str) -> type:
        try:
            return self[name]
        except (KeyError, TypeError):
            raise StreamlineError(f"unknown {self.what} {name!r}; choose from {sorted(self)}") from None

    def create(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self.lookup(name)(*args, **kwargs)

    def declared(self, name: str, attribute: str) -> Any:
        """A plug-in's class attribute (its ``description``, ``paper`` ...) without importing its module where the
        attribute is a literal in the class body: the module's source is read, the class whose ``name`` is ``name``
        found, and the literal evaluated.  A registered class, or an attribute that is not a literal, is read from the
        class itself (importing its module)."""
        module = self.modules.get(name)
        if name not in self._classes and module is not None:
            value = _literal_attribute(module, name, attribute)
            if value is not _MISSING:
                return value
        return getattr(self.lookup(name), attribute)
