"""The daemon's view of a validated configuration: plain frozen dataclasses, standard library only.

`amsd.config` validates with pydantic and converts the result with `AmsdConfig.for_run()`. The
re-executed `amsd run` (see `amsd.daemon`) receives this view through `handover_bytes` /
`config_from_handover` and so never imports pydantic: pydantic and pydantic_core are about 5 MB of
resident memory the long-running process does not need.

The classes have one field per field of the pydantic section models in `amsd.config`, same names, no
defaults (a view is only ever built from a validated model; tests/test_runconfig.py checks that the
two sides stay in step). Left out: the `*_file` secret sources (`password_file`,
`encryption_key_file`, `authentication_key_file`), because the secrets they name are already read
into `password`, `encryption_key` and `authentication_key`. Added: `<field>_given` fields, which say
whether `<field>` was set explicitly rather than left at its default.
"""

from __future__ import annotations

import dataclasses
import io
import pickle
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Generic, Literal, Protocol, TypeVar

SecretValue = TypeVar("SecretValue", bytes, str)

MASK: Final = "**********"  # what pydantic's SecretStr/SecretBytes show


class ConfigError(Exception):
    """The configuration cannot be used. The message is for humans and never contains a secret."""


@dataclass(frozen=True, slots=True, repr=False)
class Secret(Generic[SecretValue]):
    """A key or password. repr/str show a mask; only `get_secret_value()` gives the value."""

    value: SecretValue

    def get_secret_value(self) -> SecretValue:
        return self.value

    def __repr__(self) -> str:
        return f"Secret('{MASK}')"

    def __str__(self) -> str:
        return MASK


@dataclass(frozen=True, slots=True)
class TlsSettings:
    ca_file: Path | None
    cert_file: Path | None
    key_file: Path | None
    insecure: bool


@dataclass(frozen=True, slots=True)
class MqttSettings:
    host: str
    port: int
    username: str | None
    password: Secret[str] | None
    tls: TlsSettings | None
    client_id: str
    topic_prefix: str
    qos: Literal[0, 1, 2]
    protocol: Literal["3.1.1", "5"]
    keepalive: int
    retain_values: bool
    payload_format: Literal["amsd", "amsreader"]


@dataclass(frozen=True, slots=True)
class HomeAssistantSettings:
    enabled: bool
    discovery_prefix: str


@dataclass(frozen=True, slots=True)
class OutboxSettings:
    path: Path
    max_messages: int


@dataclass(frozen=True, slots=True)
class LogSettings:
    level: Literal["debug", "info", "warning", "error", "critical"]
    format: Literal["auto", "console", "json", "journald"]


@dataclass(frozen=True, slots=True)
class AccountingSection:
    """`[accounting]` (not `amsd.accounting.AccountingSettings`, which is what one meter's accounting takes)."""

    enabled: bool
    timezone: str
    peak_hours: int
    thresholds_kwh: tuple[float, ...]
    state_dir: Path | None
    meters: tuple[str, ...] | None
    publish_interval_s: float


@dataclass(frozen=True, slots=True)
class MeterSettings:
    name: str
    port: str
    baudrate: int | Literal["auto"]
    parity: Literal["N", "E", "O", "auto"]
    parity_given: bool  # `baudrate = "auto"` alone detects the parity too; an explicit parity pins it
    bytesize: Literal[7, 8]
    stopbits: Literal[1, 2]
    encryption_key: Secret[bytes] | None
    authentication_key: Secret[bytes] | None
    profile: str
    publish_raw: Literal["errors", "all"]
    idle_timeout_s: float
    redetect_after_s: float


@dataclass(frozen=True, slots=True)
class RunConfig:
    """Everything `amsd run` needs, validated. Build it with `amsd.config.AmsdConfig.for_run()`."""

    mqtt: MqttSettings
    homeassistant: HomeAssistantSettings
    outbox: OutboxSettings
    log: LogSettings
    meters: tuple[MeterSettings, ...]
    accounting: AccountingSection

    def secret_values(self) -> Iterator[bytes | str]:
        """Every configured secret, for log redaction (found by type, so a new secret field counts too)."""
        return _secrets_in(self)


def _secrets_in(value: object) -> Iterator[bytes | str]:
    if isinstance(value, Secret):
        yield value.get_secret_value()
    elif isinstance(value, tuple):
        for item in value:
            yield from _secrets_in(item)
    elif dataclasses.is_dataclass(value):
        for field in dataclasses.fields(value):
            yield from _secrets_in(getattr(value, field.name))


# Every class a handover may contain.
_VIEW_CLASSES: Final[tuple[type[Any], ...]] = (
    Secret,
    TlsSettings,
    MqttSettings,
    HomeAssistantSettings,
    OutboxSettings,
    LogSettings,
    AccountingSection,
    MeterSettings,
    RunConfig,
)


class _HasMeters(Protocol):
    @property
    def meters(self) -> Sequence[object]: ...


def validate_for_run(config: _HasMeters) -> None:
    """What `amsd run` needs beyond a well-formed file: at least one meter."""
    if not config.meters:
        raise ConfigError("no meters configured: add a [[meters]] table with at least name and port")


# --- handing a validated configuration to a fresh process image ----------------------------------


def handover_bytes(config: RunConfig) -> bytes:
    """The validated configuration for `config_from_handover` in the re-executed `amsd run`.

    A pickle of the plain dataclasses: the new image neither validates again nor imports pydantic.
    Secrets from `*_file` keys and systemd credentials travel as values, so the bytes hold keys: they
    go only into an anonymous memory file that the daemon's own previous image created (`amsd.daemon`)."""
    return pickle.dumps(config, protocol=pickle.HIGHEST_PROTOCOL)


class _ViewUnpickler(pickle.Unpickler):
    """Only the view classes and paths: the data is our own, and anything else in it is damage."""

    _ALLOWED: Final = frozenset({(__name__, cls.__name__) for cls in _VIEW_CLASSES})

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED or (module.startswith("pathlib") and name == "PosixPath"):
            return super().find_class(module, name)
        raise pickle.UnpicklingError("unexpected type")  # the name is not echoed: it could be anything


def config_from_handover(data: bytes) -> RunConfig:
    """Rebuild what `handover_bytes` wrote (validated by this daemon's previous image) and register
    its secrets for log redaction."""
    try:
        config = _ViewUnpickler(io.BytesIO(data)).load()
    except Exception as exc:
        raise ConfigError(f"configuration handed over is unreadable ({type(exc).__name__})") from None
    if not isinstance(config, RunConfig):
        raise ConfigError("configuration handed over is not a configuration")
    from amsd.log import register_secret  # lazy: the module stays importable without structlog

    for secret in config.secret_values():
        register_secret(secret)
    return config
