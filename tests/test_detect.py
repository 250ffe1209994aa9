"""Line detection pieces without a line: the UART model, FrameSniffer, candidates, persistence,
the capture file format."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path

import pytest

from amsd.decodecli import InputError, read_capture
from amsd.reader import (
    LineSettings,
    auto_candidates,
    load_line_settings,
    prefer,
    save_line_settings,
)
from amsd.sim.meters import MeterSimulator
from amsd.tools import (
    CaptureFormatError,
    FrameSniffer,
    capture_header,
    is_capture,
    parse_capture,
)
from tests.uart_bridge import Framing, uart_receive

DETECT_ORDER = ["2400 8E1", "2400 8N1", "115200 8N1", "9600 7E1", "9600 8N1", "38400 8N1", "115200 7E1"]


def frames(profile: str, count: int = 3) -> list[bytes]:
    simulator = MeterSimulator(profile, seed=3, start=datetime(2026, 1, 5, 12, 0, tzinfo=UTC))
    return [simulator.next_frame().data for _ in range(count)]


# ------------------------------------------------------------------------------------ UART model
def test_uart_same_framing_is_identity() -> None:
    data = bytes(range(256))
    assert uart_receive(data, Framing.parse("2400 8E1"), Framing.parse("2400 8E1")) == data


def test_uart_8e1_read_as_8n1_is_identical_without_parity_checking() -> None:
    # Why parity cannot be told from the bytes alone: with INPCK off the parity bit is just a
    # longer stop bit to an 8N1 receiver.
    data = b"".join(frames("aidon-no", 1))
    assert uart_receive(data, Framing.parse("2400 8E1"), Framing.parse("2400 8N1")) == data


@pytest.mark.parametrize(
    ("sent", "read"),
    [("2400 8N1", "2400 8E1"), ("2400 8E1", "115200 8N1"), ("115200 8N1", "2400 8E1"), ("9600 8N1", "9600 7E1")],
)
def test_uart_wrong_setting_garbles(sent: str, read: str) -> None:
    data = b"".join(frames("kamstrup-no", 1))
    assert uart_receive(data, Framing.parse(sent), Framing.parse(read)) != data


def test_uart_7e1_meter_read_as_8n1_sets_the_parity_bit_as_bit_7() -> None:
    received = uart_receive(b"/", Framing.parse("115200 7E1"), Framing.parse("115200 8N1"))
    assert received == bytes((0x2F | 0x80,))  # 0x2F has five ones: even parity bit is 1


# ------------------------------------------------------------------------------------ FrameSniffer
def test_sniffer_accepts_a_checked_frame_in_pieces() -> None:
    sniffer = FrameSniffer()
    data = frames("aidon-no", 1)[0]
    assert not sniffer(data[:10])
    assert sniffer(data[10:])
    assert sniffer.finding is not None
    assert sniffer.finding.frame_format.startswith("HDLC")
    assert not sniffer.finding.encrypted


def test_sniffer_accepts_encrypted_frames_without_key_and_reports_the_system_title() -> None:
    sniffer = FrameSniffer()
    assert sniffer(b"".join(frames("sagemcom-at", 2)))
    finding = sniffer.finding
    assert finding is not None
    assert finding.encrypted and finding.needs_key
    assert finding.system_title
    assert "M-Bus" in finding.frame_format


def test_sniffer_decrypts_with_the_key() -> None:
    from amsd.sim.meters import DEMO_ENCRYPTION_KEY

    sniffer = FrameSniffer(DEMO_ENCRYPTION_KEY)
    assert sniffer(b"".join(frames("sagemcom-at", 2)))
    assert sniffer.finding is not None
    assert sniffer.finding.encrypted and not sniffer.finding.needs_key
    assert sniffer.finding.values > 0


def test_sniffer_rejects_bare_apdus_found_inside_garbage() -> None:
    # Kaifa at 9600 8N1 read as 9600 7E1: bit 7 stripped, the HDLC frame fails but the 0F... APDU
    # inside still decodes. Content, not luck, must reject that setting.
    sniffer = FrameSniffer()
    garbled = b"".join(
        uart_receive(frame, Framing.parse("9600 8N1"), Framing.parse("9600 7E1")) for frame in frames("kaifa-no", 6)
    )
    assert not sniffer(garbled)
    assert sniffer.frames >= 2  # it did see (unchecked) frames, and did not trust them
    assert sniffer.errors


def test_sniffer_accepts_bare_apdus_in_a_clean_run() -> None:
    # The bare APDU inside an HDLC frame: information field after the 3-byte LLC header.
    data = frames("aidon-no", 2)
    apdus = [frame[frame.index(b"\xe6\xe7\x00") + 3 : -3] for frame in data]
    sniffer = FrameSniffer()
    assert not sniffer(apdus[0])
    assert sniffer(apdus[1])


def test_sniffer_dsmr_with_crc() -> None:
    sniffer = FrameSniffer()
    assert sniffer(frames("dsmr5", 1)[0])
    assert sniffer.finding is not None and sniffer.finding.frame_format.startswith("DSMR")


# ------------------------------------------------------------------------------------ candidates
def test_detect_order_is_exact() -> None:
    assert [c.line for c in auto_candidates("/dev/ttyUSB0")] == DETECT_ORDER
    assert [c.line for c in auto_candidates("rfc2217://bridge:3333")] == DETECT_ORDER
    assert len(auto_candidates("socket://bridge:3333")) == 1


def test_candidates_pinned_by_baudrate_or_parity() -> None:
    assert [c.line for c in auto_candidates("/dev/x", baudrate=9600)] == ["9600 7E1", "9600 8N1"]
    assert [c.line for c in auto_candidates("/dev/x", parity="E")] == ["2400 8E1", "9600 7E1", "115200 7E1"]
    assert [c.line for c in auto_candidates("/dev/x", baudrate=19200)] == ["19200 8E1", "19200 8N1", "19200 7E1"]
    assert auto_candidates("/dev/x", parity="O")[0].line == "2400 8O1"


def test_prefer_moves_the_remembered_setting_first() -> None:
    candidates = auto_candidates("/dev/x")
    remembered = LineSettings("/dev/x", 9600, "N")
    ordered = prefer(candidates, remembered)
    assert ordered[0] == remembered
    assert len(ordered) == len(candidates)
    assert prefer(candidates, None) == candidates


# ------------------------------------------------------------------------------------ persistence
def test_line_settings_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "state" / "line-house.json"
    settings = LineSettings("/dev/ttyUSB0", 115200, "E", 7, 1)
    save_line_settings(path, settings)
    assert load_line_settings(path, "/dev/ttyUSB0") == settings
    assert load_line_settings(path, "/dev/ttyUSB1") is None  # the meter moved: detect again
    assert not list(path.parent.glob("*.tmp"))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "{",
        '{"port": "/dev/x"}',
        '{"port": "/dev/x", "baudrate": 2400, "parity": "X", "bytesize": 8, "stopbits": 1}',
        "[]",
    ],
)
def test_unusable_line_file_counts_as_none(tmp_path: Path, text: str) -> None:
    path = tmp_path / "line.json"
    path.write_text(text)
    assert load_line_settings(path, "/dev/x") is None
    assert load_line_settings(tmp_path / "absent.json", "/dev/x") is None


# ------------------------------------------------------------------------------------ capture file
def test_capture_file_parses_and_decodes() -> None:
    settings = LineSettings("/dev/ttyUSB0", 2400, "E")
    header = capture_header(settings, datetime(2026, 1, 1, tzinfo=UTC))
    assert header.startswith("# amsd capture v1 port=/dev/ttyUSB0 baudrate=2400 bytesize=8 parity=E")
    data = frames("aidon-no", 1)[0]
    text = header + "# a comment\n" + f"0.000000 {data[:20].hex()}\n\n0.5 {data[20:].hex().upper()}\n"
    capture = parse_capture(text.encode())
    assert capture.header["parity"] == "E"
    assert capture.chunks == [(0.0, data[:20]), (0.5, data[20:])]
    assert is_capture(text.encode())
    assert read_capture(text.encode()) == data


@pytest.mark.parametrize(
    ("body", "message"),
    [("0.1 7E\nzz 7E\n", "line 3"), ("0.5 7E\n0.1 7E\n", "backwards"), ("0.1 7G\n", "line 2")],
)
def test_bad_capture_file_names_the_line(body: str, message: str) -> None:
    data = ("# amsd capture v1 port=/dev/x\n" + body).encode()
    with pytest.raises(CaptureFormatError, match=message):
        parse_capture(data)
    with pytest.raises(InputError, match=message):
        read_capture(data)


def test_old_binary_captures_still_decode() -> None:
    data = frames("aidon-no", 1)[0]
    assert read_capture(data) == data
    assert read_capture(io.BytesIO(data.hex().encode()).read()) == data
