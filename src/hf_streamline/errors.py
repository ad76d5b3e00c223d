"""Errors raised for bad input.  Each message names the input that was wrong and what to do instead."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

_UNSET = object()


class StreamlineError(ValueError):
    """Bad input or an impossible request; the message says which input and what to do instead.

    ``argument`` (with its ``value``) names the Python argument that was wrong, e.g. ``target.layers``: a Python caller
    reads ``target.layers=0: remove at least one layer``, and the command line, which maps the argument to its flag
    (``cli_message``), prints ``--remove 0: remove at least one layer``."""

    def __init__(self, message: str = "", *, argument: str | None = None, value: Any = _UNSET):
        super().__init__(message)
        self.argument = argument
        self.value = value

    def _render(self, flag: str | None = None) -> str:
        """The message, led by the argument as Python names it (``target.layers=0``) or by its ``flag``
        (``--remove 0``)."""
        message = str(self.args[0]) if self.args else ""
        if self.argument is None:
            return message
        if flag is not None:
            subject = flag if self.value is _UNSET else f"{flag} {self.value}"
        else:
            subject = self.argument if self.value is _UNSET else f"{self.argument}={self.value!r}"
        return f"{subject}: {message}"

    def __str__(self) -> str:
        return self._render()

    def cli_message(self, flag_for: Callable[[str], str | None]) -> str:
        """The message with the argument named by its command-line flag (``flag_for``: argument -> flag or None),
        where there is one; else as ``str()``."""
        return self._render(flag_for(self.argument) if self.argument else None)


@contextmanager
def naming(argument: str, value: Any = _UNSET) -> Iterator[None]:
    """Raise a :class:`StreamlineError` that names no argument again, naming ``argument`` (and ``value``): a helper's
    error, e.g. a file reader's (which names the file), reported as the argument the caller was given."""
    try:
        yield
    except StreamlineError as exc:
        if exc.argument is not None:
            raise
        raise StreamlineError(str(exc), argument=argument, value=value) from exc
