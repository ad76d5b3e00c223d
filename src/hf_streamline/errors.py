"""Errors raised for bad input.  Each message names the input that was wrong and what to do instead."""

from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Any, Callable, Iterator

_UNSET = object()
_NAME = re.compile(r"\{([a-z][a-z0-9_]*)\}")  # an argument named in a message: {calibration}


def plain(what: str) -> str:
    """An argument description such as ``"{model} 'x'"`` as a Python caller reads it (``"model 'x'"``): for warnings
    and log lines, which are not rendered by the command line."""
    return _NAME.sub(r"\1", what)


class StreamlineError(ValueError):
    """Bad input or an impossible request; the message says which input and what to do instead.

    ``argument`` (with its ``value``) names the Python argument that was wrong, e.g. ``target.layers``: a Python caller
    reads ``target.layers=0: remove at least one layer``, and the command line, which maps the argument to its flag
    (``cli_message``), prints ``--remove 0: remove at least one layer``.

    ``mentions``: other arguments the message names as ``{name}`` (``"pass {calibration}"``): a Python caller reads
    the argument's name (``pass calibration``), the command line its flag (``pass --calibration``)."""

    def __init__(self, message: str = "", *, argument: str | None = None, value: Any = _UNSET,
                 mentions: tuple[str, ...] = ()):
        super().__init__(message)
        self.argument = argument
        self.value = value
        # a helper given what="{model}" leads its message with it: mentioned without saying so (only there: values and
        # paths later in a message are the user's and may hold braces)
        lead = _NAME.match(message)
        self.mentions = tuple(dict.fromkeys([*mentions, *([lead.group(1)] if lead else [])]))

    def _render(self, flag: str | None = None, flag_for: Callable[[str], str | None] | None = None) -> str:
        """The message, led by the argument as Python names it (``target.layers=0``) or by its ``flag``
        (``--remove 0``); each mentioned argument named the same way."""
        message = str(self.args[0]) if self.args else ""
        for name in self.mentions:
            message = message.replace("{" + name + "}", (flag_for(name) if flag_for else None) or name)
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
        return self._render(flag_for(self.argument) if self.argument else None, flag_for)


@contextmanager
def naming(argument: str, value: Any = _UNSET) -> Iterator[None]:
    """Raise a :class:`StreamlineError` that names no argument again, naming ``argument`` (and ``value``): a helper's
    error, e.g. a file reader's (which names the file), reported as the argument the caller was given."""
    try:
        yield
    except StreamlineError as exc:
        if exc.argument is not None:
            raise
        raise StreamlineError(exc.args[0] if exc.args else "", argument=argument, value=value,
                              mentions=exc.mentions) from exc


@contextmanager
def mentioning(*names: str) -> Iterator[None]:
    """A helper's error whose message names an argument as ``{name}`` (the helper was given ``what="{name}"``): the
    error says so, so that the command line shows the flag and a Python caller the argument's name."""
    try:
        yield
    except StreamlineError as exc:
        new = tuple(n for n in names if n not in exc.mentions)
        if not new:
            raise
        raise StreamlineError(exc.args[0] if exc.args else "", argument=exc.argument, value=exc.value,
                              mentions=exc.mentions + new) from exc
