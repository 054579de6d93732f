"""Test setup for llm_tricks: repo root on sys.path, and one CPU thread per test."""

import sys
from pathlib import Path

import pytest
import torch

# Plain `pytest` (unlike `python -m pytest` from the root) does not put the repo root on sys.path.
REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


@pytest.fixture(autouse=True)
def _one_cpu_thread():
    """These tests use tiny tensors: one thread is faster than two fighting over a shared CPU. Restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
