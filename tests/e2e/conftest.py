"""Fixtures of the end-to-end tests (the session server and models are in tests/conftest.py)."""

from __future__ import annotations

import pytest

from tests.helpers.oracle import oracle_inputs


@pytest.fixture(scope="module")
def hf(demo_model, media_dir):
    """The eager oracle's processor, model, inputs and clip URL (tests/helpers/oracle.py)."""
    return oracle_inputs(demo_model, media_dir)
