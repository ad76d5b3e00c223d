"""A clone is enough (issue 18, section 1): nothing in the repository needs a folder beside it, the only allowed skip
is the opt-in real-Hub push, and the package carries the data its demo needs."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUTSIDE = re.compile(r"\.\./shared|shared/data|HF_STREAMLINE_SHARED_DATA")


def _tracked() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [ROOT / line for line in out.splitlines() if line]


def test_readme_docs_examples_tests_and_package_name_no_path_outside_the_repository():
    offenders = []
    for p in _tracked():
        rel = p.relative_to(ROOT)
        if rel.parts[0] in ("benchmarks",) or rel.name in ("CHANGELOG.md", "BENCHMARKS.md") or rel == Path(__file__).relative_to(ROOT):
            continue  # benchmarks may read the larger shared data; the changelog tells history
        if p.suffix not in (".md", ".py", ".yaml", ".yml", ".toml", ".txt", ".cfg", ".jinja") and p.name != "run":
            continue
        for n, line in enumerate(p.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if OUTSIDE.search(line):
                offenders.append(f"{rel}:{n}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_the_only_skip_in_the_suite_is_the_opt_in_real_hub_push():
    skips = []
    for p in sorted((ROOT / "tests").glob("*.py")):
        for n, line in enumerate(p.read_text().splitlines(), 1):
            if re.search(r"pytest\.skip\(|importorskip|mark\.skipif|mark\.skip\b", line) and p.name != Path(__file__).name:
                skips.append((p.name, n, line.strip()))
    # a case that cannot exist on this machine (e.g. "--device cuda without CUDA" where CUDA is present) is not a
    # missing-data skip; anything else is
    skips = [s for s in skips if "torch.cuda.is_available()" not in s[2]]
    assert [s[0] for s in skips] == ["test_publishing_hub.py"], skips
    assert "HF_STREAMLINE_REAL_HUB" in skips[0][2]


def test_bundled_data_is_package_data_small_and_attributed():
    from hf_streamline.data import ROOT as BUNDLED, available, bundled_path, resolve_data_spec

    names = available()
    for needed in ("text/wikitext2_test.raw", "train/wikipedia_30_articles.txt", "train/c4_300_docs.jsonl",
                   "eval/arc_easy.jsonl", "eval/piqa.jsonl", "eval/boolq.jsonl"):
        assert needed in names
    licences = (BUNDLED / "LICENSES.md").read_text()
    for name in names:
        assert f"`{name}`" in licences, f"{name} has no line in LICENSES.md"
    assert not any("ptb" in n or "alpaca" in n for n in names)  # PTB is LDC-derived, Alpaca non-commercial
    vendored = sum(p.stat().st_size for p in BUNDLED.rglob("*") if p.is_file())
    vendored += sum(p.stat().st_size for p in (ROOT / "tests" / "fixtures").rglob("*") if p.is_file())
    assert vendored < 15 * 2 ** 20
    assert resolve_data_spec("bundled:eval") == str(bundled_path("eval")) and resolve_data_spec("x.txt") == "x.txt"
    pyproject = (ROOT / "pyproject.toml").read_text()
    for sub in ("data/text/*", "data/train/*", "data/eval/*", "data/LICENSES.md"):
        assert f'"{sub}"' in pyproject  # installed with the package: `pip install .` then `hf-streamline demo`


def test_unknown_bundled_name_is_one_clear_error():
    import pytest

    from hf_streamline.data import resolve_data_spec
    from hf_streamline.errors import StreamlineError

    with pytest.raises(StreamlineError, match=r"bundled:nope\.txt: no such bundled file; available: .*wikitext2"):
        resolve_data_spec("bundled:nope.txt")
    with pytest.raises(StreamlineError, match="inside the bundled data"):
        resolve_data_spec("bundled:../cli.py")


def test_a_copy_of_the_repository_alone_runs_its_data_tests_without_a_skip(tmp_path):
    """`.ci/run`'s install-free part (the README's test command) in a copy with nothing beside it; the data-reading
    test files stand for the suite (the whole suite already runs in CI from the clean clone)."""
    copy = tmp_path / "clone" / "hf_streamline"
    for p in _tracked():
        dst = copy / p.relative_to(ROOT)
        dst.parent.mkdir(parents=True, exist_ok=True)
        if p.is_file():
            shutil.copy2(p, dst)
    assert not (copy.parent / "shared").exists()
    env = {**os.environ, "PYTHONPATH": str(copy / "src"), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_STREAMLINE_SHARED_DATA", None)
    files = ["tests/test_calibration.py", "tests/test_demo.py", "tests/test_scores.py"]
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *files],
                          cwd=copy, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "skipped" not in proc.stdout.lower(), proc.stdout[-2000:]
    probe = subprocess.run([sys.executable, "-c", "import hf_streamline.data as d; print(d.ROOT)"], cwd=copy,
                           env=env, capture_output=True, text=True, check=True)
    assert Path(probe.stdout.strip()) == copy / "src" / "hf_streamline" / "data"  # the copy's own data was used
