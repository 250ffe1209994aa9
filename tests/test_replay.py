"""GCM invocation counter tracking: replayed and decreasing counters are flagged, a meter that restarted
its count is accepted again after a few consistent frames. Frames are built with amsd's own encoder."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from amsd.decoder import Decoder, Reading, UndecodedFrame
from amsd.decoder.replay import REPLAYED_COUNTER, InvocationCounterTracker, Verdict
from amsd.sim import encode as enc

KEY = bytes(range(16))
AUTH_KEY = bytes(range(16, 32))
TITLE = b"KFM\x00\x01\x02\x03\x04"
OTHER_TITLE = b"LGZ\x00\x09\x08\x07\x06"


def frame(counter: int, *, title: bytes = TITLE, power: int = 1000, security_control: int = 0x30) -> bytes:
    body = enc.array(
        enc.structure(
            enc.octet_string(enc.obis_code("1-0:1.7.0.255")),
            enc.uint32(power),
            enc.structure(enc.int8(0), enc.enum(27)),
        )
    )
    apdu = enc.data_notification(body, invoke_id=counter)
    ciphered = enc.glo_cipher(
        apdu,
        system_title=title,
        invocation_counter=counter,
        encryption_key=KEY,
        authentication_key=AUTH_KEY if security_control & 0x10 else None,
        security_control=security_control,
    )
    return b"".join(enc.hdlc_frames(enc.llc(ciphered)))


def outcome(decoder: Decoder, data: bytes) -> str:
    events = decoder.feed(data)
    assert len(events) == 1, events
    event = events[0]
    if isinstance(event, Reading):
        return "reading"
    assert isinstance(event, UndecodedFrame)
    return f"{event.layer}/{event.error}"


REPLAYED = f"cipher/{REPLAYED_COUNTER}"


# ------------------------------------------------------------------------------ decoder behaviour


@pytest.mark.parametrize("security_control", [0x30, 0x20])
def test_increasing_counters_with_gaps_decode(security_control: int) -> None:
    decoder = Decoder(KEY, AUTH_KEY)
    for counter in (5, 6, 9, 1000, 1001):
        assert outcome(decoder, frame(counter, security_control=security_control)) == "reading"


def test_repeated_frame_is_flagged_with_hex_title_and_counter() -> None:
    decoder = Decoder(KEY, AUTH_KEY)
    data = frame(41)
    assert outcome(decoder, data) == "reading"
    [event] = decoder.feed(data)
    assert isinstance(event, UndecodedFrame)
    assert (event.layer, event.error) == ("cipher", REPLAYED_COUNTER)
    assert event.raw == data
    assert event.system_title == TITLE.hex().upper() and event.invocation_counter == 41
    assert "41" in event.detail and "repeats" in event.detail
    assert KEY.hex() not in event.detail.lower() and AUTH_KEY.hex() not in event.detail.lower()
    assert decoder.counters[f"cipher.{REPLAYED_COUNTER}"] == 1


def test_decreasing_counter_is_flagged_and_live_frames_continue() -> None:
    decoder = Decoder(KEY, AUTH_KEY)
    assert [outcome(decoder, frame(c)) for c in (100, 101, 50, 102, 101, 103)] == [
        "reading", "reading", REPLAYED, "reading", REPLAYED, "reading",
    ]  # fmt: skip


def test_interleaved_replays_never_become_the_baseline() -> None:
    """Old frames replayed in order between live ones: each live frame resets the run, so the replay
    never reaches the three consecutive frames a meter reset needs."""
    decoder = Decoder(KEY, AUTH_KEY)
    assert outcome(decoder, frame(500)) == "reading"
    results = []
    for step in range(10):
        results.append(outcome(decoder, frame(10 + 2 * step)))  # replay, increasing
        results.append(outcome(decoder, frame(10 + 2 * step + 1)))  # replay, increasing
        results.append(outcome(decoder, frame(501 + step)))  # live meter
    assert results == [REPLAYED, REPLAYED, "reading"] * 10


def test_meter_reset_is_accepted_after_three_consistent_frames() -> None:
    decoder = Decoder(KEY, AUTH_KEY)
    assert outcome(decoder, frame(90_000)) == "reading"
    assert [outcome(decoder, frame(c)) for c in (1, 2, 3, 4, 5)] == [
        REPLAYED,
        REPLAYED,
        "reading",
        "reading",
        "reading",
    ]
    assert decoder.invocation_counters.rebaselines == 1
    assert decoder.invocation_counters.last(TITLE.hex().upper()) == 5
    # The old, higher sequence is now the replay.
    assert outcome(decoder, frame(90_001)) == "reading"  # higher than 5: a counter only has to increase


def test_a_non_increasing_run_restarts_the_count() -> None:
    decoder = Decoder(KEY, AUTH_KEY)
    assert outcome(decoder, frame(1000)) == "reading"
    # 7, 7 is not consistent (repeat), 3 goes down: each restarts the run.
    assert [outcome(decoder, frame(c)) for c in (7, 7, 3, 4, 5)] == [REPLAYED, REPLAYED, REPLAYED, REPLAYED, "reading"]


def test_system_titles_are_tracked_separately() -> None:
    decoder = Decoder(KEY, AUTH_KEY)
    assert outcome(decoder, frame(1000, title=TITLE)) == "reading"
    assert outcome(decoder, frame(10, title=OTHER_TITLE)) == "reading"
    assert outcome(decoder, frame(11, title=OTHER_TITLE)) == "reading"
    assert outcome(decoder, frame(999, title=TITLE)) == REPLAYED


def test_frames_that_do_not_decrypt_do_not_move_the_baseline() -> None:
    decoder = Decoder(KEY, AUTH_KEY)
    wrong = Decoder(bytes(16), AUTH_KEY)
    assert outcome(decoder, frame(10)) == "reading"
    # A frame with a huge counter under another key fails its tag: it must not raise the baseline.
    alien = enc.glo_cipher(
        enc.data_notification(enc.array(), invoke_id=1),
        system_title=TITLE,
        invocation_counter=0xFFFFFFF0,
        encryption_key=bytes(16),
        authentication_key=AUTH_KEY,
    )
    assert outcome(decoder, b"".join(enc.hdlc_frames(enc.llc(alien)))) == "cipher/wrong_key"
    assert outcome(decoder, frame(11)) == "reading"
    assert outcome(wrong, frame(12)) == "cipher/wrong_key"


def test_no_key_frames_are_not_tracked() -> None:
    decoder = Decoder()
    assert outcome(decoder, frame(5)) == "cipher/no_key"
    assert outcome(decoder, frame(5)) == "cipher/no_key"  # still no_key, never replayed_counter


def test_a_fresh_decoder_has_no_history() -> None:
    data = frame(7)
    assert outcome(Decoder(KEY, AUTH_KEY), data) == "reading"
    assert outcome(Decoder(KEY, AUTH_KEY), data) == "reading"


# ------------------------------------------------------------------------------ tracker unit


def test_tracker_memory_is_bounded() -> None:
    tracker = InvocationCounterTracker(max_titles=4)
    for n in range(100):
        assert tracker.check(f"T{n}", 1) is Verdict.ACCEPTED
    assert len(tracker._titles) == 4
    assert tracker.last("T99") == 1 and tracker.last("T0") is None


def test_tracker_rejects_bad_settings() -> None:
    with pytest.raises(ValueError):
        InvocationCounterTracker(rebaseline_after=0)
    with pytest.raises(ValueError):
        InvocationCounterTracker(max_titles=0)


@given(st.lists(st.integers(min_value=0, max_value=2**32 - 1), min_size=1, max_size=60))
def test_tracker_never_accepts_a_counter_at_or_below_the_last_without_a_run(counters: list[int]) -> None:
    """Property: an accepted counter is above the previous baseline, or ends a run of
    `rebaseline_after` strictly increasing flagged counters."""
    tracker = InvocationCounterTracker(rebaseline_after=3)
    baseline: int | None = None
    run: list[int] = []
    for counter in counters:
        verdict = tracker.check("T", counter)
        if baseline is None or counter > baseline:
            assert verdict is Verdict.ACCEPTED
            baseline, run = counter, []
            continue
        run = [*run, counter] if run and counter > run[-1] else [counter]
        if len(run) >= 3:
            assert verdict is Verdict.REBASELINED
            baseline, run = counter, []
        else:
            assert verdict is Verdict.REPLAYED
        assert tracker.last("T") == baseline
