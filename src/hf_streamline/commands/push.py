"""``hf-streamline push``: upload a saved model folder (model, tokenizer, plan, card, remote code) in one commit."""

from __future__ import annotations

import argparse

HELP = "upload a saved model folder to the Hugging Face Hub in one commit"  # the line of `hf-streamline --help` (read without building this parser)


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    from ..arguments.base import add_arguments
    from ..arguments.push import PushArguments

    add_arguments(sub.add_parser(name, help=HELP), PushArguments).set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..publishing import push_to_hub

    result = push_to_hub(args.folder, args.repo_id, private=True if args.private else None, revision=args.revision,
                         token=args.token, commit_message=args.commit_message, report=args.report,
                         regenerate_card=args.regenerate_card, delete_stale=not args.keep_stale,
                         include=args.include, base_model=args.base_model)
    if result.excluded:
        more = len(result.excluded) - 5
        shown = ", ".join(result.excluded[:5]) + (f" and {more} more" if more > 0 else "")
        print(f"kept local (hidden files, logs and training output; --include PATTERN uploads one): {shown}")
    if result.changed:
        extra = f", deleted {len(result.deleted)} stale file(s)" if result.deleted else ""
        card = " (model card rendered from the plan)" if result.card_generated else ""
        print(f"pushed {len(result.files)} file(s){extra} to {result.repo_id}@{result.revision}{card}")
    else:
        print(f"{result.repo_id}@{result.revision} already has every file of {args.folder}: no commit was made")
    print(result.commit_url)
    return 0
