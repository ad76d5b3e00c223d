"""Errors raised for bad input.  Each message names the input that was wrong and what to do instead."""


class StreamlineError(ValueError):
    """Bad input or an impossible request; the message says which input and what to do instead."""
