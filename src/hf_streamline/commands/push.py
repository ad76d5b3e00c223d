"""``hf-streamline push``: upload a saved model folder (model, tokenizer, plan, card, remote code) in one commit."""

from __future__ import annotations

import argparse

HELP = "upload a saved model folder to the Hugging Face Hub in one commit"  # the line of `hf-streamline --help` (read without building this parser)


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help=HELP)
    p.add_argument("folder", metavar="DIR", help="model folder written by hf-streamline (prune / apply / merge / replace)")
    p.add_argument("--repo-id", required=True, help="NAME or NAMESPACE/NAME of the Hub model repository (created if missing)")
    p.add_argument("--private", action="store_true", help="create the repository private (an existing one keeps its visibility)")
    p.add_argument("--revision", default=None, help="branch to commit to (created from main if missing; default main)")
    p.add_argument("--token", default=None,
                   help="Hub access token (default: HF_TOKEN or the stored `hf auth login` token); never written anywhere")
    p.add_argument("--commit-message", default=None, help="commit message (default: says what the plan did)")
    p.add_argument("--report", default=None,
                   help="evaluation report.json for a card rendered at push time (default: report/report.json or report.json in DIR)")
    p.add_argument("--regenerate-card", action="store_true",
                   help="render the card again for this repo id instead of uploading DIR/README.md (DIR is not modified)")
    p.add_argument("--keep-stale", action="store_true",
                   help="keep weight files on the Hub that DIR no longer has (default: delete them in the same commit)")
    p.add_argument("--include", action="append", default=[], metavar="PATTERN",
                   help="also upload files that stay local by default (hidden files such as .env, *.log, training "
                        "output OUTPUT.training/ and checkpoint-*): a path, file name or folder pattern (repeatable). "
                        "A file holding your Hub token is refused whatever this says")
    from .common import add_base_model_arg

    add_base_model_arg(p, help="Hub id of the base model where the plan records a local folder: the uploaded card "
                               "gets base_model and base_model_relation (DIR is not modified)")
    p.set_defaults(func=run)


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
