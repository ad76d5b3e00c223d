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
