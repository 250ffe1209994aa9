"""A config file that holds secrets and is readable by group/others gets a warning naming the fix."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from amsd.config import exposed_secrets_warning, load_config

REPO = Path(__file__).resolve().parents[1]
EK = "0F1E2D3C4B5A69788796A5B4C3D2E1F0"
AK = "A1B2C3D4E5F60718293A4B5C6D7E8F90"
PASSWORD = "s3cret-Passw0rd"


def write(tmp_path: Path, text: str, mode: int) -> Path:
    path = tmp_path / "amsd.toml"
    path.write_text(text)
    path.chmod(mode)
    return path


WITH_KEY = f'[[meters]]\nname = "m"\nport = "/dev/ttyUSB0"\nencryption_key = "{EK}"\nauthentication_key = "{AK}"\n'
WITH_PASSWORD = f'[mqtt]\npassword = "{PASSWORD}"\n[[meters]]\nname = "m"\nport = "/dev/ttyUSB0"\n'
NO_SECRETS = '[[meters]]\nname = "m"\nport = "/dev/ttyUSB0"\n'


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    import os

    for name in list(os.environ):
        if name.upper().startswith("AMSD_"):
            monkeypatch.delenv(name)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o666])
@pytest.mark.parametrize(
    ("text", "fields"),
    [
        (WITH_KEY, ["meters[0].encryption_key", "meters[0].authentication_key"]),
        (WITH_PASSWORD, ["mqtt.password"]),
    ],
)
def test_readable_file_with_secrets_warns_with_the_fix(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, text: str, fields: list[str], mode: int
) -> None:
    path = write(tmp_path, text, mode)
    with caplog.at_level(logging.WARNING, logger="amsd.config"):
        load_config(path)
    warnings = [r.getMessage() for r in caplog.records if r.name == "amsd.config"]
    assert len(warnings) == 1, warnings
    message = warnings[0]
    assert f"chmod 600 {path}" in message and f"{mode:04o}" in message
    for field in fields:
        assert field in message
    for secret in (EK, AK, PASSWORD, EK.lower(), EK[:8]):
        assert secret not in message


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_private_file_with_secrets_does_not_warn(tmp_path: Path, caplog: pytest.LogCaptureFixture, mode: int) -> None:
    path = write(tmp_path, WITH_KEY, mode)
    with caplog.at_level(logging.WARNING, logger="amsd.config"):
        load_config(path)
    assert not [r for r in caplog.records if r.name == "amsd.config"]


def test_readable_file_without_secrets_does_not_warn(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path, NO_SECRETS, 0o644)
    with caplog.at_level(logging.WARNING, logger="amsd.config"):
        load_config(path)
    assert not [r for r in caplog.records if r.name == "amsd.config"]


def test_secrets_from_files_do_not_count(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(EK)
    key_file.chmod(0o600)
    text = f'[[meters]]\nname = "m"\nport = "/dev/ttyUSB0"\nencryption_key_file = "{key_file}"\n'
    path = write(tmp_path, text, 0o644)
    assert exposed_secrets_warning(path, {"meters": [{"encryption_key_file": str(key_file)}]}) is None
    load_config(path)  # and it loads


def test_empty_password_is_not_a_secret(tmp_path: Path) -> None:
    path = write(tmp_path, NO_SECRETS, 0o644)
    assert exposed_secrets_warning(path, {"mqtt": {"password": ""}}) is None


def test_check_config_prints_the_warning_on_stderr_without_the_secret(tmp_path: Path) -> None:
    path = write(tmp_path, WITH_KEY, 0o644)
    result = subprocess.run(
        [sys.executable, "-m", "amsd", "check-config", "-c", str(path)],
        capture_output=True, text=True, timeout=30, cwd=REPO,
        env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "chmod 600" in result.stderr and "readable by group/others" in result.stderr
    assert "chmod" not in result.stdout  # stdout stays the JSON config
    for secret in (EK, AK):
        assert secret not in result.stderr and secret.lower() not in result.stderr
