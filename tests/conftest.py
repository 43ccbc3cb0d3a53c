"""Shared test settings: small thread count, deterministic seeds, no network."""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# before torch is imported: idle OpenMP threads spin briefly, then sleep (faceparse.runtime)
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")

import pytest
import torch

# Under pytest-xdist (``make test`` runs two workers) each worker gets one intra-op thread, so
# the workers never fight over the cores; a plain ``pytest`` run uses two threads.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
