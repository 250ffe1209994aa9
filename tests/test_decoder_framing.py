"""Framing, reassembly and ciphering layers of the decoder, on frames built by amsd's own encoder."""

from __future__ import annotations

import pytest

from amsd.decoder import NO_KEY, TRUNCATED, WRONG_KEY, Decoder, Event, Reading, UndecodedFrame
from amsd.decoder.keys import InvalidKeyError, parse_key
from amsd.sim import encode as enc

EK = bytes.fromhex("000102030405060708090A0B0C0D0E0F")
AK = bytes.fromhex("D0D1D2D3D4D5D6D7D8D9DADBDCDDDEDF")
OTHER = bytes.fromhex("F0E0D0C0B0A090807060504030201000")
TITLE = b"AMS\x00\x01\x02\x03\x04"


def register(obis: str, value: enc.Data, scaler: int, unit: int) -> enc.Data:
    return enc.structure(enc.octet_string(enc.obis_code(obis)), value, enc.structure(enc.int8(scaler), enc.enum(unit)))


def notification(power: int = 1247, extra_items: int = 0) -> bytes:
    """An Aidon-style list: array of {obis, value, {scaler, unit}}."""
    items = [
        enc.structure(enc.octet_string(enc.obis_code("1-1:0.2.129.255")), enc.visible_string("AIDON_V0001")),
        register("1-0:1.7.0.255", enc.uint32(power), 0, 27),
        register("1-0:32.7.0.255", enc.uint16(2301), -1, 35),
    ]
    items += [register("1-0:31.7.0.255", enc.int16(i), -1, 33) for i in range(extra_items)]
    return enc.data_notification(enc.array(*items), invoke_id=0x40000000, header="none")


def decode(data: bytes, decoder: Decoder | None = None, chunk: int = 0) -> list[Event]:
    decoder = decoder or Decoder()
    events: list[Event] = []
    if chunk:
        for pos in range(0, len(data), chunk):
            events += decoder.feed(data[pos : pos + chunk])
    else:
        events += decoder.feed(data)
    return events + decoder.flush()


def only_reading(events: list[Event]) -> Reading:
    assert [e.event for e in events] == ["reading"], [(e.event, getattr(e, "error", "")) for e in events]
    reading = events[0]
    assert isinstance(reading, Reading)
    return reading


def power(reading: Reading) -> object:
    return reading.values["1-0:1.7.0.255"].value


def errors(events: list[Event]) -> list[tuple[str, str]]:
    return [(e.layer, e.error) for e in events if isinstance(e, UndecodedFrame)]


# ------------------------------------------------------------------------------------------ HDLC
@pytest.mark.parametrize("chunk", [0, 1, 3, 50])
def test_hdlc_frame_any_chunking(chunk: int) -> None:
    frame = enc.hdlc_frame(enc.llc(notification()))
    reading = only_reading(decode(frame, chunk=chunk))
    assert power(reading) == 1247
    assert reading.values["1-0:1.7.0.255"].unit == "W"
    assert reading.values["1-0:32.7.0.255"].value == 230.1
    assert reading.raw == frame


@pytest.mark.parametrize(
    ("destination", "source"),
    [
        (b"\x41", b"\x03"),
        (b"\x02\x23", b"\x08\x83"),
        (b"\x00\x02\x00\x23", b"\x10\x11"),
        (b"\x01", b"\x02\x00\x00\x21"),
    ],
)
def test_hdlc_addresses_of_one_to_four_bytes(destination: bytes, source: bytes) -> None:
    frame = enc.hdlc_frame(enc.llc(notification()), destination=destination, source=source)
    assert power(only_reading(decode(frame))) == 1247


def test_hdlc_is_framed_by_length_not_by_flag() -> None:
    # 0x7E inside the payload (power 0x7E7E) must not split the frame.
    frame = enc.hdlc_frame(enc.llc(notification(power=0x7E7E)))
    assert frame[1:-1].count(0x7E) >= 2
    assert power(only_reading(decode(frame, chunk=1))) == 0x7E7E


def test_hdlc_without_llc_and_i_frame_control() -> None:
    frame = enc.hdlc_frame(notification(), destination=b"\x01", source=b"\x02\x01", control=enc.CONTROL_I)
    assert power(only_reading(decode(frame))) == 1247


@pytest.mark.parametrize("chunk", [0, 1, 17])
def test_hdlc_segmentation_is_reassembled(chunk: int) -> None:
    frames = enc.hdlc_frames(enc.llc(notification(extra_items=40)), max_info=120)
    assert len(frames) >= 3
    reading = only_reading(decode(b"".join(frames), chunk=chunk))
    assert power(reading) == 1247
    assert reading.raw == b"".join(frames)


def test_shared_flags_between_frames() -> None:
    first = enc.hdlc_frame(enc.llc(notification(power=1)))
    second = enc.hdlc_frame(enc.llc(notification(power=2)))
    events = decode(first + second[1:])  # one flag closes the first frame and opens the second
    assert [power(e) for e in events if isinstance(e, Reading)] == [1, 2]
    assert not errors(events)


def test_bad_fcs_is_reported_and_the_next_frame_survives() -> None:
    bad = bytearray(enc.hdlc_frame(enc.llc(notification(power=1))))
    bad[-5] ^= 0x01
    good = enc.hdlc_frame(enc.llc(notification(power=2)))
    events = decode(bytes(bad) + good, chunk=7)
    assert errors(events) == [("hdlc", "fcs_error")]
    assert [power(e) for e in events if isinstance(e, Reading)] == [2]
    assert isinstance(events[0], UndecodedFrame) and events[0].raw == bytes(bad)


def test_noise_and_a_cut_frame_before_a_good_one() -> None:
    good = enc.hdlc_frame(enc.llc(notification(power=5)))
    cut = good[: len(good) // 2]
    events = decode(b"\x00\x55\xaa" + cut + good + b"\x13\x37", chunk=5)
    assert [power(e) for e in events if isinstance(e, Reading)] == [5]
    kinds = errors(events)
    assert ("stream", "noise") in kinds
    assert kinds[-1] == ("stream", TRUNCATED)
    # every byte is accounted for
    assert sum(len(e.raw) for e in events) == 3 + len(cut) + len(good) + 2


def test_lost_segment_drops_the_message_not_the_next() -> None:
    frames = enc.hdlc_frames(enc.llc(notification(power=1, extra_items=40)), max_info=120)
    good = enc.hdlc_frame(enc.llc(notification(power=2)))
    events = decode(b"".join(frames[:1] + frames[2:]) + good)
    assert [power(e) for e in events if isinstance(e, Reading)] == [2]
    assert errors(events)


# ----------------------------------------------------------------------------------------- M-Bus
@pytest.mark.parametrize("chunk", [0, 1, 64])
def test_mbus_apdu_split_over_frames(chunk: int) -> None:
    apdu = notification(extra_items=60)
    frames = enc.mbus_frames(apdu, max_payload=200)
    assert len(frames) >= 2
    reading = only_reading(decode(b"".join(frames), chunk=chunk))
    assert power(reading) == 1247


def test_mbus_length_quirk_for_257_byte_frames() -> None:
    # Austrian meters count the 257 bytes C..payload modulo 256 and send `68 01 01 68`.
    apdu = notification(extra_items=18)
    assert 252 < len(apdu) < 450
    body = bytes((0x53, 0xFF, 0x00, 0x01, 0x67)) + apdu[:252]  # CI 0x00: first, not final
    assert len(body) == 257
    first = bytes((0x68, 0x01, 0x01, 0x68)) + body + bytes((sum(body) & 0xFF, 0x16))
    rest = enc.mbus_frame(apdu[252:], ci=0x11)
    reading = only_reading(decode(first + rest))
    assert power(reading) == 1247


def test_mbus_checksum_error() -> None:
    frame = bytearray(enc.mbus_frame(notification()))
    frame[-2] ^= 0xFF
    events = decode(bytes(frame))
    assert ("mbus", "checksum_error") in errors(events)
    assert not [e for e in events if isinstance(e, Reading)]


# ------------------------------------------------------------------------------------------- GBT
def test_gbt_blocks_in_hdlc_frames() -> None:
    blocks = enc.gbt_blocks(notification(extra_items=30), block_size=100)
    assert len(blocks) >= 3
    stream = b"".join(enc.hdlc_frame(enc.llc(block)) for block in blocks)
    assert power(only_reading(decode(stream, chunk=9))) == 1247


def test_gbt_restarted_sequence() -> None:
    first = enc.gbt_blocks(notification(power=1, extra_items=30), block_size=100)
    second = enc.gbt_blocks(notification(power=2, extra_items=30), block_size=100)
    stream = b"".join(enc.hdlc_frame(enc.llc(block)) for block in first[:2] + second)
    events = decode(stream)
    assert [power(e) for e in events if isinstance(e, Reading)] == [2]
    assert ("gbt", "restarted") in errors(events)


# ---------------------------------------------------------------------------------------- cipher
def ciphered(sc: int = 0x30, key: bytes = EK, auth: bytes | None = AK, counter: int = 77) -> bytes:
    return enc.glo_cipher(
        notification(),
        system_title=TITLE,
        invocation_counter=counter,
        encryption_key=key,
        authentication_key=auth if sc & 0x10 else None,
        security_control=sc,
    )


def test_authenticated_encryption_with_both_keys() -> None:
    reading = only_reading(decode(enc.hdlc_frame(enc.llc(ciphered())), Decoder(EK, AK)))
    assert power(reading) == 1247
    assert reading.system_title == TITLE.hex().upper()
    assert reading.invocation_counter == 77


def test_no_key_reports_title_and_counter_with_the_hex() -> None:
    frame = enc.hdlc_frame(enc.llc(ciphered(counter=41775)))
    events = decode(frame)
    assert errors(events) == [("cipher", NO_KEY)]
    event = events[0]
    assert isinstance(event, UndecodedFrame)
    assert event.system_title == TITLE.hex().upper()
    assert event.invocation_counter == 41775
    assert event.raw == frame


@pytest.mark.parametrize("sc", [0x30, 0x20, 0x21])
@pytest.mark.parametrize("auth", [AK, None])
def test_wrong_encryption_key(sc: int, auth: bytes | None) -> None:
    events = decode(enc.hdlc_frame(enc.llc(ciphered(sc=sc))), Decoder(OTHER, auth))
    assert errors(events) == [("cipher", WRONG_KEY)]


def test_flipped_tag_bit_is_a_tag_failure() -> None:
    apdu = bytearray(ciphered())
    apdu[-1] ^= 0x01
    events = decode(enc.hdlc_frame(enc.llc(bytes(apdu))), Decoder(EK, AK))
    assert errors(events) == [("cipher", "tag_mismatch")]


def test_wrong_authentication_key_is_a_tag_failure() -> None:
    events = decode(enc.hdlc_frame(enc.llc(ciphered())), Decoder(EK, OTHER))
    assert errors(events) == [("cipher", "tag_mismatch")]


@pytest.mark.parametrize("sc", [0x20, 0x21])
def test_encryption_only_needs_no_authentication_key(sc: int) -> None:
    frames = enc.mbus_frames(ciphered(sc=sc), max_payload=60)
    assert power(only_reading(decode(b"".join(frames), Decoder(EK)))) == 1247


def test_authenticated_frame_without_authentication_key_is_decrypted() -> None:
    assert power(only_reading(decode(enc.hdlc_frame(enc.llc(ciphered())), Decoder(EK)))) == 1247


def test_encrypted_gbt_push() -> None:
    blocks = enc.gbt_blocks(ciphered(), block_size=40)
    stream = b"".join(enc.hdlc_frame(enc.llc(block)) for block in blocks)
    assert power(only_reading(decode(stream, Decoder(EK, AK), chunk=11))) == 1247


def test_bare_apdus_in_a_stream_without_envelope() -> None:
    stream = ciphered() + enc.llc(notification(power=3)) + notification(power=4)
    events = decode(stream, Decoder(EK, AK), chunk=1)
    assert [power(e) for e in events if isinstance(e, Reading)] == [1247, 3, 4]


def test_no_bare_apdu_on_a_framed_line() -> None:
    # Noise that hits an HDLC header hides the frame; the APDU inside it is unchecked and must not be
    # decoded on a line known to carry HDLC frames.
    damaged = bytearray(enc.hdlc_frame(enc.llc(notification(power=2))))
    damaged[7] ^= 0x40  # inside the HCS
    stream = (
        enc.hdlc_frame(enc.llc(notification(power=1))) + bytes(damaged) + enc.hdlc_frame(enc.llc(notification(power=3)))
    )
    for chunk in (0, 1, 9):
        events = decode(stream, chunk=chunk)
        assert [power(e) for e in events if isinstance(e, Reading)] == [1, 3]
        assert ("stream", "noise") in errors(events)


# ------------------------------------------------------------------------------------------ DSMR
def telegram(**options: bool | str) -> bytes:
    return enc.dsmr_telegram(
        "ISK5\\2M550T-1012",
        ["1-3:0.2.8(50)", "0-0:1.0.0(240101120000W)", "1-0:1.8.1(000123.456*kWh)", "1-0:1.7.0(01.234*kW)"],
        **options,  # type: ignore[arg-type]
    )


def test_dsmr_telegram_in_a_stream_with_noise() -> None:
    events = decode(b"\xff\x00" + telegram() + b"\r\n" + telegram(line_end="\n"), chunk=13)
    readings = [e for e in events if isinstance(e, Reading)]
    assert len(readings) == 2
    assert readings[0].values["1-0:1.7.0.255"].value == 1234
    assert readings[0].crc_present is True


@pytest.mark.parametrize("cut_at", ["1-0:1.8.1(0001", "0-0:1.0.0(", "1-0:1.7.0(01.234*k"])
def test_dsmr_telegram_cut_mid_line_does_not_swallow_the_next(cut_at: str) -> None:
    whole = telegram()
    cut = whole[: whole.index(cut_at.encode()) + len(cut_at)]
    for chunk in (0, 1, 7):
        events = decode(cut + telegram() + telegram(), chunk=chunk)
        assert sum(isinstance(e, Reading) for e in events) == 2
        failed = [e for e in events if isinstance(e, UndecodedFrame)]
        assert [(e.layer, e.raw) for e in failed] == [("dsmr", cut)]


def test_dsmr_whole_telegram_inside_glo_ciphering() -> None:
    # Luxembourg Smarty / Styria: the telegram is the plaintext of a DB APDU.
    apdu = enc.glo_cipher(
        telegram(),
        system_title=b"SAG\x00\x00\x00\x00\x01",
        invocation_counter=5,
        encryption_key=EK,
        authentication_key=AK,
        security_control=0x30,
    )
    reading = only_reading(decode(apdu, Decoder(EK, AK), chunk=32))
    assert reading.protocol == "dsmr"
    assert reading.values["1-0:1.8.1.255"].value == 123.456
    assert reading.system_title == "5341470000000001"


# ------------------------------------------------------------------------------------------ keys
@pytest.mark.parametrize(
    "text",
    [
        "000102030405060708090A0B0C0D0E0F",
        "000102030405060708090a0b0c0d0e0f",
        "0x000102030405060708090A0B0C0D0E0F",
        "00 01 02 03 04 05 06 07 08 09 0A 0B 0C 0D 0E 0F",
        "00:01:02:03:04:05:06:07:08:09:0A:0B:0C:0D:0E:0F",
        "0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x0E, 0x0F",
    ],
)
def test_keys_are_accepted_as_people_paste_them(text: str) -> None:
    assert parse_key(text, "encryption_key") == EK


@pytest.mark.parametrize("text", ["00" * 15, "00" * 17, "0" * 30, "0" * 34, "0" * 31 + "G"])
def test_bad_keys_name_the_field_not_the_value(text: str) -> None:
    with pytest.raises(InvalidKeyError) as info:
        Decoder(encryption_key=text)
    assert "encryption_key" in str(info.value)
    assert text not in str(info.value)


def test_dsmr_clear_ident_with_encrypted_body() -> None:
    # Polish Elgama style: `/EGM5...` in clear, then the ciphering body without its DB tag.
    full = telegram()
    ident_end = full.index(b"\n") + 1
    body = enc.glo_cipher(
        full[ident_end:],
        system_title=b"EGM\x00\x00\x00\x00\x07",
        invocation_counter=3,
        encryption_key=EK,
        authentication_key=AK,
        security_control=0x30,
    )
    line = full[:ident_end] + body[1:]
    for chunk in (0, 1, 13):
        reading = only_reading(decode(line, Decoder(EK, AK), chunk=chunk))
        assert reading.protocol == "dsmr"
        assert reading.values["1-0:1.7.0.255"].value == 1234
        assert reading.crc_present is True
        assert reading.system_title == "45474D0000000007"
    events = decode(line)
    assert errors(events) == [("cipher", NO_KEY)]
    assert errors(decode(line, Decoder(OTHER, AK))) == [("cipher", WRONG_KEY)]


def test_cryptography_is_imported_only_when_a_frame_needs_aes() -> None:
    """Unencrypted lines never load `cryptography` (~8 MB RSS); the first ciphered frame does."""
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from amsd.decoder import Decoder\n"
        "from amsd.sim import encode\n"
        f"decoder = Decoder({EK!r}, {AK!r})\n"
        "decoder.feed(b'~\\xa0\\x08\\x00')\n"
        "decoder.flush()\n"
        "print('cryptography' in sys.modules)\n"
        "frame = encode.glo_cipher(bytes.fromhex('0f0000000100020209060100010700ff1105'), system_title=b'ABC00001',"
        f" invocation_counter=1, encryption_key={EK!r}, authentication_key={AK!r})\n"
        "print(type(decoder.feed(frame)[0]).__name__, 'cryptography' in sys.modules)\n"
    )
    # (the encoder imports it too, only in glo_cipher: the first line covers importing amsd.sim.encode)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.split() == ["False", "Reading", "True"]


def test_flag_inclusive_x25_constants() -> None:
    """The HDLC fast path checks HCS and FCS over the frame with its flags (amsd.decoder.crc)."""
    from binascii import crc_hqx

    from amsd.decoder.crc import X25_BEFORE_FLAG, X25_GOOD, X25_GOOD_THEN_FLAG

    assert crc_hqx(b"\x7e", X25_BEFORE_FLAG) == 0xFFFF
    assert crc_hqx(b"\x7e", X25_GOOD) == X25_GOOD_THEN_FLAG


# --- ciphertext that looks like a frame ------------------------------------------------------------
# A bare general-glo-ciphering APDU (Luxembourg/Austrian P1 style: no framing around it) carries
# ciphertext, and ciphertext is random bytes: now and then it contains `/ABC...\n`, `68 L L 68` or an
# HDLC header that checks out. Such a frame must still decode, whole or in small chunks.
_INNER_EK = bytes(range(16))
_INNER_AK = bytes(range(16, 32))
_INNER_TITLE = b"AMS\x00\x01\x02\x03\x04"
_INNER_FRAMES = {
    "dsmr-ident": b"/ABC5\\Test ident\r\n",
    "mbus-header": b"\x68\x40\x40\x68\x53\xff",
    "hdlc-header": enc.hdlc_frame(b"\x0f" * 30)[:12],
}


def _notification(payload: bytes, counter: int) -> bytes:
    """Aidon-style list: power with its scaler and unit, and `payload` as an octet-string id."""
    return enc.data_notification(
        enc.array(
            enc.structure(
                enc.octet_string(enc.obis_code("1-0:1.7.0.255")),
                enc.uint32(counter),
                enc.structure(enc.int8(0), enc.enum(27)),
            ),
            enc.structure(enc.octet_string(enc.obis_code("0-0:96.1.0.255")), enc.octet_string(payload)),
        )
    )


def _inner_cipher(plaintext: bytes, counter: int, security_control: int) -> bytes:
    return enc.glo_cipher(
        plaintext,
        system_title=_INNER_TITLE,
        invocation_counter=counter,
        encryption_key=_INNER_EK,
        authentication_key=_INNER_AK,
        security_control=security_control,
    )


def _ciphered_hiding(inner: bytes, counter: int, security_control: int) -> bytes:
    """A ciphered notification whose ciphertext contains `inner`, made by choosing plaintext bytes
    (an octet-string value) that encrypt to it: ciphertext = plaintext XOR keystream."""
    marker = bytes(range(200, 200 + len(inner)))
    apdu = _notification(marker, counter)
    offset = apdu.index(marker)

    zeros = _inner_cipher(bytes(len(apdu)), counter, security_control)
    tag = 12 if security_control & 0x10 else 0
    keystream = zeros[len(zeros) - len(apdu) - tag :][: len(apdu)]  # the ciphertext of zeros
    hidden = bytes(a ^ b for a, b in zip(inner, keystream[offset : offset + len(inner)], strict=True))
    frame = _inner_cipher(apdu[:offset] + hidden + apdu[offset + len(inner) :], counter, security_control)
    assert inner in frame
    return frame


@pytest.mark.parametrize("security_control", [0x30, 0x20], ids=["gcm-tag", "encryption-only"])
@pytest.mark.parametrize("chunk", [0, 1, 17, 256], ids=["whole", "bytewise", "17", "256"])
@pytest.mark.parametrize("inner", list(_INNER_FRAMES), ids=list(_INNER_FRAMES))
def test_ciphertext_that_looks_like_a_frame_still_decodes(inner: str, chunk: int, security_control: int) -> None:
    counters = list(range(100, 106))
    frames = [
        _ciphered_hiding(_INNER_FRAMES[inner], counter, security_control)
        if counter % 2
        else _inner_cipher(_notification(b"plain", counter), counter, security_control)
        for counter in counters
    ]
    decoder = Decoder(_INNER_EK, _INNER_AK)
    stream_bytes = b"".join(frames)
    events = []
    step = chunk or len(stream_bytes)
    for at in range(0, len(stream_bytes), step):
        events += decoder.feed(stream_bytes[at : at + step])
    events += decoder.flush()
    assert [type(e).__name__ for e in events] == ["Reading"] * len(frames), events
    assert [e.invocation_counter for e in events] == counters
