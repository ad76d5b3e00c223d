"""The command line only parses and prints; what a command does is a library call (hf_streamline.workflows) on its
arguments dataclass, which a Python caller gets too: the same checks, errors naming Python arguments, result lines
through the logger, the caller's arguments left as given."""

from __future__ import annotations

import dataclasses
import json
import logging

import pytest

from hf_streamline.arguments.prune import PruneArguments
from hf_streamline.cli import COMMANDS, main
from hf_streamline.errors import StreamlineError
from hf_streamline.workflows import prune as prune_workflow



@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_a_command_is_a_line_of_data_and_a_library_call(name):
    """No policy in the command line: a command is its --help line, its arguments dataclass (the options) and the
    library function that does its work, called with the arguments and ``say`` (where its result lines go)."""
    import importlib
    import inspect

    from hf_streamline.arguments import arguments_class

    help_line, target = COMMANDS[name]
    assert help_line and help_line[0].islower()
    module, _, function = target.partition(":")
    assert module.startswith("hf_streamline.workflows.")
    run = getattr(importlib.import_module(module), function)
    assert list(inspect.signature(run).parameters)[:2] == ["args", "say"]
    assert inspect.signature(run).parameters["say"].default is not inspect.Parameter.empty  # Python: the logger
    assert arguments_class(name).command == name


def test_there_is_no_command_module_left():
    import importlib.util

    assert importlib.util.find_spec("hf_streamline.commands") is None


def _arguments(stories_dir, data_dir, tmp_path, **changes) -> PruneArguments:
    text = str(data_dir / "text" / "stories260k_samples.txt")
    arguments = PruneArguments(model=str(stories_dir), remove=1, calibration=text, samples=4, seq_len=32,
                               output=str(tmp_path / "out"))
    return dataclasses.replace(arguments, **changes)


def test_a_workflow_called_from_python_does_what_the_command_does(stories_dir, data_dir, tmp_path, caplog):
    from hf_streamline.log import set_verbosity

    arguments = _arguments(stories_dir, data_dir, tmp_path)
    given = dataclasses.replace(arguments)
    set_verbosity(logging.INFO)
    try:
        with caplog.at_level(logging.INFO, logger="hf_streamline"):
            assert prune_workflow.run(arguments) == 0
    finally:
        set_verbosity(logging.WARNING)
    assert arguments == given and arguments.metric is None  # the default metric was filled in a copy
    lines = [r.getMessage() for r in caplog.records if r.name == "hf_streamline.workflows"]
    assert any(line.startswith("removed layers (1 of ") for line in lines), lines
    assert any(line.startswith("perplexity on calibration: ") for line in lines), lines
    plan = json.loads((tmp_path / "out" / "streamline_plan.json").read_text())
    assert (tmp_path / "out" / "scores.png").exists()  # the chart the command writes, written for Python too

    cli_out = tmp_path / "cli"
    argv = ["prune", "--model", str(stories_dir), "--remove", "1", "--calibration", arguments.calibration,
            "--samples", "4", "--seq-len", "32", "--output", str(cli_out)]
    assert main(argv) == 0
    assert json.loads((cli_out / "streamline_plan.json").read_text())["removed_layers"] == plan["removed_layers"]


def test_a_workflow_error_names_the_python_argument_and_the_command_its_flag(stories_dir, data_dir, tmp_path,
                                                                             capsys):
    arguments = _arguments(stories_dir, data_dir, tmp_path, calibration=None)
    with pytest.raises(StreamlineError) as info:
        prune_workflow.run(arguments)
    assert str(info.value).startswith("metric='block_influence': scores layers on data: pass calibration (a file")
    assert main(["prune", "--model", str(stories_dir), "--remove", "1", "--output", str(tmp_path / "cli")]) == 2
    err = capsys.readouterr().err
    assert "error: --metric block_influence: scores layers on data: pass --calibration (a file" in err
    # a helper's check (a file that does not exist) names the argument the same two ways
    bad = _arguments(stories_dir, data_dir, tmp_path, calibration=str(tmp_path / "missing.txt"))
    with pytest.raises(StreamlineError) as info:
        prune_workflow.run(bad)
    assert str(info.value).startswith("calibration ") and "--" not in str(info.value).split(":")[0]
    assert main(["prune", "--model", str(stories_dir), "--remove", "1", "--calibration", bad.calibration,
                 "--output", str(tmp_path / "cli")]) == 2
    assert "error: --calibration " in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "cli").exists()


def test_an_error_renders_each_mentioned_argument_as_python_names_it_or_as_its_flag():
    from hf_streamline.cli import build_parser, flag_lookup

    flag_for = flag_lookup(build_parser(["score"]), "score")
    assert flag_for("quantize") == "--load-in-4bit/--load-in-8bit"  # one dest, two flags: both named
    exc = StreamlineError("the model is already quantized; drop {quantize} (or give {block_size})", argument="metric",
                          value="taylor", mentions=("quantize", "block_size"))
    assert str(exc) == "metric='taylor': the model is already quantized; drop quantize (or give block_size)"
    assert exc.cli_message(flag_for) == ("--metric taylor: the model is already quantized; drop "
                                         "--load-in-4bit/--load-in-8bit (or give --block-size)")
    # a helper given what="{model}" leads with it: mentioned without saying so; braces later are the user's data
    lead = StreamlineError("{model} '/runs/{seed}/x': no such folder")
    assert lead.mentions == ("model",)
    assert str(lead) == "model '/runs/{seed}/x': no such folder"
    assert lead.cli_message(lambda name: "--" + name) == "--model '/runs/{seed}/x': no such folder"
    assert str(StreamlineError("a dict {module name: device} stays as written")) == \
        "a dict {module name: device} stays as written"
