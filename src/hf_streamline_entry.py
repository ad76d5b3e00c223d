"""The ``hf-streamline`` console script: ``hf_streamline.cli.main`` behind a guard for Ctrl-C.

The script imports its entry module before any of its code runs; the named command's parser, and then the command,
import torch and transformers (seconds; ``hf-streamline --help`` imports neither).  This module is outside the package, so that a Ctrl-C during those imports (or at any other moment) ends
with one line on stderr and exit code 130, never a traceback: while the modules load, SIGINT ends the process at once
(nothing is written yet); after that, ``hf_streamline.cli.main`` turns KeyboardInterrupt into that line.  It also tells ``hf_streamline/__init__`` to leave the
Auto-class registration to ``hf_streamline.cli.main`` (after the arguments are parsed), so that ``--help`` is fast.
"""

import sys  # built in, already loaded: this module imports nothing else before main's guard is up

DEFER_REGISTRATION = True  # read by hf_streamline/__init__.py
INTERRUPTED = "interrupted; no output was written"


def _exit_interrupted(signum: int, frame: object) -> None:
    """SIGINT while the modules load: nothing has been written yet, so end at once.  (Raising KeyboardInterrupt
    inside a C extension's initialisation -- numpy's, under torch -- can turn it into an ImportError and a crash
    later on, with a long traceback.)"""
    import os

    try:
        sys.stderr.write(INTERRUPTED + "\n")
        sys.stderr.flush()
    finally:
        os._exit(130)


def _ignore_further_interrupts() -> None:
    """Exiting now: a late Ctrl-C must not print a traceback while the interpreter shuts down."""
    try:
        import _signal

        _signal.signal(_signal.SIGINT, _signal.SIG_IGN)
    except BaseException:  # noqa: BLE001 - not the main thread, or interrupted once more: nothing left to protect
        pass


def main() -> int:
    import _signal  # built in: loads without running any Python code

    try:
        before = _signal.getsignal(_signal.SIGINT)
        if before is _signal.default_int_handler:  # (a parent that ignores SIGINT keeps it ignored)
            _signal.signal(_signal.SIGINT, _exit_interrupted)
        try:
            from hf_streamline import cli  # light; the command's parser may import torch, transformers ...

            cli.build_parser(sys.argv[1:])
        finally:
            if before is _signal.default_int_handler:  # from here on cli.main handles Ctrl-C (and cleans up)
                _signal.signal(_signal.SIGINT, before)
        return cli.main()
    except KeyboardInterrupt:  # between the imports and cli.main's own handler
        print(INTERRUPTED, file=sys.stderr)
        return 130
    finally:
        _ignore_further_interrupts()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
