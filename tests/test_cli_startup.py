"""``hf-streamline --help`` builds only stubs: it imports none of torch, transformers or peft (issue 15: answer in
under 1.5 s; the time itself is a benchmark, benchmarks/cli_startup.py, not a timed test)."""

from __future__ import annotations

import json
import subprocess
import sys

from pathlib import Path

import pytest

from hf_streamline.cli import COMMANDS, build_parser, command_in, main

RECIPE = str(Path(__file__).resolve().parents[1] / "examples" / "recommended_25.yaml")
HEAVY = ("torch", "transformers", "peft", "accelerate", "datasets", "numpy")

PROBE = """
import io, json, sys
from contextlib import redirect_stdout
argv, heavy = json.loads(sys.argv[1]), set(json.loads(sys.argv[2]))
sys.argv = ["hf-streamline", *argv]
import hf_streamline_entry
out = io.StringIO()
with redirect_stdout(out):
    try:
        code = hf_streamline_entry.main()
    except SystemExit as exc:
        code = exc.code
print(json.dumps({"code": code, "out": out.getvalue(),
                  "heavy": sorted({m.split('.')[0] for m in sys.modules} & heavy)}))
"""


def probe(*argv: str) -> dict:
    """Run the console script's entry point in a fresh interpreter; what it printed and which heavy packages loaded."""
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(list(argv)), json.dumps(HEAVY)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_top_level_help_lists_every_command_without_importing_torch_or_transformers():
    got = probe("--help")
    assert got["code"] == 0
    assert got["heavy"] == []
    for name, (help_line, _) in COMMANDS.items():
        assert name in got["out"]
        assert help_line.split()[0] in got["out"]


def test_version_imports_nothing_heavy():
    got = probe("--version")
    assert got == {"code": 0, "out": got["out"], "heavy": []} and "hf-streamline" in got["out"]


def test_a_commands_own_help_is_complete():
    """``prune --help`` builds prune's full parser (its registry choices: torch is allowed there)."""
    got = probe("prune", "--help")
    assert got["code"] == 0
    for flag in ("--metric", "--remove", "--calibration", "--selection", "--fitness", "--output"):
        assert flag in got["out"]


def test_only_the_named_command_gets_its_full_parser():
    parser = build_parser(["heal", "--help"])
    sub = next(a for a in parser._actions if a.dest == "command")
    assert any(a.dest == "method" for a in sub.choices["heal"]._actions)
    assert [a.dest for a in sub.choices["prune"]._actions] == []  # a stub: no options, not even --help
    full = next(a for a in build_parser()._actions if a.dest == "command")
    assert all(len(p._actions) > 1 for p in full.choices.values())


def test_command_in_finds_the_first_word_that_is_not_an_option():
    assert command_in(["--version"]) is None
    assert command_in(["prune", "--remove", "8"]) == "prune"
    assert command_in(["-h", "merge"]) == "merge"


def test_a_misspelt_command_is_one_error_line(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["prnue", "--remove", "8"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "invalid choice: 'prnue'" in err[0]


def test_validate_only_checks_a_recipe_without_torch_or_transformers():
    got = probe("run", RECIPE, "--validate-only")
    assert got["code"] == 0 and "valid" in got["out"]
    assert got["heavy"] == []


def test_a_value_outside_its_choices_is_caught_by_validate_only(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("output: out\nmethod: remove\nremove:\n  selection: search\n  fitness: kll\n  remove: 8\n", encoding="utf-8")
    done = subprocess.run([sys.executable, "-c", "import sys, hf_streamline_entry; sys.exit(hf_streamline_entry.main())",
                           "run", str(recipe), "--validate-only"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "kll" in done.stderr and "'kl', 'ppl'" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


FULL_PARSERS = """
import json, sys
sys.modules['hf_streamline_entry'] = type(sys)('hf_streamline_entry')
sys.modules['hf_streamline_entry'].DEFER_REGISTRATION = True
from hf_streamline.cli import COMMANDS, build_parser
for name in COMMANDS:
    build_parser([name])  # export's description lists each format's own description, read without importing it
print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & set(json.loads(sys.argv[1])))))
"""


def test_every_commands_full_parser_takes_its_choices_without_importing_torch():
    """The choices come from hf_streamline.plugins (names without imports) and hf_streamline.options."""
    done = subprocess.run([sys.executable, "-c", FULL_PARSERS, json.dumps(HEAVY)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []
