"""Shared test set-up: quiet megatron-core's import warnings, skip GPU tests without CUDA."""

import warnings

import pytest
import torch

warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
