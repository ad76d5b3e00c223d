"""The ``clean`` workflow (``hf-streamline clean``; from Python: ``hf_streamline.cli.call(...Arguments(...))`` or
``workflows.clean.run(arguments)``). Remove what a killed run on DIR left behind.

That is the staging siblings ``.DIR.tmp-*`` / ``.DIR.old-*`` beside it and the ``$TMPDIR/hf_streamline_*`` work
folders whose process is gone.  DIR itself, ``DIR.partial/`` and ``DIR.training/`` (checkpoints to resume from) are
kept.  Every command that writes DIR does this first on its own; this command is for doing it by hand.
"""

from __future__ import annotations

from typing import Any

from .common import Say, note


def run(args: Any, say: Say = note) -> int:
    import shutil

    from ..utils import stale_work

    found = stale_work(args.folder)
    if not args.dry_run:
        for p in found:
            shutil.rmtree(p, ignore_errors=True)
    verb = "would remove" if args.dry_run else "removed"
    for p in found:
        say(f"{verb} {p}")
    say(f"{verb} {len(found)} left-over folder(s)" if found else "nothing to clean")
    return 0
