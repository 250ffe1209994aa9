"""Logging: structlog over stdlib logging, one handler on stderr, secrets redacted, repeats throttled.

Formats:
- "journald": `<priority>event key=value ...` lines, no timestamp (journald adds its own); every line
  of a traceback carries the prefix so that it keeps the record's priority.
- "console": `timestamp [level] event key=value`, colours only when the stream is a terminal.
- "json": one JSON object per line (`timestamp` UTC ISO 8601, `level`, `logger`, `event`, fields;
  a traceback as the string `exception`).
- "auto": journald when stderr is the journal stream systemd announced in $JOURNAL_STREAM, console on
  a terminal, JSON otherwise (containers, pipes, files: machine-readable by default).

Tracebacks are plain text without local variables (locals would print key bytes). Every registered
secret is replaced by `***` in every field, exception text included, for amsd's own events and for
records from other libraries (asyncio, sqlite3) alike.

Rate limiting: a warning or error with the same (event, rate key) is emitted at most once per
interval; the next emission carries `suppressed=N`. The rate key is the `rate_key` field when given,
else the `meter` field: `log.warning("frame_undecoded", meter="house", rate_key="house:crc")`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Final, TextIO

import structlog
from structlog.types import EventDict, Processor, WrappedLogger

LEVELS: Final = ("debug", "info", "warning", "error", "critical")
FORMATS: Final = ("auto", "console", "json", "journald")
REDACTED: Final = "***"
# Shorter secrets would redact ordinary words and numbers all over the log; they are not redacted.
MIN_SECRET_LENGTH: Final = 4
# sd-daemon(3) priorities.
_PRIORITY: Final = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}
_WARNING_OR_WORSE: Final = frozenset({"warning", "warn", "error", "critical", "exception", "fatal"})
_HEX_KEY_TEXT: Final = re.compile(r"(?:0[xX])?(?:[0-9a-fA-F]{2}[\s:,\-]?){16}")
_HANDLER_MARK: Final = "_amsd_handler"


# --- secret redaction ---------------------------------------------------------------------------


class SecretRedactor:
    """Replaces registered secrets in strings, bytes and nested containers.

    A bytes secret is matched as hex in any letter case, with or without separators or 0x/\\x
    prefixes between bytes, and as Python's bytes repr. A text secret is matched literally and in
    its repr and JSON escaped forms."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._text_patterns: set[str] = set()
        self._raw: set[bytes] = set()
        self._regex: re.Pattern[str] | None = None

    def register(self, secret: bytes | str) -> None:
        patterns: set[str] = set()
        if isinstance(secret, str):
            if len(secret) < MIN_SECRET_LENGTH:
                return
            for form in (secret, repr(secret)[1:-1], json.dumps(secret)[1:-1]):
                patterns.add(re.escape(form))
            if _HEX_KEY_TEXT.fullmatch(secret):
                # A key given as text: also catch its bytes in other spellings.
                self.register(bytes.fromhex(re.sub(r"0[xX]|[\s:,\-]", "", secret)))
            raw = secret.encode("utf-8")
        else:
            if len(secret) < MIN_SECRET_LENGTH:
                return
            raw = bytes(secret)
            byte_patterns = [f"(?:0x|\\\\x)?{byte:02x}" for byte in raw]
            patterns.add(r"[\s:,\-]?".join(byte_patterns))
            patterns.add(re.escape(repr(raw)[2:-1]))
        with self._lock:
            self._raw.add(raw)
            if patterns <= self._text_patterns:
                return
            self._text_patterns |= patterns
            # Longest first so that a secret containing another one is removed whole.
            ordered = sorted(self._text_patterns, key=len, reverse=True)
            self._regex = re.compile("|".join(ordered), re.IGNORECASE)

    def clear(self) -> None:
        with self._lock:
            self._text_patterns.clear()
            self._raw.clear()
            self._regex = None

    def redact_text(self, text: str) -> str:
        regex = self._regex
        return text if regex is None else regex.sub(REDACTED, text)

    def redact(self, value: Any) -> Any:
        """A copy of `value` with secrets replaced; the value itself when it holds none."""
        if self._regex is None or value is None or isinstance(value, bool | int | float):
            return value
        if isinstance(value, str):
            return self.redact_text(value)
        if isinstance(value, bytes | bytearray):
            data = bytes(value)
            for raw in self._raw:
                data = data.replace(raw, REDACTED.encode())
            return data
        if isinstance(value, dict):
            return {key: self.redact(item) for key, item in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return type(value)(self.redact(item) for item in value)
        # Arbitrary objects (exceptions, dataclasses): renderers call str()/repr() on them later, so
        # check both now and hand over the redacted text if either would leak.
        for text in (str(value), repr(value)):
            redacted = self.redact_text(text)
            if redacted != text:
                return self.redact_text(repr(value))
        return value

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        if self._regex is None:
            return event_dict
        return {key: self.redact(value) for key, value in event_dict.items()}


_redactor: Final = SecretRedactor()


def register_secret(secret: bytes | str) -> None:
    """Never log this value: from now on it is replaced by `***` in every log line."""
    _redactor.register(secret)


def clear_secrets() -> None:
    """Forget every registered secret (tests; a config reload)."""
    _redactor.clear()


def redact(text: str) -> str:
    """Redact registered secrets from a text meant for humans (error messages, MQTT diagnostics)."""
    return _redactor.redact_text(text)


# --- rate limiting ------------------------------------------------------------------------------


class RateLimiter:
    """structlog processor: the same warning/error (event, rate key) at most once per interval.

    Dropped repeats are counted and reported as `suppressed=N` on the next emission. Events below
    warning pass untouched. The key table is bounded."""

    MAX_KEYS: Final = 4096

    def __init__(self, interval_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        # key -> [time of last emission, repeats suppressed since]
        self._seen: dict[tuple[str, str], list[float]] = {}

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        rate_key = event_dict.pop("rate_key", None)
        level = str(event_dict.get("level", method_name)).lower()
        if self.interval_s <= 0 or level not in _WARNING_OR_WORSE:
            return event_dict
        if rate_key is None:
            rate_key = event_dict.get("meter")
        key = (str(event_dict.get("event")), str(rate_key))
        now = self._clock()
        with self._lock:
            entry = self._seen.get(key)
            if entry is not None and now - entry[0] < self.interval_s:
                entry[1] += 1
                raise structlog.DropEvent
            if entry is not None and entry[1]:
                event_dict["suppressed"] = int(entry[1])
            if entry is None and len(self._seen) >= self.MAX_KEYS:
                self._prune(now)
            self._seen[key] = [now, 0]
        return event_dict

    def _prune(self, now: float) -> None:
        expired = [key for key, (last, _) in self._seen.items() if now - last >= self.interval_s]
        for key in expired:
            del self._seen[key]
        if len(self._seen) >= self.MAX_KEYS:
            self._seen.clear()


# --- renderers ----------------------------------------------------------------------------------


def _logfmt_value(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value) if isinstance(value, bytes) else str(value)
    if text == "" or any(char in text for char in ' ="\n\t'):
        return json.dumps(text, ensure_ascii=False)
    return text


def render_journald(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> str:
    """`<priority>event key=value ...`; traceback lines get the same prefix."""
    level = str(event_dict.pop("level", method_name)).lower()
    prefix = f"<{_PRIORITY.get(level, 6)}>"
    event = str(event_dict.pop("event", ""))
    exception = event_dict.pop("exception", None)
    stack = event_dict.pop("stack", None)
    event_dict.pop("timestamp", None)
    fields = " ".join(f"{key}={_logfmt_value(value)}" for key, value in event_dict.items())
    lines = [f"{event} {fields}".rstrip() if fields else event]
    for extra in (stack, exception):
        if extra:
            lines.extend(str(extra).splitlines())
    # Multi-line messages (or events with newlines) keep their priority on every line.
    return "\n".join(prefix + line for text in lines for line in text.splitlines() or [""])


def _stream_is_journal(stream: TextIO) -> bool:
    """$JOURNAL_STREAM is `device:inode` of the journal socket systemd connected stderr to."""
    announced = os.environ.get("JOURNAL_STREAM")
    if not announced:
        return False
    try:
        stat = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return True  # cannot tell (a wrapped stream): trust the variable
    return announced == f"{stat.st_dev}:{stat.st_ino}"


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def resolve_format(fmt: str, stream: TextIO) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}")
    if fmt != "auto":
        return fmt
    if _stream_is_journal(stream):
        return "journald"
    return "console" if _is_tty(stream) else "json"


# --- configuration ------------------------------------------------------------------------------


def configure_logging(
    level: str = "info",
    fmt: str = "auto",
    *,
    stream: TextIO | None = None,
    rate_limit_s: float = 60.0,
) -> None:
    """Route structlog and stdlib logging to one handler on `stream` (default stderr). Idempotent:
    calling it again replaces the previous setup."""
    level = level.lower()
    if level not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}")
    target = sys.stderr if stream is None else stream
    resolved = resolve_format(fmt, target)
    rate_limiter = RateLimiter(rate_limit_s)

    renderer: Processor
    if resolved == "journald":
        renderer = render_journald
    elif resolved == "json":
        renderer = structlog.processors.JSONRenderer(default=repr, ensure_ascii=False)
    else:
        renderer = structlog.dev.ConsoleRenderer(
            colors=_is_tty(target),
            # Explicitly plain: rich/better-exceptions would print locals (key bytes).
            exception_formatter=structlog.dev.plain_traceback,
        )

    shared: list[Processor] = [
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
    ]
    if resolved == "json":
        shared.append(structlog.processors.TimeStamper(fmt="iso", utc=True))
    elif resolved == "console":
        shared.append(structlog.processors.TimeStamper(fmt="%Y-%m-%d %H:%M:%S", utc=False))

    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            rate_limiter,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            # Redact before the record enters stdlib logging, so that no other handler sees secrets.
            _redactor,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,  # records from other libraries
            _redactor,  # again, for records from other libraries
            renderer,
        ],
    )
    handler = logging.StreamHandler(target)
    handler.setFormatter(formatter)
    setattr(handler, _HANDLER_MARK, True)

    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level.upper())


def get_logger(name: str | None = None, **initial: Any) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name, **initial)
    return logger
