"""`amsd decode`: input formats, JSON contract, table output, errors (run as a real subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from amsd.sim import encode as enc
from tests.corpus import load_cases

KEY = "000102030405060708090A0B0C0D0E0F"


def notification(power: int = 1247) -> bytes:
    body = enc.array(
        enc.structure(
            enc.octet_string(enc.obis_code("1-0:1.7.0.255")),
            enc.uint32(power),
            enc.structure(enc.int8(0), enc.enum(27)),
        )
    )
    return enc.data_notification(body, header="none")


def frame(power: int = 1247) -> bytes:
    return enc.hdlc_frame(enc.llc(notification(power)))


def amsd(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "amsd", "decode", *args], input=stdin, capture_output=True, timeout=30, check=False
    )


def events(result: subprocess.CompletedProcess[bytes]) -> list[dict[str, object]]:
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.decode().splitlines()]


def test_hex_with_any_whitespace(tmp_path: Path) -> None:
    text = frame().hex().upper()
    spaced = " ".join(text[i : i + 2] for i in range(0, len(text), 2))
    path = tmp_path / "capture.hex"
    path.write_text(spaced[:40] + "\n\t" + spaced[40:] + "\n")
    [event] = events(amsd("--json", str(path)))
    assert event["event"] == "reading"
    assert event["values"] == {"1-0:1.7.0.255": {"value": 1247, "unit": "W"}}
    assert set(event) >= {"meter_id", "timestamp", "model", "list", "values"}


def test_amsreader_debug_dump(tmp_path: Path) -> None:
    data = frame(5) + frame(6)
    lines = ["[12:00:01] Received 44 bytes", "(D) " + " ".join(f"{b:02X}" for b in data[:30])]
    lines.append("(D) " + " ".join(f"{b:02X}" for b in data[30:]))
    path = tmp_path / "dump.txt"
    path.write_text("\n".join(lines) + "\n")
    got = [e["values"] for e in events(amsd("--json", str(path))) if e["event"] == "reading"]
    assert got == [{"1-0:1.7.0.255": {"value": v, "unit": "W"}} for v in (5, 6)]


def test_binary_capture_and_stdin(tmp_path: Path) -> None:
    path = tmp_path / "capture.bin"
    path.write_bytes(b"\x00\xff" + frame(7))
    from_file = events(amsd("--json", str(path)))
    from_stdin = events(amsd("--json", stdin=path.read_bytes()))
    assert from_file == from_stdin
    assert [e["event"] for e in from_file] == ["undecoded", "reading"]
    assert from_file[0]["layer"] == "stream" and from_file[0]["hex"] == "00FF"


def test_encrypted_without_and_with_key() -> None:
    apdu = enc.glo_cipher(
        notification(),
        system_title=b"KFM\x00\x00\x00\x00\x01",
        invocation_counter=9,
        encryption_key=bytes.fromhex(KEY),
        security_control=0x20,
    )
    data = enc.hdlc_frame(enc.llc(apdu)).hex()
    [no_key] = events(amsd("--json", stdin=data.encode()))
    assert (no_key["error"], no_key["system_title"], no_key["invocation_counter"]) == ("no_key", "4B464D0000000001", 9)
    wrong = events(amsd("--json", "--key", "F" * 32, stdin=data.encode()))
    assert wrong[0]["error"] == "wrong_key"
    pasted = "0x" + ":".join(KEY[i : i + 2] for i in range(0, 32, 2))
    assert events(amsd("--json", "--key", pasted, stdin=data.encode()))[0]["event"] == "reading"


def test_table_output() -> None:
    result = amsd(stdin=frame(1247).hex().encode())
    assert result.returncode == 0
    out = result.stdout.decode()
    assert "reading" in out and "1-0:1.7.0.255" in out and "1247 W" in out


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (["/nonexistent/capture.bin"], None, "cannot read"),
        ([], b"7EA", "odd number"),
        ([], b"   \n", "empty"),
        (["--key", "00" * 15], b"7E", "--key"),
    ],
)
def test_unreadable_input_exits_2(args: list[str], stdin: bytes | None, message: str) -> None:
    result = amsd(*args, stdin=stdin)
    assert result.returncode == 2
    assert message in result.stderr.decode()
    assert b"Traceback" not in result.stderr
    assert b"00" * 15 not in result.stderr


def test_bad_key_message_never_contains_the_key() -> None:
    secret = "0123456789ABCDEF0123456789ABCDE"  # 31 characters
    result = amsd("--key", secret, stdin=b"7E")
    assert result.returncode == 2
    assert secret.encode() not in result.stderr + result.stdout


CORPUS = {case.id: case for case in load_cases()}


@pytest.mark.skipif(
    "lab-dlmscosem-general-glo-cipher-notification" not in CORPUS, reason="conformance corpus not found"
)
def test_corpus_crypto_errors() -> None:
    """On a real authenticated frame: a wrong key is `wrong_key`, a flipped tag bit a tag failure."""
    case = CORPUS["lab-dlmscosem-general-glo-cipher-notification"]
    assert case.key and case.auth_key
    data = case.input.hex().encode()
    wrong = events(amsd("--json", "--key", "F" * 32, "--auth-key", case.auth_key, stdin=data))
    assert [e["error"] for e in wrong] == ["wrong_key"]
    flipped = bytearray(case.input)
    flipped[-1] ^= 0x01
    tampered = events(amsd("--json", "--key", case.key, "--auth-key", case.auth_key, stdin=flipped.hex().encode()))
    assert [e["error"] for e in tampered] == ["tag_mismatch"]
    good = events(amsd("--json", "--key", case.key, "--auth-key", case.auth_key, stdin=data))
    assert not [e for e in good if e["event"] == "undecoded" and e["layer"] == "cipher"]
