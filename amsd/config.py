"""Configuration: one TOML file, overridable from the environment, with secrets from files or systemd
credentials.

Sources, highest priority first:

1. environment variables `AMSD_<SECTION>__<KEY>` (`AMSD_MQTT__HOST`, `AMSD_MQTT__PASSWORD`,
   `AMSD_MQTT__TLS__CA_FILE`, `AMSD_LOG__LEVEL`); a meter is addressed by its index in the file:
   `AMSD_METERS__0__ENCRYPTION_KEY`. An index one past the last meter adds a meter.
2. the TOML file given on the command line (`-c`, default /etc/amsd/amsd.toml).
3. for secrets that are still unset: `*_file` keys (`encryption_key_file`, `authentication_key_file`,
   `password_file`), then systemd credentials in `$CREDENTIALS_DIRECTORY` named
   `<meter name>.encryption_key`, `<meter name>.authentication_key` and `mqtt.password`
   (`LoadCredential=` in the unit). File contents are stripped of surrounding whitespace.
   Giving a secret both directly and through its `*_file` key is an error.

Unknown keys are errors in every section, and so are unknown `AMSD_<SECTION>__...` variables. Error
messages name the field and never contain the value (`hide_input_in_errors`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import socket
import sys
import tomllib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Final, Literal, Protocol, TypeAlias

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    SecretBytes,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from amsd.decoder.keys import KEY_BYTES
from amsd.decoder.keys import key_from_text as parse_key_text  # one key syntax for config and CLI
from amsd.runconfig import (
    AccountingSection,
    HomeAssistantSettings,
    LogSettings,
    MeterSettings,
    MqttSettings,
    OutboxSettings,
    RunConfig,
    Secret,
    TlsSettings,
)

# Defined with the runtime view so that the re-executed `amsd run` has them without importing this module.
from amsd.runconfig import ConfigError as ConfigError
from amsd.runconfig import validate_for_run as validate_for_run

ENV_PREFIX: Final = "AMSD_"
ENV_DELIMITER: Final = "__"

DEFAULT_OUTBOX: Final = Path("/var/lib/amsd/outbox.sqlite3")
STANDARD_BAUDRATES: Final = (300, 600, 1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400, 460800)

# What people paste keys with: whitespace, colons, commas, dashes, and 0x prefixes (whole key or per byte).
_SLUG: Final = re.compile(r"[a-z0-9_-]{1,64}")
_URL_PORT: Final = re.compile(r"(?P<scheme>socket|rfc2217)://(?P<host>[^\s/:]+|\[[0-9a-fA-F:.]+\]):(?P<port>\d{1,5})")
_FIELD_PREFIX: Final = re.compile(r"(?P<field>[a-z_]+): (?P<message>.*)", re.DOTALL)


# --- value parsers ------------------------------------------------------------------------------


def _validate_key(value: object) -> object:
    if isinstance(value, SecretBytes):
        value = value.get_secret_value()
    if isinstance(value, bytes | bytearray):
        if len(value) != KEY_BYTES:
            raise ValueError(f"must be {KEY_BYTES} bytes (got {len(value)})")
        return bytes(value)
    if isinstance(value, str):
        return parse_key_text(value)
    raise ValueError(f"must be a string of {2 * KEY_BYTES} hex characters")


# A 16-byte AES key. SecretBytes masks repr/str/JSON; get_secret_value() gives the bytes.
AesKey: TypeAlias = Annotated[SecretBytes, BeforeValidator(_validate_key)]


def _validate_baudrate(value: object) -> int | Literal["auto"]:
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "auto":
            return "auto"
        if not text.isdigit():
            raise ValueError('must be a baud rate such as 2400 or "auto"')
        value = int(text)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError('must be a baud rate such as 2400 or "auto"')
    if value not in STANDARD_BAUDRATES:
        rates = ", ".join(str(rate) for rate in STANDARD_BAUDRATES)
        raise ValueError(f'must be one of {rates} or "auto" (got {value})')
    return value


Baudrate: TypeAlias = Annotated[int | Literal["auto"], PlainValidator(_validate_baudrate)]


def _validate_protocol(value: object) -> Literal["3.1.1", "5"]:
    # TOML users write `protocol = 5` as often as `protocol = "5"`.
    text = str(value).strip() if isinstance(value, int | float | str) and not isinstance(value, bool) else ""
    if text in ("3.1.1", "311", "3"):
        return "3.1.1"
    if text in ("5", "5.0"):
        return "5"
    raise ValueError('must be "3.1.1" or "5"')


MqttProtocol: TypeAlias = Annotated[Literal["3.1.1", "5"], PlainValidator(_validate_protocol)]


def _upper(value: object) -> object:
    return value.upper() if isinstance(value, str) else value


def _parity(value: object) -> object:
    if isinstance(value, str):
        return "auto" if value.strip().lower() == "auto" else value.strip().upper()
    return value


def _lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


def _check_topic_prefix(value: str) -> str:
    if not value or value.startswith("/") or value.endswith("/"):
        raise ValueError("must be non-empty and must not start or end with '/'")
    if any(char in value for char in "+#\x00"):
        raise ValueError("must not contain the MQTT wildcards '+' or '#'")
    return value


def _read_secret_file(path: Path, field: str) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        # Only the path and the OS reason: never the contents.
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise ValueError(f"{field}: cannot read {path}: {reason}") from None


def _credential(name: str) -> Path | None:
    """A systemd credential file (`LoadCredential=NAME:...`) if the service has one by that name."""
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        return None
    path = Path(directory) / name
    return path if path.is_file() else None


def _default_client_id() -> str:
    # Unique per host so that two machines never kick each other off the broker.
    return f"amsd-{socket.gethostname().split('.')[0] or 'host'}"


def _default_outbox_path() -> Path:
    # systemd's StateDirectory= sets $STATE_DIRECTORY (colon-separated if several).
    state = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(state) / "outbox.sqlite3" if state else DEFAULT_OUTBOX


# --- models -------------------------------------------------------------------------------------


class _Section(BaseModel):
    # defer_build: the validators are built at the first validation, so importing this module for
    # its types or defaults (amsd demo, tests) costs little. The re-executed `amsd run` does not
    # import it at all: it takes the plain view of amsd.runconfig.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True, validate_default=True, defer_build=True)


class TlsConfig(_Section):
    """`[mqtt.tls]`. All paths optional: the system CA store is used when ca_file is unset."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure: bool = False

    @model_validator(mode="after")
    def _client_cert_pair(self) -> TlsConfig:
        if self.key_file is not None and self.cert_file is None:
            raise ValueError("key_file: needs cert_file as well")
        return self


class MqttConfig(_Section):
    """`[mqtt]`."""

    host: str = Field(default="localhost", min_length=1)
    port: int = Field(default=1883, ge=1, le=65535)
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    # `tls = true` uses the system CA store; a `[mqtt.tls]` table sets files; false/absent is plain TCP.
    tls: TlsConfig | None = None
    client_id: str = Field(default_factory=_default_client_id, min_length=1, max_length=128)
    topic_prefix: str = "amsd"
    qos: Literal[0, 1, 2] = 1
    protocol: MqttProtocol = "3.1.1"
    keepalive: int = Field(default=30, ge=5, le=65535)
    retain_values: bool = False
    payload_format: Literal["amsd", "amsreader"] = "amsd"

    @field_validator("tls", mode="before")
    @classmethod
    def _tls_bool(cls, value: object) -> object:
        if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
            value = value.strip().lower() in ("true", "1", "yes")
        if value is True:
            return {}
        if value is False:
            return None
        return value

    @field_validator("topic_prefix")
    @classmethod
    def _topic_prefix(cls, value: str) -> str:
        return _check_topic_prefix(value)

    @model_validator(mode="after")
    def _password_sources(self) -> MqttConfig:
        if self.password_file is not None:
            if self.password is not None:
                raise ValueError("password_file: set either password or password_file, not both")
            self.password = SecretStr(_read_secret_file(self.password_file, "password_file"))
        elif self.password is None and (credential := _credential("mqtt.password")) is not None:
            label = "password (systemd credential mqtt.password)"
            self.password = SecretStr(_read_secret_file(credential, label))
        return self


class HomeAssistantConfig(_Section):
    """`[homeassistant]`: MQTT discovery."""

    enabled: bool = True
    discovery_prefix: str = "homeassistant"

    @field_validator("discovery_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        return _check_topic_prefix(value)


class OutboxConfig(_Section):
    """`[outbox]`: readings kept on disk while the broker is unreachable."""

    path: Path = Field(default_factory=_default_outbox_path)
    max_messages: int = Field(default=100_000, ge=1)


class LogConfig(_Section):
    """`[log]`. format "auto": journald under systemd, console on a terminal, JSON lines otherwise."""

    level: Annotated[Literal["debug", "info", "warning", "error", "critical"], BeforeValidator(_lower)] = "info"
    format: Annotated[Literal["auto", "console", "json", "journald"], BeforeValidator(_lower)] = "auto"


class AccountingConfig(_Section):
    """`[accounting]`: hourly/daily/monthly energy and the capacity tariff (docs/accounting.md)."""

    enabled: bool = False
    timezone: str = "Europe/Oslo"
    peak_hours: int = Field(default=3, ge=1, le=31)
    # The usual Norwegian capacity steps (kWh/h); grid operators differ.
    thresholds_kwh: list[float] = Field(
        default_factory=lambda: [2.0, 5.0, 10.0, 15.0, 20.0, 25.0, 50.0, 75.0, 100.0], min_length=1
    )
    # State files (accounting-<meter>.json); default: the outbox's directory (the state directory).
    state_dir: Path | None = None
    # Meters to account (names); default: all.
    meters: list[str] | None = None
    publish_interval_s: float = Field(default=10.0, ge=0, le=3600)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("unknown time zone (use an IANA name such as Europe/Oslo)") from None
        return value

    @field_validator("thresholds_kwh")
    @classmethod
    def _increasing(cls, value: list[float]) -> list[float]:
        from itertools import pairwise

        if value[0] <= 0 or any(b <= a for a, b in pairwise(value)):
            raise ValueError("must be positive and strictly increasing")
        return value


class MeterConfig(_Section):
    """One `[[meters]]` entry."""

    name: str
    port: str
    baudrate: Baudrate = 2400
    parity: Annotated[Literal["N", "E", "O", "auto"], BeforeValidator(_parity)] = "N"
    bytesize: Literal[7, 8] = 8
    stopbits: Literal[1, 2] = 1
    encryption_key: AesKey | None = None
    authentication_key: AesKey | None = None
    encryption_key_file: Path | None = None
    authentication_key_file: Path | None = None
    profile: str = Field(default="auto", pattern=r"^[a-z0-9_-]{1,64}$")
    publish_raw: Literal["errors", "all"] = "errors"
    idle_timeout_s: float = Field(default=30.0, gt=0, le=86_400)
    # baudrate/parity "auto": detect again after this long with bytes arriving but no frame decoded.
    redetect_after_s: float = Field(default=600.0, ge=30, le=86_400)

    @field_validator("name")
    @classmethod
    def _slug(cls, value: str) -> str:
        if not _SLUG.fullmatch(value):
            raise ValueError("must be 1-64 characters of a-z, 0-9, '_' and '-' (it is used in MQTT topics)")
        return value

    @field_validator("port")
    @classmethod
    def _port(cls, value: str) -> str:
        if value.startswith("/"):
            return value
        match = _URL_PORT.fullmatch(value)
        if match is None or not 1 <= int(match["port"]) <= 65535:
            raise ValueError("must be a device path (/dev/ttyUSB0), socket://host:port or rfc2217://host:port")
        return value

    @model_validator(mode="after")
    def _key_sources(self) -> MeterConfig:
        for field in ("encryption_key", "authentication_key"):
            file_field = f"{field}_file"
            path: Path | None = getattr(self, file_field)
            if path is not None:
                if getattr(self, field) is not None:
                    raise ValueError(f"{file_field}: set either {field} or {file_field}, not both")
                source, label = path, file_field
            elif getattr(self, field) is None and (credential := _credential(f"{self.name}.{field}")):
                source, label = credential, f"{field} (systemd credential {self.name}.{field})"
            else:
                continue
            text = _read_secret_file(source, label)
            try:
                key = parse_key_text(text)
            except ValueError as exc:
                raise ValueError(f"{label}: {exc}") from None
            setattr(self, field, SecretBytes(key))
        return self


class AmsdConfig(_Section):
    """The whole configuration. Build it directly (no env, no file) or with `load_config`."""

    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    homeassistant: HomeAssistantConfig = Field(default_factory=HomeAssistantConfig)
    outbox: OutboxConfig = Field(default_factory=OutboxConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    meters: list[MeterConfig] = Field(default_factory=list)
    accounting: AccountingConfig = Field(default_factory=AccountingConfig)

    @model_validator(mode="after")
    def _unique_meters(self) -> AmsdConfig:
        names: set[str] = set()
        ports: set[str] = set()
        for meter in self.meters:
            if meter.name in names:
                raise ValueError(f"meters: two meters are named {meter.name!r}; names must be unique")
            if meter.port in ports:
                raise ValueError(f"meters: two meters read {meter.port}; a port can be read only once")
            names.add(meter.name)
            ports.add(meter.port)
        return self

    @model_validator(mode="after")
    def _accounted_meters_exist(self) -> AmsdConfig:
        unknown = [name for name in self.accounting.meters or () if name not in {m.name for m in self.meters}]
        if unknown:
            raise ValueError(f"accounting: meters names unknown meter(s) {', '.join(map(repr, unknown))}")
        return self

    def secret_values(self) -> Iterator[bytes | str]:
        """Every configured secret, for log redaction."""
        return self.for_run().secret_values()

    def for_run(self) -> RunConfig:
        """The daemon's plain view of this configuration (`amsd.runconfig`): no pydantic needed to use it."""
        view: RunConfig = _run_view(self)
        return view

    def masked_dict(self) -> dict[str, Any]:
        """The effective configuration as JSON-compatible data, every secret masked."""
        data: dict[str, Any] = self.model_dump(mode="json")
        return data


# Each section model and its runtime view. Their fields match by name (tests/test_runconfig.py).
RUN_VIEWS: Final[Mapping[type[_Section], type[Any]]] = {
    AmsdConfig: RunConfig,
    MqttConfig: MqttSettings,
    TlsConfig: TlsSettings,
    HomeAssistantConfig: HomeAssistantSettings,
    OutboxConfig: OutboxSettings,
    LogConfig: LogSettings,
    AccountingConfig: AccountingSection,
    MeterConfig: MeterSettings,
}
GIVEN_SUFFIX: Final = "_given"  # a view field `<name>_given`: whether `<name>` was set explicitly


def _run_view(model: BaseModel) -> Any:
    """The runtime view of a section, field by field of the view class (the `*_file` fields of the
    model have no counterpart: their secrets are already read)."""
    # The mro walk: load_config returns a pydantic-settings subclass of AmsdConfig.
    view = next(RUN_VIEWS[cls] for cls in type(model).__mro__ if cls in RUN_VIEWS)
    model_fields = type(model).model_fields
    values: dict[str, Any] = {}
    for field in dataclasses.fields(view):
        name = field.name
        if name not in model_fields and name.endswith(GIVEN_SUFFIX):
            values[name] = name.removesuffix(GIVEN_SUFFIX) in model.model_fields_set
        else:
            values[name] = _run_value(getattr(model, name))
    return view(**values)


def _run_value(value: object) -> object:
    if isinstance(value, BaseModel):
        return _run_view(value)
    if isinstance(value, SecretStr):
        return Secret(value.get_secret_value())
    if isinstance(value, SecretBytes):
        return Secret(value.get_secret_value())
    if isinstance(value, list):
        return tuple(_run_value(item) for item in value)
    return value


# --- loading ------------------------------------------------------------------------------------


def _env_name(path: tuple[str | int, ...]) -> str:
    return ENV_PREFIX + ENV_DELIMITER.join(str(part).upper() for part in path)


def merge_env_overrides(base: Any, override: Any, path: tuple[str | int, ...] = ()) -> Any:
    """Deep-merge env overrides into the TOML data. A dict with integer keys over a list (what
    `AMSD_METERS__0__KEY` produces) updates that list element; an index one past the end appends."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = merge_env_overrides(base[key], value, (*path, key)) if key in base else value
        return merged
    if isinstance(base, list) and isinstance(override, dict) and all(k.isdigit() for k in override):
        merged_list = list(base)
        for index_text in sorted(override, key=int):
            index = int(index_text)
            if index < len(merged_list):
                merged_list[index] = merge_env_overrides(merged_list[index], override[index_text], (*path, index))
            elif index == len(merged_list):
                merged_list.append(override[index_text])
            else:
                raise ConfigError(
                    f"{_env_name((*path, index))}: index {index} is beyond the {len(merged_list)} "
                    f"configured entries (use {len(merged_list)} to add one)"
                )
        return merged_list
    return override


def _format_loc(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _upper_environ() -> set[str]:
    return {name.upper() for name in os.environ}


def format_validation_error(error: ValidationError) -> str:
    """One line per problem, `field.path: message`, without the offending values."""
    lines = []
    for item in error.errors(include_url=False, include_input=False, include_context=False):
        loc = _format_loc(tuple(item["loc"]))
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key (check the spelling; see config.example.toml)"
        elif item["type"] == "missing":
            message = "required"
        # Model-level validators prefix their message with the field they are about.
        if (match := _FIELD_PREFIX.fullmatch(message)) is not None:
            loc = f"{loc}.{match['field']}" if loc else match["field"]
            message = match["message"]
        if item["loc"] and (env_name := _env_name(tuple(item["loc"]))) in _upper_environ():
            message += f" (from environment variable {env_name})"
        lines.append(f"{loc or '(top level)'}: {message}")
    return "\n".join(lines)


_METER_SECRETS: Final = ("encryption_key", "authentication_key")


def exposed_secrets_warning(path: Path, raw_toml: Mapping[str, Any]) -> str | None:
    """A warning when the config file itself holds a key or password and group or others may read it.

    Names the fields, never their values; secrets given through `*_file` keys, systemd credentials
    or the environment do not count."""
    fields: list[str] = []
    mqtt = raw_toml.get("mqtt")
    if isinstance(mqtt, Mapping) and mqtt.get("password"):
        fields.append("mqtt.password")
    meters = raw_toml.get("meters")
    if isinstance(meters, list):
        for index, entry in enumerate(meters):
            if isinstance(entry, Mapping):
                fields += [f"meters[{index}].{key}" for key in _METER_SECRETS if entry.get(key)]
    if not fields:
        return None
    try:
        mode = path.stat().st_mode & 0o777
    except OSError:
        return None
    if not mode & 0o077:
        return None
    return (
        f"config file {path} holds secrets ({', '.join(fields)}) and is readable by group/others "
        f"(mode {mode:04o}); fix: chmod 600 {path} (or move the secrets to *_file keys or systemd credentials)"
    )


def load_config(path: str | Path, *, require_meters: bool = True) -> AmsdConfig:
    """Read the TOML file, apply `AMSD_*` environment overrides and secret files, validate.

    Raises ConfigError with a message naming every bad field and never echoing a value. Every secret
    found is registered with the log redactor."""
    toml_path = Path(path)
    try:
        with toml_path.open("rb") as handle:
            raw_toml = tomllib.load(handle)  # syntax check with a clear error before pydantic-settings reads it
    except FileNotFoundError:
        raise ConfigError(f"{toml_path}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"{toml_path}: cannot read: {exc.strerror or type(exc).__name__}") from None
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message names the line and column, not the text of the line.
        raise ConfigError(f"{toml_path}: TOML syntax error: {exc}") from None
    # pydantic-settings is imported only here: `amsd run` keeps it out of the long-running process.
    from amsd.config_sources import settings_from

    config = settings_from(toml_path)
    if require_meters:
        validate_for_run(config)
    exposed = exposed_secrets_warning(toml_path, raw_toml)
    if exposed is not None:
        # stdlib logging: before configure_logging() it still reaches stderr (logging.lastResort).
        logging.getLogger("amsd.config").warning(exposed)
    from amsd.log import register_secret  # lazy: structlog is only needed once the config is good

    for secret in config.secret_values():
        register_secret(secret)
    return config


# --- amsd check-config --------------------------------------------------------------------------


class _ConfigArgs(Protocol):
    config: str


def check_config_command(args: _ConfigArgs, *, out: Callable[[str], object] | None = None) -> int:
    """`amsd check-config -c FILE`: print the effective config as JSON with secrets masked.

    Exit 0 when it is usable by `amsd run`, 2 with `amsd: config error: ...` on stderr otherwise."""
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"amsd: config error: {exc}", file=sys.stderr)
        return 2
    overrides = env_overrides()
    if overrides:
        # Names only: the values may be secrets.
        print(f"amsd: environment overrides: {', '.join(overrides)}", file=sys.stderr)
    text = json.dumps(config.masked_dict(), indent=2, ensure_ascii=False)
    (out or print)(text)
    return 0


def env_overrides(environ: Mapping[str, str] | None = None) -> list[str]:
    """Names (not values) of the `AMSD_*` variables that take part in the configuration."""
    env = os.environ if environ is None else environ
    sections = {f"{ENV_PREFIX}{name.upper()}" for name in AmsdConfig.model_fields}
    return sorted(name for name in env if name.upper() in sections or name.upper().split(ENV_DELIMITER)[0] in sections)
