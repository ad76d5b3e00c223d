"""The ``hf-streamline`` command line: a thin layer over the Python API.

Each sub-command is one line of the table below: its ``--help`` line and the library call that does its work
(``hf_streamline.workflows.<name>.run``, given the command's arguments dataclass and ``say=print``).  Its parser is
generated from its arguments dataclass (``hf_streamline.arguments``).  This module parses and prints; it holds no
policy.
"""

from __future__ import annotations

import argparse
import importlib
import contextlib
import os
import sys
from typing import NoReturn

from . import __version__
from .errors import StreamlineError

# command name -> its line of `hf-streamline --help` and the library call that does its work (``module:function``,
# called with the command's arguments dataclass and ``say=print``); the options are the command's arguments dataclass
# (hf_streamline.arguments.COMMAND_ARGUMENTS).  One line each: a command is data.
COMMANDS: dict[str, tuple[str, str]] = {
    "score": ("score decoder layers (and blocks) by importance", "hf_streamline.workflows.score:run"),
    "prune": ("remove the least important decoder layers and save a plain checkpoint",
              "hf_streamline.workflows.prune:run"),
    "apply": ("apply a saved streamline_plan.json to a base model", "hf_streamline.workflows.apply:run"),
    "convert": ("dequantize a .gguf into a plain safetensors folder (default: bundled SmolLM2, cached)",
                "hf_streamline.workflows.convert:run"),
    "run": ("run a YAML recipe (model, calibration, method, healing, evaluation, output, push)",
            "hf_streamline.workflows.run:run"),
    "mergekit": ("export a layer-removal plan as a mergekit passthrough recipe", "hf_streamline.workflows.mergekit:run"),
    "demo": ("the recommended recipe, scaled down, on the bundled SmolLM2: prune, heal, evaluate and card in one "
             "command (~15 min on 2 CPUs)", "hf_streamline.workflows.demo:run"),
    "merge": ("merge runs of similar consecutive layers (SLM window search) into one layer each",
              "hf_streamline.workflows.merge:run"),
    "similarity": ("layer x layer similarity map (linear/RBF CKA with unbiased HSIC, or cosine)",
                   "hf_streamline.workflows.similarity:run"),
    "evaluate": ("evaluate pruned (and dense) models: perplexity, zero-shot tasks, stability, speed; writes "
                 "report.json, report.md and PNGs", "hf_streamline.workflows.evaluate:run"),
    "card": ("render the model card (README.md) of a saved model folder without pushing",
             "hf_streamline.workflows.card:run"),
    "push": ("upload a saved model folder to the Hugging Face Hub in one commit", "hf_streamline.workflows.push:run"),
    "replace": ("replace the most redundant block of layers by one trained module (LLM-Streamline) or by a fitted "
                "linear map folded into the layer before it (--replacement linear)",
                "hf_streamline.workflows.replace:run"),
    "export": ("export a pruned model to ONNX or quantize it with optimum-quanto", "hf_streamline.workflows.export:run"),
    "heal": ("heal a pruned model: partial-layer training, LoRA, QLoRA or distillation",
             "hf_streamline.workflows.heal:run"),
    "compare-healing": ("compare healing methods side by side under one token budget",
                        "hf_streamline.workflows.compare_healing:run"),
    "clean": ("remove the staging and work folders a killed run on DIR left behind", "hf_streamline.workflows.clean:run"),
}


def run_command(args) -> int:
    """Hand the parsed arguments (a command's arguments dataclass) to the command's library call; its result lines
    are printed."""
    module, _, function = COMMANDS[args.command][1].partition(":")
    return int(getattr(importlib.import_module(module), function)(args, say=print) or 0)


class OneLineParser(argparse.ArgumentParser):
    """argparse's own errors (an unknown option, an invalid choice, a missing argument) as one line, like ours:
    ``hf-streamline CMD: error: ...`` and exit 2, without the usage block.  Sub-parsers inherit the class."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def command_in(argv: list[str]) -> str | None:
    """The sub-command ``argv`` names: its first word that is not an option (the top level takes only ``--help`` and
    ``--version``, neither with a value); None when there is none."""
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The ``hf-streamline`` parser.  With ``argv``, only the sub-command it names gets its full parser (which may import
    torch, transformers and the plug-in registries for its choices); every other one is a stub that carries its
    one-line help (from the table), enough for ``hf-streamline --help`` and for argparse's check of the command
    name.  So ``hf-streamline --help`` imports no command's dependencies (tests/test_cli_startup.py).  Without ``argv``
    every parser is complete."""
    parser = OneLineParser(prog="hf-streamline", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"hf-streamline {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    wanted = None if argv is None else command_in(argv)
    for name, (help_line, _) in COMMANDS.items():
        if argv is None or name == wanted:  # generated from the command's arguments dataclass (hf_streamline.arguments)
            from .arguments import arguments_class
            from .arguments.base import add_arguments

            cls = arguments_class(name)
            describe = getattr(cls, "parser_description", None)
            add_arguments(sub.add_parser(name, help=help_line, description=describe() if describe else None),
                          cls)
        else:
            sub.add_parser(name, help=help_line, add_help=False)
    return parser


# a library argument -> the flag that sets it, where the flag is not named after it (the others map by name:
# ``x`` or ``config.x`` -> the option whose dest is ``x``)
ARGUMENT_FLAGS = {"target.layers": "--remove", "target.ratio": "--ratio", "target.param_ratio": "--param-ratio",
                  "count": "--remove", "search.top_k": "--search-top-k", "search.samples": "--search-samples",
                  "config.source": "--data", "sources": "--data", "config.format": "--data-format",
                  "config.kl_temperature": "--temperature", "source": "--calibration", "spec": "--model",
                  "selection_plan": "--fold", "k": "--kd-top-k", "train": "--train-data"}


def flag_lookup(parser: argparse.ArgumentParser, command: str):
    """``argument -> flag`` for the errors of ``command`` (StreamlineError.cli_message)."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    flags: dict[str, str] = {}
    for a in sub._actions:
        if a.option_strings and a.help != argparse.SUPPRESS:
            flag = next((o for o in a.option_strings if o.startswith("--")), a.option_strings[0])
            # several flags storing into one dest (--load-in-4bit / --load-in-8bit): name them all
            flags[a.dest] = f"{flags[a.dest]}/{flag}" if a.dest in flags and flag not in flags[a.dest] else flag

    def flag_for(argument: str) -> str | None:
        return ARGUMENT_FLAGS.get(argument) or flags.get(argument.rsplit(".", 1)[-1])

    return flag_for


# argparse dests that name what a command writes; each is checked against the command's inputs before any work
OUTPUT_DESTS = ("output", "plot", "train_output")
# commands whose --output is meant to go inside their input folder (the card is written into the model folder)
WRITES_INTO_INPUT = ("card",)


def guard_outputs(args: argparse.Namespace) -> None:
    """Refuse an output that is, contains or lies inside an input; clear what a killed run on it left behind."""
    from .utils import OUTPUT_OWNER, check_not_an_input, inputs_of, remove_stale_work

    if args.command in WRITES_INTO_INPUT:
        return
    inputs = inputs_of(args)
    for dest in OUTPUT_DESTS:
        value = getattr(args, dest, None)
        if value:  # a training folder holds the checkpoint it resumes from
            check_not_an_input(value, {k: v for k, v in inputs.items() if not (dest == "train_output" and k ==
                                                                              "resume_from_checkpoint")},
                               what="--" + dest.replace("_", "-"))
    if getattr(args, "output", None):
        remove_stale_work(args.output)
        OUTPUT_OWNER.set(str(args.output))


def register_models() -> None:
    """Register StreamlineConfig / StreamlineForCausalLM with the Auto classes (``import hf_streamline`` does it too;
    the console script defers it past argument parsing, so that ``--help`` stays fast)."""
    from . import modeling  # noqa: F401


def call(cfg, guard: bool = True) -> int:
    """Run the command whose arguments ``cfg`` holds (an ``hf_streamline.arguments`` dataclass, e.g.
    ``PruneArguments(...)``) in this process, as the command line does after parsing: counts checked, models
    registered, and with ``guard`` the output checked against the inputs.  Errors raise StreamlineError; returns the
    command's exit code."""
    from .validation import check_counts

    check_counts(cfg)
    register_models()
    if guard:
        guard_outputs(cfg)
    return run_command(cfg)


def main(argv: list[str] | None = None) -> int:
    try:  # imports what the command's parser needs: Ctrl-C here is one line too
        argv = sys.argv[1:] if argv is None else argv
        parser = build_parser(argv)
        args = parser.parse_args(argv)
        from .arguments import arguments_class
        from .arguments.base import from_namespace
        from .utils import without_secrets

        args = from_namespace(arguments_class(args.command), args)  # the command's arguments dataclass

        args.argv = without_secrets(argv, getattr(args, "token", None))  # e.g. for the command that resumes a failed run
        from .utils import WRITTEN

        done = len(WRITTEN)
    except KeyboardInterrupt:
        print("interrupted; no output was written", file=sys.stderr)
        return 130
    finished = False  # the ranks of a distributed run meet at a barrier before teardown only when all got this far
    try:
        from .log import configure_cli
        from .validation import check_counts

        configure_cli(args.verbosity)
        check_counts(args)  # --batch-size 0, --samples -1 ...: before anything is read or written
        if not getattr(args, "validate_only", False):  # a validation loads no model
            register_models()
        guard_outputs(args)
        from .utils import is_main_process

        if not is_main_process():  # under accelerate launch one report, from the process that writes the outputs
            with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
                code = run_command(args)
        else:
            code = run_command(args)
        finished = True
        return code
    except StreamlineError as exc:
        print(f"hf-streamline {args.command}: error: {exc.cli_message(flag_lookup(parser, args.command))}",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        written = WRITTEN[done:]
        print("interrupted; " + (f"written completely before that: {', '.join(map(str, written))}" if written
                                 else "no output was written") + (f"; {exc}" if str(exc) else ""), file=sys.stderr)
        return 130
    finally:
        from .utils import end_distributed

        end_distributed(synchronize=finished)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
