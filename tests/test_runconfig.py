"""The daemon's plain configuration view (amsd/runconfig.py): in step with the pydantic models, secrets
kept and masked across the handover, and no pydantic in the re-executed `amsd run`."""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, SecretBytes, SecretStr

from amsd import config as config_module
from amsd import log as amsd_log
from amsd.config import GIVEN_SUFFIX, RUN_VIEWS, AmsdConfig, ConfigError, MeterConfig, OutboxConfig, load_config
from amsd.runconfig import MASK, RunConfig, Secret, config_from_handover, handover_bytes

REPO = Path(__file__).resolve().parent.parent
# Made-up test secrets (not from any meter or corpus).
KEY_HEX = "a1b2c3d4e5f60718293a4b5c6d7e8f90"
AUTH_HEX = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
CREDENTIAL_HEX = "00112233445566778899aabbccddeeff"
PASSWORD = 's3cret pass\'word "with" quotes'

# The secret sources the view leaves out: the secrets they name are already read (amsd/runconfig.py).
FILE_FIELDS = {"password_file", "encryption_key_file", "authentication_key_file"}


pytestmark = pytest.mark.usefixtures("clean_config_env")


def section_models() -> list[type[BaseModel]]:
    """Every pydantic model amsd.config declares (the private base class aside)."""
    return [
        value
        for value in vars(config_module).values()
        if isinstance(value, type)
        and issubclass(value, BaseModel)
        and value.__module__ == config_module.__name__
        and not value.__name__.startswith("_")
    ]


# --- the two sides cannot drift apart ---------------------------------------------------------------


def test_every_section_model_has_a_runtime_view() -> None:
    models = section_models()
    assert len(models) >= 8
    assert set(models) == set(RUN_VIEWS)


@pytest.mark.parametrize(("model", "view"), RUN_VIEWS.items(), ids=[model.__name__ for model in RUN_VIEWS])
def test_model_and_view_have_the_same_fields(model: type[BaseModel], view: type[Any]) -> None:
    view_fields = {field.name for field in dataclasses.fields(view)}
    given = {name for name in view_fields if name.endswith(GIVEN_SUFFIX) and name not in model.model_fields}
    assert {name.removesuffix(GIVEN_SUFFIX) for name in given} <= set(model.model_fields)
    assert view_fields - given == set(model.model_fields) - FILE_FIELDS


def view_data(value: object) -> object:
    """A view as plain data, secrets revealed, without the `*_given` flags."""
    if isinstance(value, Secret):
        return value.get_secret_value()
    if dataclasses.is_dataclass(value):
        names = (field.name for field in dataclasses.fields(value))
        return {name: view_data(getattr(value, name)) for name in names if not name.endswith(GIVEN_SUFFIX)}
    if isinstance(value, tuple):
        return [view_data(item) for item in value]
    return value


def model_data(value: object) -> object:
    """A model as plain data, secrets revealed, without the `*_file` secret sources."""
    if isinstance(value, SecretStr | SecretBytes):
        return value.get_secret_value()
    if isinstance(value, BaseModel):
        names = (name for name in type(value).model_fields if name not in FILE_FIELDS)
        return {name: model_data(getattr(value, name)) for name in names}
    if isinstance(value, list):
        return [model_data(item) for item in value]
    return value


# --- secrets from files, credentials and the environment survive the handover ------------------------


def full_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AmsdConfig:
    """A configuration with every section set away from its defaults, secrets from every source."""
    (tmp_path / "password").write_text(PASSWORD + "\n", encoding="utf-8")
    (tmp_path / "ek").write_text(KEY_HEX)
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "cabin.encryption_key").write_text(CREDENTIAL_HEX)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    monkeypatch.setenv("AMSD_METERS__0__AUTHENTICATION_KEY", AUTH_HEX)
    monkeypatch.setenv("AMSD_LOG__LEVEL", "debug")
    path = tmp_path / "amsd.toml"
    path.write_text(
        f"""
[mqtt]
host = "broker.lan"
port = 8883
username = "amsd"
password_file = "{tmp_path / "password"}"
client_id = "amsd-test"
topic_prefix = "home/power"
qos = 2
protocol = 5
keepalive = 60
retain_values = true
payload_format = "amsreader"
[mqtt.tls]
ca_file = "/etc/ssl/ca.pem"
cert_file = "/etc/ssl/client.pem"
key_file = "/etc/ssl/client.key"
insecure = true
[homeassistant]
enabled = false
discovery_prefix = "ha"
[outbox]
path = "{tmp_path / "outbox.sqlite3"}"
max_messages = 10
[log]
format = "json"
[accounting]
enabled = true
timezone = "Europe/Stockholm"
peak_hours = 5
thresholds_kwh = [1.0, 2.5]
state_dir = "{tmp_path}"
meters = ["house"]
publish_interval_s = 2.5
[[meters]]
name = "house"
port = "socket://10.1.2.3:4001"
baudrate = "auto"
parity = "E"
bytesize = 7
stopbits = 2
encryption_key_file = "{tmp_path / "ek"}"
profile = "kamstrup-se"
publish_raw = "all"
idle_timeout_s = 12.5
redetect_after_s = 60
[[meters]]
name = "cabin"
port = "/dev/ttyUSB1"
baudrate = 9600
""",
        encoding="utf-8",
    )
    return load_config(path)


def test_view_carries_every_value_and_survives_the_handover(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = full_config(tmp_path, monkeypatch)
    view = config.for_run()
    assert isinstance(view, RunConfig)
    assert view_data(view) == model_data(config)
    # The secret files are not needed by the second image, and it registers the secrets itself.
    for name in ("password", "ek"):
        (tmp_path / name).unlink()
    amsd_log.clear_secrets()
    copy = config_from_handover(handover_bytes(view))
    assert copy == view
    assert copy.mqtt.password == Secret(PASSWORD)
    assert copy.meters[0].encryption_key == Secret(bytes.fromhex(KEY_HEX))
    assert copy.meters[0].authentication_key == Secret(bytes.fromhex(AUTH_HEX))
    assert copy.meters[1].encryption_key == Secret(bytes.fromhex(CREDENTIAL_HEX))
    assert copy.meters[1].authentication_key is None
    assert copy.accounting.thresholds_kwh == (1.0, 2.5) and copy.accounting.meters == ("house",)
    assert sorted(map(str, copy.secret_values())) == sorted(map(str, config.secret_values()))
    assert amsd_log.redact(f"x {PASSWORD} {KEY_HEX} {CREDENTIAL_HEX} y") == "x *** *** *** y"


def test_repr_and_str_show_no_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    view = full_config(tmp_path, monkeypatch).for_run()
    for text in (repr(view), str(view), f"{view.mqtt.password}", repr(view.meters)):
        assert MASK in text
        for secret in (PASSWORD, KEY_HEX, AUTH_HEX, CREDENTIAL_HEX):
            assert secret not in text
        for key_hex in (KEY_HEX, AUTH_HEX, CREDENTIAL_HEX):
            assert repr(bytes.fromhex(key_hex)) not in text
    assert repr(Secret(b"\x01" * 16)) == f"Secret('{MASK}')" and str(Secret("pw")) == MASK


def test_parity_given_says_whether_parity_was_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`baudrate = "auto"` alone detects the parity too; an explicit parity (file or env) pins it."""
    meters = [
        MeterConfig(name="a", port="/dev/ttyUSB0", baudrate="auto"),
        MeterConfig(name="b", port="/dev/ttyUSB1", baudrate="auto", parity="N"),
    ]
    assert [m.parity_given for m in AmsdConfig(meters=meters).for_run().meters] == [False, True]
    path = tmp_path / "amsd.toml"
    path.write_text('[[meters]]\nname = "a"\nport = "/dev/ttyUSB0"\nbaudrate = "auto"\n', encoding="utf-8")
    assert not load_config(path).for_run().meters[0].parity_given
    monkeypatch.setenv("AMSD_METERS__0__PARITY", "e")
    meter = load_config(path).for_run().meters[0]
    assert meter.parity_given and meter.parity == "E"


def test_handover_refuses_foreign_types_without_resolving_them() -> None:
    for data in (pickle.dumps(collections.OrderedDict(a=PASSWORD)), pickle.dumps(print)):
        with pytest.raises(ConfigError, match="unreadable") as info:
            config_from_handover(data)
        assert PASSWORD not in str(info.value)
    with pytest.raises(ConfigError, match="not a configuration"):
        config_from_handover(pickle.dumps((1, "two")))
    with pytest.raises(ConfigError, match="not a configuration"):
        config_from_handover(pickle.dumps(Secret(PASSWORD)))


# --- the re-executed image never imports pydantic ------------------------------------------------------

# Runs in a fresh interpreter: like the re-executed `amsd run`, reads the configuration from an
# `amsd-config` memory file and builds the whole daemon, then lists what it imported.
LEAN_IMAGE = """
import json, os, sys
data = sys.stdin.buffer.read()
fd = os.memfd_create("amsd-config", 0)
os.write(fd, data)
os.lseek(fd, 0, os.SEEK_SET)
import amsd.cli
from amsd.daemon import Daemon, _read_handover
from amsd.runconfig import config_from_handover, validate_for_run
config = config_from_handover(_read_handover(fd))
validate_for_run(config)
daemon = Daemon(config)
loaded = sorted(name for name in sys.modules if "pydantic" in name or name == "amsd.config")
print(json.dumps({"loaded": loaded, "meters": len(daemon.pipelines)}))
"""


def test_reexecuted_image_imports_no_pydantic(tmp_path: Path) -> None:
    config = AmsdConfig(
        outbox=OutboxConfig(path=tmp_path / "outbox.sqlite3"),
        meters=[MeterConfig(name="m", port="socket://127.0.0.1:9", encryption_key=SecretBytes(bytes(16)))],
    )
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("AMSD_")}
    result = subprocess.run(
        [sys.executable, "-c", LEAN_IMAGE],
        input=handover_bytes(config.for_run()),
        capture_output=True,
        cwd=REPO,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    report: dict[str, Any] = json.loads(result.stdout)
    assert report == {"loaded": [], "meters": 1}
