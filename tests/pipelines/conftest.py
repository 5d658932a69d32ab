"""Fixtures of the pipeline tests (helpers are in pipeline_support.py)."""

from __future__ import annotations

import pytest
from pipeline_support import pipeline_settings

from streamrec.runtime.config import Settings


@pytest.fixture
def settings(kafka_broker, tmp_path) -> Settings:
    """Settings with private topics, consumer group, state dir and Feast project on the session broker."""
    return pipeline_settings(kafka_broker.settings, tmp_path / "state")
