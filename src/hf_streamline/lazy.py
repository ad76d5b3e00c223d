"""Package namespaces whose public names load on first use (PEP 562): importing the package stays cheap -- no torch,
transformers or peft -- and ``from package import Name`` works as with eager imports."""

from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_namespace(package: str, names: dict[str, str], namespace: dict[str, Any], *,
                   submodules: bool = False) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``.  ``names`` maps each public name to the submodule (relative to
    the package) that defines it; a name is imported when first read and kept in ``namespace`` (the package's
    globals).  With ``submodules`` any other name is tried as a submodule (``hf_streamline.scores`` as an attribute,
    as when the package imported it eagerly)."""

    def __getattr__(name: str) -> Any:
        module = names.get(name)
        if module is not None:
            value = getattr(importlib.import_module(f".{module}", package), name)
            namespace[name] = value
            return value
        if submodules and not name.startswith("__"):
            try:
                return importlib.import_module(f".{name}", package)
            except ModuleNotFoundError as exc:
                if exc.name != f"{package}.{name}":
                    raise
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(names))

    return __getattr__, __dir__
