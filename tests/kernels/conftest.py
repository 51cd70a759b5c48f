"""Fixtures shared by the kernel GPU tests."""

import pytest

from tests.kernels.attention_reference import FLASH_IMPLS, use_flash_impl


@pytest.fixture(params=FLASH_IMPLS)
def flash_impl(request, monkeypatch):
    """Runs a test once per kernel family (Hopper, mma.sync); modules opt in with usefixtures."""
    use_flash_impl(monkeypatch, request.param)
    return request.param
