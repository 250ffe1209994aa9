"""Configuration: TOML + env + secret files, validation messages without values, check-config."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from pydantic import SecretBytes

from amsd import log as amsd_log
from amsd.config import (
    AmsdConfig,
    ConfigError,
    HomeAssistantConfig,
    LogConfig,
    MeterConfig,
    MqttConfig,
    OutboxConfig,
    TlsConfig,
    check_config_command,
    load_config,
    validate_for_run,
)
from amsd.runconfig import config_from_handover, handover_bytes

REPO = Path(__file__).resolve().parent.parent
# Made-up test keys (not from any meter or corpus).
KEY_HEX = "a1b2c3d4e5f60718293a4b5c6d7e8f90"
KEY = bytes.fromhex(KEY_HEX)
AUTH_HEX = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
# 200 characters with everything that breaks naive quoting.
PASSWORD = ("p@ss 'w\"o\\r#d'=; $HOME `x` \\n æøå ünï 😀 \t" * 6)[:200]
assert len(PASSWORD) == 200


pytestmark = pytest.mark.usefixtures("clean_config_env")


def toml_string(text: str) -> str:
    """A TOML basic string for any text (escapes quotes, backslashes and control characters)."""
    out = []
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def write(tmp_path: Path, text: str, name: str = "amsd.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


METER = '[[meters]]\nname = "house"\nport = "/dev/ttyUSB0"\n'


def load_text(tmp_path: Path, text: str, **kwargs: bool) -> AmsdConfig:
    return load_config(write(tmp_path, text), **kwargs)


def config_error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text)
    return str(info.value)


# --- basics ---------------------------------------------------------------------------------------


def test_minimal_config_defaults(tmp_path: Path) -> None:
    config = load_text(tmp_path, METER)
    assert config.mqtt.host == "localhost"
    assert config.mqtt.port == 1883
    assert config.mqtt.qos == 1
    assert config.mqtt.protocol == "3.1.1"
    assert config.mqtt.tls is None
    assert config.mqtt.client_id.startswith("amsd-")
    assert config.homeassistant.enabled is True
    assert config.outbox.path == Path("/var/lib/amsd/outbox.sqlite3")
    assert config.outbox.max_messages == 100_000
    meter = config.meters[0]
    assert (meter.baudrate, meter.parity, meter.bytesize, meter.stopbits) == (2400, "N", 8, 1)
    assert meter.encryption_key is None
    assert meter.publish_raw == "errors"
    assert meter.idle_timeout_s == 30


def test_full_config(tmp_path: Path) -> None:
    config = load_text(
        tmp_path,
        """
[mqtt]
host = "broker.lan"
port = 8883
username = "amsd"
client_id = "amsd-test"
topic_prefix = "home/meter"
qos = 0
protocol = 5
keepalive = 60
retain_values = true
payload_format = "amsreader"
[mqtt.tls]
ca_file = "/etc/ssl/ca.pem"
insecure = true
[homeassistant]
enabled = false
discovery_prefix = "ha"
[outbox]
path = "/tmp/x.sqlite3"
max_messages = 10
[log]
level = "DEBUG"
format = "json"
[[meters]]
name = "house"
port = "socket://10.1.2.3:4001"
baudrate = "auto"
parity = "e"
bytesize = 7
stopbits = 2
profile = "kamstrup-se"
publish_raw = "all"
idle_timeout_s = 12.5
""",
    )
    assert config.mqtt.protocol == "5"
    assert config.mqtt.tls is not None and config.mqtt.tls.insecure
    assert config.mqtt.tls.ca_file == Path("/etc/ssl/ca.pem")
    assert config.log.level == "debug"
    meter = config.meters[0]
    assert (meter.baudrate, meter.parity, meter.bytesize, meter.stopbits) == ("auto", "E", 7, 2)


@pytest.mark.parametrize(("value", "expected"), [("true", True), ("false", False)])
def test_tls_bool(tmp_path: Path, value: str, expected: bool) -> None:
    config = load_text(tmp_path, f"[mqtt]\ntls = {value}\n" + METER)
    assert (config.mqtt.tls is not None) is expected


def test_state_directory_sets_outbox_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", f"{tmp_path}/state:/other")
    config = load_text(tmp_path, METER)
    assert config.outbox.path == tmp_path / "state" / "outbox.sqlite3"


def test_no_meters_is_an_explicit_run_requirement(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no meters configured"):
        load_text(tmp_path, "[mqtt]\n")
    config = load_text(tmp_path, "[mqtt]\n", require_meters=False)
    assert config.meters == []
    with pytest.raises(ConfigError):
        validate_for_run(config)


def test_programmatic_config_ignores_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMSD_MQTT__HOST", "from-env")
    config = AmsdConfig(meters=[MeterConfig(name="demo", port="socket://127.0.0.1:1", encryption_key=SecretBytes(KEY))])
    validate_for_run(config)
    assert config.mqtt.host == "localhost"
    assert config.meters[0].encryption_key is not None
    assert config.meters[0].encryption_key.get_secret_value() == KEY


# --- keys -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        KEY_HEX,
        KEY_HEX.upper(),
        "0x" + KEY_HEX,
        "0X" + KEY_HEX.upper(),
        " ".join(KEY_HEX[i : i + 2] for i in range(0, 32, 2)),
        ":".join(KEY_HEX[i : i + 2] for i in range(0, 32, 2)),
        "-".join(KEY_HEX[i : i + 8] for i in range(0, 32, 8)),
        f"  {KEY_HEX}  ",
    ],
)
def test_key_spellings_accepted(tmp_path: Path, text: str) -> None:
    config = load_text(tmp_path, METER + f'encryption_key = "{text}"\nauthentication_key = "{AUTH_HEX}"\n')
    meter = config.meters[0]
    assert meter.encryption_key is not None and meter.encryption_key.get_secret_value() == KEY
    assert meter.authentication_key is not None
    assert meter.authentication_key.get_secret_value() == bytes.fromhex(AUTH_HEX)
    # Masked wherever it could be printed.
    for text_form in (repr(meter), str(meter), repr(config), meter.model_dump_json()):
        assert KEY_HEX not in text_form.lower()
        assert repr(KEY) not in text_form


@pytest.mark.parametrize(
    ("field", "value", "got"),
    [
        ("encryption_key", KEY_HEX[:30], "got 30"),
        ("encryption_key", KEY_HEX + "ab", "got 34"),
        ("authentication_key", AUTH_HEX[:30], "got 30"),
        ("authentication_key", AUTH_HEX + "01", "got 34"),
        ("encryption_key", "zz" + KEY_HEX[2:], "hex digits"),
    ],
)
def test_bad_key_names_field_not_value(tmp_path: Path, field: str, value: str, got: str) -> None:
    message = config_error(tmp_path, METER + f'{field} = "{value}"\n')
    assert f"meters[0].{field}: " in message
    assert got in message
    assert value not in message
    assert value[:16] not in message.lower()


def test_second_meter_index_in_message(tmp_path: Path) -> None:
    text = METER + '[[meters]]\nname = "b"\nport = "/dev/ttyUSB1"\n' + f'encryption_key = "{KEY_HEX[:30]}"\n'
    message = config_error(tmp_path, text)
    assert "meters[1].encryption_key: must be 32 hex characters (got 30)" in message


def test_key_must_be_string(tmp_path: Path) -> None:
    message = config_error(tmp_path, METER + "encryption_key = 12345\n")
    assert "meters[0].encryption_key" in message
    assert "12345" not in message


# --- validation -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("typo = 1\n" + METER, "typo"),
        ("[mqtt]\nhots = 'x'\n" + METER, "mqtt.hots"),
        ("[mqtt.tls]\ncafile = 'x'\n" + METER, "mqtt.tls.cafile"),
        ("[homeassistant]\nenable = true\n" + METER, "homeassistant.enable"),
        ("[outbox]\nmax = 1\n" + METER, "outbox.max"),
        ("[log]\nlevl = 'debug'\n" + METER, "log.levl"),
        (METER + "baud = 2400\n", "meters[0].baud"),
        ("[mqtts]\nhost = 'x'\n" + METER, "mqtts"),
    ],
)
def test_unknown_keys_rejected_everywhere(tmp_path: Path, text: str, where: str) -> None:
    message = config_error(tmp_path, text)
    assert f"{where}: unknown key" in message


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("[mqtt]\nport = 0\n" + METER, "mqtt.port"),
        ("[mqtt]\nqos = 3\n" + METER, "mqtt.qos"),
        ("[mqtt]\nprotocol = '4'\n" + METER, "mqtt.protocol"),
        ("[mqtt]\ntopic_prefix = 'a/#'\n" + METER, "mqtt.topic_prefix"),
        ("[mqtt]\npayload_format = 'x'\n" + METER, "mqtt.payload_format"),
        ("[log]\nlevel = 'loud'\n" + METER, "log.level"),
        ("[log]\nformat = 'xml'\n" + METER, "log.format"),
        ("[outbox]\nmax_messages = 0\n" + METER, "outbox.max_messages"),
        ('[[meters]]\nname = "House"\nport = "/dev/x"\n', "meters[0].name"),
        ('[[meters]]\nname = "a"\nport = "ttyUSB0"\n', "meters[0].port"),
        ('[[meters]]\nname = "a"\nport = "socket://host"\n', "meters[0].port"),
        ('[[meters]]\nname = "a"\n', "meters[0].port"),
        (METER + "baudrate = 2401\n", "meters[0].baudrate"),
        (METER + "parity = 'X'\n", "meters[0].parity"),
        (METER + "bytesize = 6\n", "meters[0].bytesize"),
        (METER + "publish_raw = 'some'\n", "meters[0].publish_raw"),
        (METER + "idle_timeout_s = 0\n", "meters[0].idle_timeout_s"),
        (METER + METER, "meters"),
    ],
)
def test_invalid_values_name_the_field(tmp_path: Path, text: str, where: str) -> None:
    assert f"\n{where}: " in config_error(tmp_path, text)


def test_all_errors_reported_at_once(tmp_path: Path) -> None:
    message = config_error(tmp_path, "[mqtt]\nport = 0\nqos = 9\n" + METER + "parity = 'X'\n")
    assert {"mqtt.port", "mqtt.qos", "meters[0].parity"} <= {line.split(":")[0] for line in message.splitlines()}


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "absent.toml")


def test_toml_syntax_error_has_line(tmp_path: Path) -> None:
    message = config_error(tmp_path, f'[mqtt]\nhost = "x"\npassword = "{KEY_HEX}\n')
    assert "TOML syntax error" in message
    assert "line 3" in message
    assert KEY_HEX not in message


# --- secrets --------------------------------------------------------------------------------------


def test_password_round_trips_from_toml(tmp_path: Path) -> None:
    config = load_text(tmp_path, f"[mqtt]\npassword = {toml_string(PASSWORD)}\n" + METER)
    assert config.mqtt.password is not None
    assert config.mqtt.password.get_secret_value() == PASSWORD


def test_env_overrides_host_and_password(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMSD_MQTT__HOST", "broker.example")
    monkeypatch.setenv("AMSD_MQTT__PASSWORD", PASSWORD)
    monkeypatch.setenv("AMSD_MQTT__TLS__CA_FILE", "/etc/ca.pem")
    monkeypatch.setenv("AMSD_LOG__LEVEL", "debug")
    config = load_text(tmp_path, '[mqtt]\nhost = "file-host"\npassword = "file"\nport = 1884\n' + METER)
    assert config.mqtt.host == "broker.example"
    assert config.mqtt.port == 1884  # untouched keys keep the file's value
    assert config.mqtt.password is not None
    assert config.mqtt.password.get_secret_value() == PASSWORD
    assert config.mqtt.tls is not None and config.mqtt.tls.ca_file == Path("/etc/ca.pem")
    assert config.log.level == "debug"


def test_env_overrides_meter_by_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMSD_METERS__0__ENCRYPTION_KEY", KEY_HEX.upper())
    monkeypatch.setenv("AMSD_METERS__1__NAME", "garage")
    monkeypatch.setenv("AMSD_METERS__1__PORT", "socket://127.0.0.1:4001")
    monkeypatch.setenv("AMSD_CONFORMANCE_DIR", "/not/config")  # plain AMSD_ variables are not config
    config = load_text(tmp_path, METER + "baudrate = 9600\n")
    assert config.meters[0].baudrate == 9600
    assert config.meters[0].encryption_key is not None
    assert config.meters[0].encryption_key.get_secret_value() == KEY
    assert [meter.name for meter in config.meters] == ["house", "garage"]


def test_env_bad_key_names_variable_not_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMSD_METERS__0__ENCRYPTION_KEY", KEY_HEX[:30])
    message = config_error(tmp_path, METER)
    assert "meters[0].encryption_key: must be 32 hex characters (got 30)" in message
    assert "AMSD_METERS__0__ENCRYPTION_KEY" in message
    assert KEY_HEX[:30] not in message


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("AMSD_MQQT__HOST", "unknown section"),
        ("AMSD_MQTT__HOTS", "mqtt.hots"),
        ("AMSD_METERS__3__NAME", "index 3"),
    ],
)
def test_env_typos_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, expected: str) -> None:
    monkeypatch.setenv(name, "x")
    assert expected in config_error(tmp_path, METER)


def test_key_and_password_files(tmp_path: Path) -> None:
    (tmp_path / "ek").write_text(f"  0x{KEY_HEX.upper()}\n")
    (tmp_path / "ak").write_text(AUTH_HEX + "\n")
    (tmp_path / "pw").write_text(PASSWORD + "\n", encoding="utf-8")
    config = load_text(
        tmp_path,
        f'[mqtt]\npassword_file = "{tmp_path}/pw"\n'
        + METER
        + f'encryption_key_file = "{tmp_path}/ek"\nauthentication_key_file = "{tmp_path}/ak"\n',
    )
    meter = config.meters[0]
    assert meter.encryption_key is not None and meter.encryption_key.get_secret_value() == KEY
    assert meter.authentication_key is not None
    assert config.mqtt.password is not None
    assert config.mqtt.password.get_secret_value() == PASSWORD.strip()


def test_bad_key_file_names_field_not_value(tmp_path: Path) -> None:
    (tmp_path / "ek").write_text(KEY_HEX[:30])
    message = config_error(tmp_path, METER + f'encryption_key_file = "{tmp_path}/ek"\n')
    assert "meters[0].encryption_key_file: must be 32 hex characters (got 30)" in message
    assert KEY_HEX[:30] not in message
    message = config_error(tmp_path, METER + f'encryption_key_file = "{tmp_path}/absent"\n')
    assert "meters[0].encryption_key_file: cannot read" in message


def test_value_and_file_together_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "ek").write_text(KEY_HEX)
    message = config_error(tmp_path, METER + f'encryption_key = "{KEY_HEX}"\nencryption_key_file = "{tmp_path}/ek"\n')
    assert "meters[0].encryption_key_file: set either" in message
    assert KEY_HEX not in message


def test_systemd_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    credentials = tmp_path / "creds"
    credentials.mkdir()
    (credentials / "house.encryption_key").write_text(KEY_HEX + "\n")
    (credentials / "house.authentication_key").write_text(AUTH_HEX)
    (credentials / "mqtt.password").write_text(PASSWORD, encoding="utf-8")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    config = load_text(tmp_path, METER + '[[meters]]\nname = "other"\nport = "/dev/ttyUSB1"\n')
    house, other = config.meters
    assert house.encryption_key is not None and house.encryption_key.get_secret_value() == KEY
    assert house.authentication_key is not None
    assert house.authentication_key.get_secret_value() == bytes.fromhex(AUTH_HEX)
    assert other.encryption_key is None  # credentials are per meter name
    assert config.mqtt.password is not None
    assert config.mqtt.password.get_secret_value() == PASSWORD.strip()


def test_loaded_secrets_are_redacted_from_logs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMSD_MQTT__PASSWORD", PASSWORD)
    load_text(tmp_path, METER + f'encryption_key = "{KEY_HEX}"\n')
    assert amsd_log.redact(f"x {KEY_HEX.upper()} y") == "x *** y"
    assert amsd_log.redact(f"pw={PASSWORD}") == "pw=***"


# --- example config and check-config --------------------------------------------------------------


def test_example_config_loads(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    example = REPO / "config.example.toml"
    config = load_config(example)
    assert config.meters[0].name == "house"
    # With the placeholders filled in through credentials and the environment.
    credentials = tmp_path / "creds"
    credentials.mkdir()
    (credentials / "house.encryption_key").write_text(KEY_HEX)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    monkeypatch.setenv("AMSD_METERS__0__AUTHENTICATION_KEY", AUTH_HEX)
    monkeypatch.setenv("AMSD_MQTT__PASSWORD", PASSWORD)
    config = load_config(example)
    assert config.meters[0].encryption_key is not None
    assert config.meters[0].authentication_key is not None
    assert config.mqtt.password is not None


def test_example_config_documents_every_key() -> None:
    text = (REPO / "config.example.toml").read_text()
    for model in (MqttConfig, TlsConfig, HomeAssistantConfig, OutboxConfig, LogConfig, MeterConfig):
        for key in model.model_fields:
            assert f"{key} =" in text, f"{model.__name__}.{key}"
    for section in ("[mqtt]", "[mqtt.tls]", "[homeassistant]", "[outbox]", "[log]", "[[meters]]"):
        assert section in text


def test_check_config_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, METER + f'encryption_key = "{KEY_HEX}"\n')
    assert check_config_command(SimpleNamespace(config=str(path))) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["meters"][0]["encryption_key"] == "**********"


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.upper().startswith("AMSD_")}
    return subprocess.run(
        [sys.executable, "-m", "amsd", *args],
        cwd=REPO,
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_check_config_cli_masks_secrets(tmp_path: Path) -> None:
    path = write(tmp_path, f"[mqtt]\npassword = {toml_string(PASSWORD)}\n" + METER + f'encryption_key = "{KEY_HEX}"\n')
    result = run_cli("check-config", "-c", str(path), env={"AMSD_METERS__0__AUTHENTICATION_KEY": AUTH_HEX})
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["mqtt"]["password"] == "**********"
    assert shown["meters"][0]["encryption_key"] == "**********"
    assert shown["meters"][0]["authentication_key"] == "**********"
    for secret in (KEY_HEX, AUTH_HEX, PASSWORD[:20]):
        assert secret not in result.stdout + result.stderr


def test_check_config_cli_error_exit_2(tmp_path: Path) -> None:
    bad = KEY_HEX + "a"
    path = write(tmp_path, METER + f'encryption_key = "{bad}"\n')
    result = run_cli("check-config", "-c", str(path))
    assert result.returncode == 2
    assert result.stderr.startswith("amsd: config error: ")
    assert "meters[0].encryption_key: must be 32 hex characters (got 33)" in result.stderr
    assert "Traceback" not in result.stderr
    assert bad not in result.stdout + result.stderr
    assert KEY_HEX not in result.stdout + result.stderr


def test_check_config_cli_missing_file(tmp_path: Path) -> None:
    result = run_cli("check-config", "-c", str(tmp_path / "absent.toml"))
    assert result.returncode == 2
    assert "no such file" in result.stderr
    assert "Traceback" not in result.stderr


# --- handover to the lean `amsd run` image ---------------------------------------------------------


def test_handover_round_trip_keeps_every_value_and_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`amsd run` validates once, then re-executes itself without pydantic-settings (amsd/daemon.py):
    what the second image rebuilds must equal what the first validated, secrets from files included."""
    (tmp_path / "password").write_text(PASSWORD + "\n", encoding="utf-8")
    (tmp_path / "ek").write_text(KEY_HEX)
    monkeypatch.setenv("AMSD_MQTT__PORT", "1884")
    config = load_text(
        tmp_path,
        f"""
[mqtt]
host = "broker.lan"
username = "amsd"
password_file = {toml_string(str(tmp_path / "password"))}
protocol = 5
[mqtt.tls]
ca_file = "/etc/ssl/ca.pem"
[accounting]
enabled = true
[[meters]]
name = "house"
port = "socket://10.1.2.3:4001"
baudrate = "auto"
encryption_key_file = {toml_string(str(tmp_path / "ek"))}
authentication_key = "{AUTH_HEX}"
profile = "kamstrup-se"
[[meters]]
name = "cabin"
port = "/dev/ttyUSB1"
""",
    )
    amsd_log.clear_secrets()
    (tmp_path / "password").unlink()  # the second image must not need the files
    (tmp_path / "ek").unlink()
    copy = config_from_handover(handover_bytes(config.for_run()))

    assert copy == config.for_run()
    assert copy.mqtt.host == "broker.lan" and copy.mqtt.protocol == "5" and copy.accounting.enabled
    assert copy.mqtt.tls is not None and copy.mqtt.tls.ca_file == Path("/etc/ssl/ca.pem")
    assert [m.name for m in copy.meters] == ["house", "cabin"]
    assert copy.meters[0].baudrate == "auto" and copy.meters[0].profile == "kamstrup-se"
    assert copy.mqtt.port == 1884 and copy.mqtt.password is not None
    assert copy.mqtt.password.get_secret_value() == PASSWORD
    assert copy.meters[0].encryption_key is not None and copy.meters[0].encryption_key.get_secret_value() == KEY
    assert copy.meters[1].encryption_key is None
    # The rebuilt config registers its secrets for redaction, like load_config does.
    assert amsd_log.redact(f"x {PASSWORD} {KEY_HEX} y") == "x *** *** y"


def test_handover_rejects_damaged_data_without_echoing_it() -> None:
    for damaged in (b"\x80\x05" + PASSWORD.encode(), b"", pickle.dumps({"mqtt": {"password": PASSWORD}})):
        with pytest.raises(ConfigError) as info:
            config_from_handover(damaged)
        assert PASSWORD not in str(info.value)


def test_config_fd_takes_only_amsd_own_memory_file(tmp_path: Path) -> None:
    """`--config-fd` is internal: a file a user passes is refused before anything is unpickled."""
    bait = tmp_path / "bait"
    bait.write_bytes(b"\x80\x05not a configuration")
    with bait.open("rb") as handle:
        result = subprocess.run(
            [sys.executable, "-m", "amsd", "run", "--config-fd", str(handle.fileno())],
            pass_fds=(handle.fileno(),),
            capture_output=True,
            text=True,
            timeout=30,
            cwd=REPO,
        )
    assert result.returncode == 2
    assert "--config-fd is internal" in result.stderr


def test_reexec_falls_back_when_a_sandbox_refuses_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Under a seccomp filter with SystemCallErrorNumber=EPERM the re-exec fails cleanly: amsd run goes
    on in the first image (more memory, nothing else lost)."""
    from amsd import daemon

    def refuse(*args: object, **kwargs: object) -> int:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.delenv("AMSD_NO_REEXEC", raising=False)
    monkeypatch.setattr(os, "memfd_create", refuse)
    daemon._exec_lean(AmsdConfig().for_run())  # returns instead of replacing this process
    assert "could not re-execute" in capsys.readouterr().err
