"""One name per concept (README table): the old spellings parse into the new option with a warning, stay out of
``--help``, and work as recipe keys for one release."""

from __future__ import annotations

import logging

import pytest

from hf_streamline.cli import build_parser
from hf_streamline.arguments.base import DeprecatedFlag
from hf_streamline.errors import StreamlineError
from hf_streamline.recipes.schema import normalise_section

RENAMED = {"--eval-tokens": "--ppl-tokens", "--ppl-max-tokens": "--ppl-tokens", "--lr": "--learning-rate"}


def _parsers():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return sub.choices


@pytest.mark.parametrize("argv, dest, value, old", [
    (["prune", "--method", "taylor", "--remove", "1", "--output", "o"], "metric", "taylor", "--method"),
    (["prune", "--eval-tokens", "64", "--remove", "1", "--output", "o"], "ppl_tokens", 64, "--eval-tokens"),
    (["merge", "--calibration", "c", "--remove", "1", "--eval-tokens", "64", "--output", "o"], "ppl_tokens", 64,
     "--eval-tokens"),
    (["replace", "--lr", "0.001", "--output", "o"], "learning_rate", 0.001, "--lr"),
    (["evaluate", "--ppl-max-tokens", "64", "--output", "o"], "ppl_tokens", 64, "--ppl-max-tokens"),
    (["heal", "--data", "d", "--eval-tokens", "64", "--output", "o"], "ppl_tokens", 64, "--eval-tokens"),
])
def test_an_old_spelling_sets_the_new_option_and_warns(argv, dest, value, old, caplog):
    with caplog.at_level(logging.WARNING, logger="hf_streamline"):
        args = build_parser(argv).parse_args(argv)
    assert getattr(args, dest) == value
    assert [r.getMessage() for r in caplog.records] == [
        f"{old} is deprecated and will be removed in the next release; use {RENAMED.get(old, '--metric')}"]


def test_the_new_spellings_parse_without_a_warning(caplog):
    argv = ["prune", "--metric", "taylor", "--ppl-tokens", "64", "--remove", "1", "--output", "o"]
    with caplog.at_level(logging.WARNING, logger="hf_streamline"):
        args = build_parser(argv).parse_args(argv)
    assert (args.metric, args.ppl_tokens) == ("taylor", 64) and caplog.records == []


def test_no_command_shows_an_old_spelling_in_its_help():
    for name, parser in _parsers().items():
        shown = parser.format_help()
        for old in (*RENAMED, "--method"):
            if name in ("heal", "compare-healing") and old == "--method":
                continue  # heal's --method is the healing method (its own concept)
            assert f"{old} " not in shown and f"{old}\n" not in shown, (name, old)
        hidden = [a for a in parser._actions if isinstance(a, DeprecatedFlag)]
        for action in hidden:
            assert any(action.dest == a.dest and not isinstance(a, DeprecatedFlag) for a in parser._actions)


def test_an_old_recipe_key_reads_as_the_new_one_and_both_together_are_refused(caplog):
    with caplog.at_level(logging.WARNING, logger="hf_streamline"):
        out = normalise_section("remove", "prune", {"method": "taylor", "eval_tokens": 100, "remove": 2})
    assert out == {"metric": "taylor", "ppl_tokens": 100, "remove": 2}
    assert "recipe key `remove.method` is deprecated" in caplog.text and "write `remove.metric`" in caplog.text
    assert normalise_section("evaluate", "evaluate", {"ppl_max_tokens": 100}) == {"ppl_tokens": 100}
    assert normalise_section("replace", "replace", {"lr": 1e-3}) == {"learning_rate": 1e-3}
    with pytest.raises(StreamlineError, match="`remove.eval_tokens` and `remove.ppl_tokens` name the same option"):
        normalise_section("remove", "prune", {"eval_tokens": 100, "ppl_tokens": 200, "remove": 2})
