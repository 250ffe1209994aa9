"""Hostile input: random bytes, truncations and bit flips never raise, and integrity checks hold."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from amsd.decoder import Decoder, Event, Reading, UndecodedFrame
from tests.corpus import Case, load_cases

CASES = load_cases()
needs_corpus = pytest.mark.skipif(
    not CASES, reason="conformance corpus not found (../shared/conformance or AMSD_CONFORMANCE_DIR)"
)
PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def run(data: bytes, case: Case | None = None, chunk: int = 0) -> list[Event]:
    decoder = Decoder(case.key if case else None, case.auth_key if case else None)
    if chunk:
        events: list[Event] = []
        for pos in range(0, len(data), chunk):
            events += decoder.feed(data[pos : pos + chunk])
    else:
        events = decoder.feed(data)
    events += decoder.flush()
    for event in events:
        assert isinstance(event, Reading | UndecodedFrame)
    return events


def fingerprint(reading: Reading) -> tuple[Any, ...]:
    return (reading.meter_id, tuple(sorted((k, repr(v)) for k, v in reading.values.items())))


def readings(events: list[Event]) -> set[tuple[Any, ...]]:
    return {fingerprint(e) for e in events if isinstance(e, Reading)}


def integrity_protected(case: Case) -> bool:
    """Cases where every byte that can yield a value is covered by a CRC, checksum or GCM tag."""
    transport = case.data.get("transport")
    if transport in ("hdlc", "mbus"):
        return True
    if transport == "dsmr":
        return bool(case.framing.get("crc_present"))
    return bool(case.auth_key)


@given(st.binary(max_size=2048), st.integers(min_value=0, max_value=64))
@PROPERTY
def test_random_bytes_never_raise(data: bytes, chunk: int) -> None:
    run(data, chunk=chunk)


@given(
    st.lists(
        st.sampled_from(
            [
                b"\x7e",
                b"\x7e\xa0",
                b"\x68",
                b"\x68\x10\x10\x68",
                b"/",
                b"/ISK5\r\n",
                b"!",
                b"\x0f",
                b"\xdb\x08",
                b"\xe6\xe7\x00",
                b"\xe0",
                b"\x00",
                b"\xff",
                b"\r\n",
                b"\x09\x0c",
            ]
        ),
        max_size=200,
    ),
    st.integers(min_value=0, max_value=16),
)
@PROPERTY
def test_frame_like_fragments_never_raise(parts: list[bytes], chunk: int) -> None:
    run(b"".join(parts), chunk=chunk)


@needs_corpus
@pytest.mark.parametrize("case", CASES or [None], ids=[c.id for c in CASES] or ["none"])
def test_truncations_and_bit_flips(case: Case) -> None:
    data = case.input
    original = readings(run(data, case))

    @given(st.integers(min_value=0, max_value=len(data) * 8 - 1), st.integers(min_value=1, max_value=len(data)))
    @PROPERTY
    def check(bit: int, cut: int) -> None:
        flipped = bytearray(data)
        flipped[bit // 8] ^= 1 << (bit % 8)
        got = readings(run(bytes(flipped), case))
        if integrity_protected(case):
            # A damaged frame must never become a reading: whatever decodes was already in the original.
            assert got <= original
        truncated = readings(run(data[:cut], case))
        if integrity_protected(case):
            assert truncated <= original

    check()


@needs_corpus
def test_noise_between_frames_loses_no_good_frame() -> None:
    """All framed corpus cases back to back, with garbage (including frame-start bytes) between them."""
    # Cases with an envelope: a line carries HDLC, M-Bus or DSMR frames, not bare APDUs between them.
    plain = [
        c for c in CASES if not c.data.get("encrypted") and not c.negative and c.data.get("transport") != "raw-apdu"
    ]
    garbage = b"\x7e\xa0\x12\x68\x05\x05\x68/\x0f\xdb\x55\xaa\x7e\x7e"
    stream = garbage.join(c.input for c in plain) + garbage
    # Values only: one decoder stands for one meter, so ids carried over between lists may differ here.
    alone = [fingerprint(e)[1] for c in plain for e in run(c.input, c) if isinstance(e, Reading)]
    for chunk in (0, 1, 7, 64):
        together = [fingerprint(e)[1] for e in run(stream, chunk=chunk) if isinstance(e, Reading)]
        assert together == alone
