"""pytest setup: make `hierarchicalvlm` (python/) and the test helpers importable, whatever
the working directory."""

import os
import sys

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
for path in (os.path.dirname(HERE), HERE):
    if path not in sys.path:
        sys.path.insert(0, path)


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same RNG state (deterministic weights and inputs)."""
    torch.manual_seed(1234)
    yield
