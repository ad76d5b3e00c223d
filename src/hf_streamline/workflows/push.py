"""The ``push`` workflow (``hf-streamline push``; from Python: ``hf_streamline.cli.call(...Arguments(...))`` or
``workflows.push.run(arguments)``). Upload a saved model folder (model, tokenizer, plan, card, remote code) in one commit."""

from __future__ import annotations

from typing import Any

from .common import Say, note


def run(args: Any, say: Say = note) -> int:
    from ..publishing import push_to_hub

    result = push_to_hub(args.folder, args.repo_id, private=True if args.private else None, revision=args.revision,
                         token=args.token, commit_message=args.commit_message, report=args.report,
                         regenerate_card=args.regenerate_card, delete_stale=not args.keep_stale,
                         include=args.include, base_model=args.base_model)
    if result.excluded:
        more = len(result.excluded) - 5
        shown = ", ".join(result.excluded[:5]) + (f" and {more} more" if more > 0 else "")
        say(f"kept local (hidden files, logs and training output; --include PATTERN uploads one): {shown}")
    if result.changed:
        extra = f", deleted {len(result.deleted)} stale file(s)" if result.deleted else ""
        card = " (model card rendered from the plan)" if result.card_generated else ""
        say(f"pushed {len(result.files)} file(s){extra} to {result.repo_id}@{result.revision}{card}")
    else:
        say(f"{result.repo_id}@{result.revision} already has every file of {args.folder}: no commit was made")
    say(result.commit_url)
    return 0
