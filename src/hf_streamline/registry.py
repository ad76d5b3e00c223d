"""One name → class table per kind of plug-in (metrics, replacement kinds, export formats, objectives, merge rules,
healing methods, output similarities): a new plug-in is one file whose class carries ``name`` and is decorated with
the table's ``register``."""

from __future__ import annotations

from typing import Any, TypeVar

from .errors import StreamlineError

T = TypeVar("T", bound=type)


class Registry(dict):
    """``{name: class}`` with ``register`` (a class decorator keyed by ``cls.name``) and ``create`` (instantiate by
    name; an unknown name is a :class:`StreamlineError` listing the known ones).  ``what`` names the kind of plug-in in
    that error, e.g. ``"metric"``."""

    def __init__(self, what: str, classes: tuple[type, ...] = ()):
        super().__init__()
        self.what = what
        for cls in classes:
            self.register(cls)

    def register(self, cls: T) -> T:
        self[cls.name] = cls
        return cls

    def lookup(self, name: str) -> type:
        try:
            return self[name]
        except (KeyError, TypeError):
            raise StreamlineError(f"unknown {self.what} {name!r}; choose from {sorted(self)}") from None

    def create(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self.lookup(name)(*args, **kwargs)
