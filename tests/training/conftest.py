"""Shared pieces of the training tests: one data cache per session and the tiny-run factory."""

from __future__ import annotations

import os
import sys
import warnings

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
warnings.filterwarnings("ignore", message=".*Transformer Engine and Apex are not installed.*")


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory) -> str:
    """One cache folder for the embedded corpus and task, built once per test session."""
    return str(tmp_path_factory.mktemp("bridge_cache"))
