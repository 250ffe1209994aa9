"""Logging: formats, secret redaction (exception text included), no locals, rate limiting."""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from amsd.log import (
    RateLimiter,
    SecretRedactor,
    clear_secrets,
    configure_logging,
    get_logger,
    register_secret,
    resolve_format,
)

# Made-up secrets.
KEY = bytes.fromhex("5ec7e7c0ffee0123456789abcdef4242")
PASSWORD = 'pa ss"wo\\rd#=ø'
LOCAL_MARKER = "local-variable-marker-7f3a"


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()
    clear_secrets()


def capture(fmt: str, level: str = "debug", **kwargs: float) -> io.StringIO:
    stream = io.StringIO()
    configure_logging(level, fmt, stream=stream, **kwargs)
    return stream


def fail_with_secret_local() -> None:
    key_material = KEY  # a local that a locals-printing traceback would show
    marker = LOCAL_MARKER
    raise ValueError(f"decrypt failed with {key_material.hex().upper()} ({len(marker)}) pw={PASSWORD}")


def test_json_lines_parseable() -> None:
    stream = capture("json")
    log = get_logger("amsd.test")
    log.info("frame_ok", meter="house", values=3, ratio=0.5)
    log.debug("detail", text="with\nnewline")
    logging.getLogger("aiomqtt").warning("foreign %s", "message")
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(records) == 3
    assert records[0]["event"] == "frame_ok"
    assert records[0]["meter"] == "house"
    assert records[0]["level"] == "info"
    assert records[0]["logger"] == "amsd.test"
    assert records[0]["timestamp"].endswith("Z")
    assert records[1]["text"] == "with\nnewline"
    assert records[2] == records[2] | {"event": "foreign message", "level": "warning", "logger": "aiomqtt"}


def test_level_filter() -> None:
    stream = capture("json", level="warning")
    log = get_logger("amsd.test")
    log.info("hidden")
    log.warning("shown")
    assert [json.loads(line)["event"] for line in stream.getvalue().splitlines()] == ["shown"]


@pytest.mark.parametrize("fmt", ["json", "console", "journald"])
def test_secrets_redacted_everywhere(fmt: str) -> None:
    stream = capture(fmt)
    register_secret(KEY)
    register_secret(PASSWORD)
    log = get_logger("amsd.test")
    log.info(
        "config",
        lower=KEY.hex(),
        upper=KEY.hex().upper(),
        spaced=KEY.hex(" "),
        colons=KEY.hex(":").upper(),
        prefixed="0x" + KEY.hex(),
        raw=KEY,
        nested={"list": [PASSWORD, f"user:{PASSWORD}@host"]},
        text_repr=repr(PASSWORD),
        obj=ValueError(KEY),
    )
    try:
        fail_with_secret_local()
    except ValueError:
        log.exception("decrypt_error")
    logging.getLogger("paho").error("auth failed for %s", PASSWORD)
    output = stream.getvalue()
    assert "decrypt_error" in output and "Traceback" in output and "auth failed for" in output
    for leak in (
        KEY.hex(),
        KEY.hex().upper(),
        KEY.hex(" "),
        KEY.hex(":"),
        repr(KEY)[2:-1],
        PASSWORD,
        "pa ss",
    ):
        assert leak.lower() not in output.lower(), leak
    assert "***" in output


def test_traceback_has_no_locals() -> None:
    for fmt in ("json", "console", "journald"):
        stream = capture(fmt)
        try:
            fail_with_secret_local()
        except ValueError:
            get_logger("amsd.test").error("failure", exc_info=True, rate_key=fmt)
        output = stream.getvalue()
        assert "fail_with_secret_local" in output  # the traceback is there
        assert LOCAL_MARKER not in output
        assert "key_material =" not in output.replace("key_material = KEY", "")


def test_journald_priority_prefixes_without_timestamp() -> None:
    stream = capture("journald")
    log = get_logger("amsd.test")
    log.debug("d")
    log.info("i", meter="house", detail="two words")
    log.warning("w")
    log.error("e")
    log.critical("c")
    try:
        fail_with_secret_local()
    except ValueError:
        log.exception("boom")
    lines = stream.getvalue().splitlines()
    assert lines[:5] == [
        "<7>d logger=amsd.test",
        '<6>i meter=house detail="two words" logger=amsd.test',
        "<4>w logger=amsd.test",
        "<3>e logger=amsd.test",
        "<2>c logger=amsd.test",
    ]
    traceback_lines = lines[5:]
    assert len(traceback_lines) > 3
    assert all(line.startswith("<3>") for line in traceback_lines)


def test_console_no_colors_when_not_a_tty() -> None:
    stream = capture("console")
    get_logger("amsd.test").warning("plain", meter="house")
    output = stream.getvalue()
    assert "plain" in output and "meter=house" in output
    assert "\x1b[" not in output


def test_auto_format(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    assert resolve_format("auto", io.StringIO()) == "json"
    with (tmp_path / "log").open("w") as stream:
        stat = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{stat.st_dev}:{stat.st_ino}")
        assert resolve_format("auto", stream) == "journald"
        monkeypatch.setenv("JOURNAL_STREAM", "1:2")  # inherited, but our stderr is elsewhere
        assert resolve_format("auto", stream) == "json"
    assert resolve_format("console", io.StringIO()) == "console"
    with pytest.raises(ValueError):
        resolve_format("xml", io.StringIO())


def test_rate_limiter_suppresses_repeats() -> None:
    now = [1000.0]
    limiter = RateLimiter(interval_s=60.0, clock=lambda: now[0])

    def emit(event: str, level: str = "error", **fields: object) -> dict[str, object] | None:
        try:
            return dict(limiter(None, level, {"event": event, "level": level, **fields}))
        except structlog.DropEvent:
            return None

    assert emit("crc_error", meter="a") == {"event": "crc_error", "level": "error", "meter": "a"}
    assert emit("crc_error", meter="a") is None
    assert emit("crc_error", meter="a") is None
    assert emit("crc_error", meter="b") is not None  # another meter is another key
    assert emit("other_error", meter="a") is not None
    assert emit("crc_error", level="info", meter="a") is not None  # info is never limited
    now[0] += 59.9
    assert emit("crc_error", meter="a") is None
    now[0] += 0.2
    assert emit("crc_error", meter="a") == {
        "event": "crc_error",
        "level": "error",
        "meter": "a",
        "suppressed": 3,
    }
    now[0] += 61
    assert emit("crc_error", meter="a") == {"event": "crc_error", "level": "error", "meter": "a"}
    # An explicit rate_key separates otherwise equal events and is not logged itself.
    first = emit("frame_undecoded", meter="a", rate_key="a:crc")
    assert first == {"event": "frame_undecoded", "level": "error", "meter": "a"}
    assert emit("frame_undecoded", meter="a", rate_key="a:wrong_key") is not None
    assert emit("frame_undecoded", meter="a", rate_key="a:crc") is None


def test_rate_limiter_bounded() -> None:
    limiter = RateLimiter(interval_s=60.0, clock=lambda: 0.0)
    for index in range(RateLimiter.MAX_KEYS + 10):
        limiter(None, "error", {"event": "e", "level": "error", "rate_key": index})
    assert len(limiter._seen) <= RateLimiter.MAX_KEYS


def test_rate_limit_in_configured_logging() -> None:
    stream = capture("json", rate_limit_s=3600)
    log = get_logger("amsd.test")
    for _ in range(5):
        log.warning("serial_error", meter="house")
    log.warning("serial_error", meter="garage")
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [event["meter"] for event in events] == ["house", "garage"]


def test_redactor_ignores_tiny_secrets_and_keeps_other_text() -> None:
    redactor = SecretRedactor()
    redactor.register("ab")
    assert redactor.redact_text("abc") == "abc"
    redactor.register(KEY)
    assert redactor.redact_text("frame 7e a0 00 ok") == "frame 7e a0 00 ok"
    assert redactor.redact({"n": 5, "b": True, "s": KEY.hex()}) == {"n": 5, "b": True, "s": "***"}
    assert redactor.redact(b"x" + KEY + b"y") == b"x***y"
    # A key registered as text is also caught in its other spellings.
    text_redactor = SecretRedactor()
    text_redactor.register("0x" + KEY.hex(":"))
    assert text_redactor.redact_text(KEY.hex().upper()) == "***"
