"""Shared test set-up: offline Hub, one thread, the repository root importable, small random WorldVLAs."""

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

from scripts.build_small_checkpoint import build_small_worldvla  # noqa: E402


@pytest.fixture(scope="session")
def small_worldvla():
    """(model, processor): 2 layers, hidden 64, 64-px frames (4x4 codes), K = 5, compact token layout."""
    return build_small_worldvla(seed=0)


@pytest.fixture
def frames():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(2)]


def load_bench(name):
    """A benchmark script of bench/ as a module (bench/ is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def bench_module():
    """`bench_module("decode")`: bench/decode.py loaded as a module."""
    return load_bench
