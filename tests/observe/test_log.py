"""pymesh.observe.log: JSON lines, levels, idempotent configuration, the access logger."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from pymesh.observe.log import (
    ACCESS_LOGGER,
    HTTP_ACCESS_EVENT,
    HTTP_ACCESS_FIELDS,
    TCP_ACCESS_EVENT,
    TCP_ACCESS_FIELDS,
    access_logger,
    configure_logging,
    get_logger,
)


@pytest.fixture(autouse=True)
def _restore_structlog() -> Iterator[None]:
    """Leave structlog as we found it, for the tests that run after these."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


@pytest.fixture
def out() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging("info", json=True, stream=stream)
    yield stream
    configure_logging()  # stderr again, for loggers cached during the test


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_line_fields(out: io.StringIO) -> None:
    before = datetime.now(UTC)
    get_logger("pymesh.test").info("hello", answer=42, who="world")
    [line] = lines(out)
    assert list(line)[:4] == ["timestamp", "level", "logger", "event"]
    assert line["level"] == "info"
    assert line["logger"] == "pymesh.test"
    assert line["event"] == "hello"
    assert (line["answer"], line["who"]) == (42, "world")
    ts = line["timestamp"]
    assert ts.endswith("Z") and "T" in ts
    stamp = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    assert stamp.utcoffset() == timedelta(0)
    assert before - timedelta(seconds=1) <= stamp <= datetime.now(UTC) + timedelta(seconds=1)
    assert out.getvalue().endswith("\n") and out.getvalue().count("\n") == 1


def test_level_filtering_and_names(out: io.StringIO) -> None:
    log = get_logger("pymesh.test")
    log.debug("dropped")
    log.warning("kept-warning")
    log.error("kept-error")
    assert [(x["event"], x["level"]) for x in lines(out)] == [
        ("kept-warning", "warning"),
        ("kept-error", "error"),
    ]


def test_debug_level_and_console_format() -> None:
    stream = io.StringIO()
    configure_logging("DEBUG", json=False, stream=stream)
    get_logger("pymesh.test.dbg").debug("visible", k="v")
    text = stream.getvalue()
    assert "visible" in text and "k=v" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)
    configure_logging()


def test_exception_is_rendered(out: io.StringIO) -> None:
    try:
        raise RuntimeError("kaput")
    except RuntimeError:
        get_logger("pymesh.test").exception("failed")
    [line] = lines(out)
    assert line["level"] == "error"
    assert "RuntimeError: kaput" in line["exception"]
    assert "Traceback" in line["exception"]


def test_non_json_values_are_stringified(out: io.StringIO) -> None:
    get_logger("pymesh.test").info("odd", obj={1, 2} - {1, 2}, b=b"x")
    [line] = lines(out)
    assert line["obj"] == "set()" and line["b"] == "b'x'"


def test_unknown_level() -> None:
    with pytest.raises(ValueError, match="unknown log level"):
        configure_logging("verbose")


def test_idempotent_and_cached_loggers_follow_reconfiguration(out: io.StringIO) -> None:
    procs = structlog.get_config()["processors"]
    configure_logging("info", json=True, stream=out)  # same arguments: no-op
    assert structlog.get_config()["processors"] is procs
    log = get_logger("pymesh.test.cached")
    log.info("one")  # cached on first use
    other = io.StringIO()
    configure_logging("info", json=True, stream=other)
    log.info("two")
    assert [x["event"] for x in lines(out)] == ["one"]
    assert [x["event"] for x in lines(other)] == ["two"]
    assert structlog.get_config()["processors"] is procs  # mutated in place, never replaced


def test_default_stream_is_stderr_at_call_time(
    capsys: pytest.CaptureFixture[str], out: io.StringIO
) -> None:
    configure_logging()  # sys.stderr as it is now (pytest's capture)
    get_logger("pymesh.test").info("to-stderr")
    assert json.loads(capsys.readouterr().err)["event"] == "to-stderr"


def test_access_logger_lines(out: io.StringIO) -> None:
    log = access_logger()
    # After configure_logging: the assembled logger itself, no lazy proxy.
    assert not isinstance(log, structlog._config.BoundLoggerLazyProxy)
    http: dict[str, object] = dict.fromkeys(HTTP_ACCESS_FIELDS, "")
    http.update(method="GET", path="/orders", response_code=200, duration_ms=1.25)
    log.info(HTTP_ACCESS_EVENT, **http)
    tcp: dict[str, object] = dict.fromkeys(TCP_ACCESS_FIELDS, "")
    tcp.update(bytes_sent=10, bytes_received=20)
    log.info(TCP_ACCESS_EVENT, **tcp)
    first, second = lines(out)
    assert first["logger"] == second["logger"] == ACCESS_LOGGER == "pymesh.access"
    assert first["event"] == "http_request" and second["event"] == "tcp_connection"
    assert set(HTTP_ACCESS_FIELDS) <= set(first)
    assert set(TCP_ACCESS_FIELDS) <= set(second)
    assert (first["response_code"], first["duration_ms"]) == (200, 1.25)


def test_capture_logs_sees_cached_access_logger(out: io.StringIO) -> None:
    log = access_logger()
    log.info("warm-up")  # written to the stream
    with capture_logs() as logs:
        log.info(HTTP_ACCESS_EVENT, path="/x", response_code=503, response_flags="overflow")
        get_logger("pymesh.test").debug("below level")
    assert logs == [
        {
            "event": "http_request",
            "log_level": "info",
            "path": "/x",
            "response_code": 503,
            "response_flags": "overflow",
        }
    ]
    log.info("after")
    assert [x["event"] for x in lines(out)] == ["warm-up", "after"]


def test_access_logger_is_lazy_before_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    import pymesh.observe.log as log_module

    monkeypatch.setattr(log_module, "_current", None)
    assert isinstance(access_logger(), structlog._config.BoundLoggerLazyProxy)
