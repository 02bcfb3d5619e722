"""Event-loop start-up, task spawning and signal handling.

- `spawn()` is the only way pymesh starts a background task: it keeps a strong reference until
  the task ends (Python 3.11 garbage-collects unreferenced tasks mid-flight) and names it.
- `run_loop()` runs a coroutine on uvloop (default) or stock asyncio, using
  `asyncio.Runner(loop_factory=...)` — never a global event-loop policy.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar

import structlog

__all__ = ["LoopName", "install_signal_handlers", "loop_factory", "run_loop", "spawn"]

T = TypeVar("T")
LoopName = Literal["uvloop", "asyncio"]

_TASKS: set[asyncio.Task[Any]] = set()
_log = structlog.get_logger("pymesh.runtime")


def _task_done(task: asyncio.Task[Any]) -> None:
    _TASKS.discard(task)
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        _log.error("task_failed", task=task.get_name(), error=repr(exc), exc_info=exc)


def spawn(coro: Coroutine[Any, Any, T], *, name: str | None = None) -> asyncio.Task[T]:
    """Start `coro` as a task that is referenced until it ends; failures are logged."""
    task = asyncio.create_task(coro, name=name)
    _TASKS.add(task)
    task.add_done_callback(_task_done)
    return task


def loop_factory(name: LoopName = "uvloop") -> Callable[[], asyncio.AbstractEventLoop]:
    """A factory for the named event loop; falls back to asyncio where uvloop is absent."""
    if name == "uvloop":
        try:
            import uvloop
        except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
            return asyncio.new_event_loop
        factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
        return factory
    return asyncio.new_event_loop


def run_loop(main: Coroutine[Any, Any, T], *, loop: LoopName = "uvloop") -> T:
    """Run `main` to completion on a fresh loop of the given kind."""
    with asyncio.Runner(loop_factory=loop_factory(loop)) as runner:
        return runner.run(main)


def install_signal_handlers(on_signal: Callable[[signal.Signals], None]) -> None:
    """Call `on_signal(sig)` on SIGTERM and SIGINT (inside the running loop).

    SIGUSR1 writes every task's stack to stderr (what a process that will not stop is
    waiting for)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    loop.add_signal_handler(signal.SIGUSR1, dump_tasks)


def dump_tasks() -> None:
    """Print every task of the running loop with its stack to stderr."""
    for task in asyncio.all_tasks():
        print(f"--- task {task.get_name()}: {task!r}", file=sys.stderr)
        task.print_stack(limit=20, file=sys.stderr)
    sys.stderr.flush()
