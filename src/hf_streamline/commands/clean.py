"""``hf-streamline clean DIR``: remove what a killed run on DIR left behind.

That is the staging siblings ``.DIR.tmp-*`` / ``.DIR.old-*`` beside it and the ``$TMPDIR/hf_streamline_*`` work
folders whose process is gone.  DIR itself, ``DIR.partial/`` and ``DIR.training/`` (checkpoints to resume from) are
kept.  Every command that writes DIR does this first on its own; this command is for doing it by hand.
"""

from __future__ import annotations

import argparse

HELP = "remove the staging and work folders a killed run on DIR left behind"  # the line of `hf-streamline --help` (read without building this parser)


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    from ..arguments.base import add_arguments
    from ..arguments.clean import CleanArguments

    add_arguments(sub.add_parser(name, help=HELP), CleanArguments).set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import shutil

    from ..utils import stale_work

    found = stale_work(args.folder)
    if not args.dry_run:
        for p in found:
            shutil.rmtree(p, ignore_errors=True)
    verb = "would remove" if args.dry_run else "removed"
    for p in found:
        print(f"{verb} {p}")
    print(f"{verb} {len(found)} left-over folder(s)" if found else "nothing to clean")
    return 0
