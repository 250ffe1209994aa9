"""Every conformance case through the public decoder API, fed whole, byte by byte and in random chunks."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from amsd.decoder import NO_KEY, Decoder, Event, Reading, UndecodedFrame
from tests.corpus import Case, case_params, value_failures

FRAMING_LAYERS = {"hdlc", "mbus", "gbt", "cipher", "dsmr", "stream"}
KEY_WORDS = ("key", "auth", "decrypt", "gcm", "cipher", "tag")


def whole(data: bytes) -> list[bytes]:
    return [data]


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def random_chunks(data: bytes) -> list[bytes]:
    rng = random.Random(len(data))  # deterministic per case
    chunks, pos = [], 0
    while pos < len(data):
        step = rng.randint(1, 97)
        chunks.append(data[pos : pos + step])
        pos += step
    return chunks


CHUNKINGS: dict[str, Callable[[bytes], list[bytes]]] = {
    "whole": whole,
    "bytewise": bytewise,
    "chunks": random_chunks,
}


def decode(case: Case, chunker: Callable[[bytes], list[bytes]]) -> list[Event]:
    decoder = Decoder(case.key, case.auth_key)
    events: list[Event] = []
    for chunk in chunker(case.input):
        events += decoder.feed(chunk)
    return events + decoder.flush()


@pytest.mark.parametrize("chunking", sorted(CHUNKINGS))
@pytest.mark.parametrize("case", case_params())
def test_case(case: Case, chunking: str) -> None:
    events = decode(case, CHUNKINGS[chunking])
    readings = [e for e in events if isinstance(e, Reading)]
    undecoded = [e for e in events if isinstance(e, UndecodedFrame)]
    summary = sorted({f"{e.layer}/{e.error}" for e in undecoded})
    expected = case.data.get("expected") or {}
    units = case.data.get("expected_units") or {}

    if case.negative:
        assert not readings, "a corrupt frame must not give a reading"
        if case.framing.get("undecoded", True):
            assert undecoded
        return
    if case.no_key:
        assert not readings
        assert any(e.error == NO_KEY for e in undecoded), summary
        return
    if case.data.get("encrypted") and case.key:
        bad = [e for e in undecoded if e.layer == "cipher" or any(w in e.error for w in KEY_WORDS)]
        assert not bad, summary
    if not expected:
        assert events
        assert not [e for e in undecoded if e.layer in FRAMING_LAYERS], summary
        return
    assert len(readings) == case.expected_readings, summary
    failures = value_failures(expected, units, readings)
    assert not failures, failures


HEADER_CASES = [p for p in case_params() if p.values[0] is None or "system_title" in p.values[0].framing]


@pytest.mark.parametrize("case", HEADER_CASES)
def test_seed_and_header_expectations(case: Case) -> None:
    """Framing-level expectations: system title and invocation counter of encrypted frames without a key."""
    framing = case.framing
    events = decode(case, whole)
    no_key = [e for e in events if isinstance(e, UndecodedFrame) and e.error == NO_KEY]
    assert no_key, "expected an undecoded event with error no_key"
    assert no_key[0].system_title == framing["system_title"]
    assert no_key[0].invocation_counter == framing["invocation_counter"]
    assert no_key[0].raw == case.input
