"""hf_streamline's messages go through its logger (no print outside the command-line layer); --quiet / --verbose."""

from __future__ import annotations

import ast
import logging
import os
from pathlib import Path

import pytest

from hf_streamline.cli import build_parser
from hf_streamline import log as hf_log
from hf_streamline.log import ROOT, bars_on, configure_cli, get_logger, progress_bar, set_verbosity

SRC = Path(__file__).resolve().parents[1] / "src" / "hf_streamline"
CLI_LAYER = ("cli.py",)  # the only module that prints: results for the person at the terminal (workflows `say`)


def test_no_print_in_library_modules():
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC)
        if rel.parts[0] in CLI_LAYER:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                offenders.append(f"{rel}:{node.lineno}")
    assert offenders == []


@pytest.fixture
def restore_logging(monkeypatch):
    for var in ("TRANSFORMERS_VERBOSITY", "DATASETS_VERBOSITY", "TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS"):
        monkeypatch.delenv(var, raising=False)
    root = logging.getLogger(ROOT)
    level, handlers, propagate = root.level, list(root.handlers), root.propagate
    yield
    root.setLevel(level)
    root.handlers[:] = handlers
    root.propagate = propagate  # pytest's caplog listens at the root logger
    hf_log._BARS[0] = True
    import transformers

    transformers.logging.set_verbosity_warning()


def test_verbosity_levels_reach_the_logger_and_the_libraries(restore_logging, capsys):
    import transformers

    log = get_logger("hf_streamline.evaluation.suite")
    assert get_logger("somewhere").name == "hf_streamline.somewhere"
    configure_cli("normal")
    log.info("a note")
    log.debug("a detail")
    assert capsys.readouterr().err == "a note\n"
    configure_cli("quiet")
    log.info("a note")
    log.warning("a warning")
    assert capsys.readouterr().err == "a warning\n"
    assert os.environ["TQDM_DISABLE"] == "1" and transformers.logging.get_verbosity() == logging.ERROR
    assert progress_bar(range(2), disable=False).disable and not bars_on(True)  # a call's own progress=True too
    configure_cli("verbose")
    log.debug("a detail")
    assert capsys.readouterr().err == "a detail\n"
    assert transformers.logging.get_verbosity() == logging.INFO
    assert not progress_bar(range(2), disable=False).disable and bars_on(True) and not bars_on(False)
    with pytest.raises(ValueError, match="choose from"):
        configure_cli("loud")


def test_the_library_default_is_warnings_only(restore_logging, capsys):
    set_verbosity(logging.WARNING)
    get_logger(__name__).info("hidden")
    get_logger(__name__).warning("shown")
    assert capsys.readouterr().err == "shown\n"


def test_every_command_takes_verbose_or_quiet_but_not_both():
    parser = build_parser(["prune"])
    assert parser.parse_args(["prune", "--remove", "2", "--output", "o", "--quiet"]).verbosity == "quiet"
    assert parser.parse_args(["prune", "--remove", "2", "--output", "o"]).verbosity == "normal"
    with pytest.raises(SystemExit):
        parser.parse_args(["prune", "--remove", "2", "--output", "o", "--quiet", "--verbose"])
    full = next(a for a in build_parser()._actions if a.dest == "command")
    assert all(any(a.dest == "verbosity" for a in p._actions) for p in full.choices.values())
