"""Shared fixtures: both event loops for proxy tests, real backends on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
import uvloop

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}

_BOTH_LOOPS_DIRS = ("integration", "proxy", "observe", "fuzz")


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]] | None:
    """Run every async proxy/integration test on stock asyncio and on uvloop."""
    parts = Path(str(item.path)).parts
    if any(d in parts for d in _BOTH_LOOPS_DIRS):
        return LOOPS
    return {"asyncio": asyncio.new_event_loop}
