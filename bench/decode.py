"""Median microseconds per conformance case through `Decoder.feed` (bytes to events, CRC included).

Usage: .venv/bin/python -m bench.decode [--repeat N] [--rounds R] [--only SUBSTR] [--markdown] [--stream]

Each case's whole input is fed to one long-lived Decoder (as on a live line) and `flush()` is called
after it; the median over N repetitions is reported, after a warm-up, together with the quietest of
R interleaved rounds (all cases take turns in a shuffled order, so that a burst of host noise hits
one round of a case, not all of it). Reads the corpus at run time;
nothing from it is stored.

Feeding the same bytes again and again flatters caches (the DSMR decoder caches parsed lines by their
text). `--stream` therefore also decodes a stream of DIFFERENT frames per simulator profile
(`amsd.sim.meters.MeterSimulator`, pre-generated, every value changing from frame to frame, encrypted
where the profile is): each frame is fed once, as on a live line, and the median per frame is reported.
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import time
from pathlib import Path

from amsd.decoder import Decoder, Reading
from amsd.decoder.replay import InvocationCounterTracker

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.corpus import Case, corpus_dir, load_cases

# DESIGN.md section 7: the targets that name a case, and what they are measured on.
TARGETS_US = {
    "no-aidon-6534-list3-gh1119": 40.0,
    "no-kamstrup-omnipower-list3-em001-1": 20.0,
    "no-kaifa-ma304h3e-list2-gh180": 20.0,
    "nl-dsmr50-iskra-am550-2mbus": 60.0,
    "ch-lg-e570-gbt-encrypted-scs": 80.0,
}


STREAM_WARMUP = 10


class CaseTimer:
    """One case on one long-lived Decoder; `run(n)` times n feeds of the whole input."""

    def __init__(self, case: Case) -> None:
        self.case = case
        self.decoder = decoder = Decoder(case.key, case.auth_key)
        data = case.input
        for _ in range(20):
            decoder.invocation_counters = InvocationCounterTracker()
            events = decoder.feed(data) + decoder.flush()
        self.count = sum(isinstance(e, Reading) for e in events)
        # On a live line `flush()` is never called: time `feed()` alone where it completes the message
        # (it does unless the input ends without the frame's last byte, e.g. a DSMR telegram with no CRLF).
        decoder.invocation_counters = InvocationCounterTracker()
        self.needs_flush = sum(isinstance(e, Reading) for e in decoder.feed(data)) < self.count
        decoder.flush()
        self.samples: list[int] = []
        self.round_medians: list[float] = []

    def run(self, repeat: int) -> None:
        decoder, data, needs_flush, key = self.decoder, self.case.input, self.needs_flush, self.case.key
        feed, flush = decoder.feed, decoder.flush
        samples = []
        clock = time.perf_counter_ns
        gc.disable()
        try:
            for _ in range(repeat):
                if key:
                    # The same ciphered frame again would be reported as a replay (its invocation counter
                    # does not advance): forget the counters, untimed, so that every run decodes fully.
                    decoder.invocation_counters = InvocationCounterTracker()
                start = clock()
                feed(data)
                if needs_flush:
                    flush()
                samples.append(clock() - start)
            flush()
        finally:
            gc.enable()
        self.samples += samples
        self.round_medians.append(statistics.median(samples) / 1000.0)


def measure_all(cases: list[Case], repeat: int, rounds: int) -> list[CaseTimer]:
    """`rounds` interleaved rounds in a shuffled order, `repeat / rounds` runs per case and round: a
    burst of host noise (this VM has them) then spoils one round of a case, not its whole result."""
    timers = [CaseTimer(case) for case in cases]
    order = list(timers)
    shuffle = random.Random(8)
    for _ in range(rounds):
        shuffle.shuffle(order)
        for timer in order:
            timer.run(max(1, repeat // rounds))
    return timers


def _kinds(profile: str) -> list[str]:
    """The message kinds a profile sends (hourly lists included), in schedule order."""
    from amsd.sim.meters import MeterSimulator

    simulator = MeterSimulator(profile, seed=0)
    kinds: list[str] = []
    for index in range(8):
        kind = simulator.profile.slot_kind(index, index == 0)
        if kind not in kinds:
            kinds.append(kind)
    return kinds


def measure_stream(profile: str, kind: str, frames: int, passes: int) -> tuple[int, list[int], int]:
    """(max bytes, sorted ns samples, readings) for `frames` different frames of one message kind.

    The simulator is told to send only `kind` (hourly lists would otherwise appear once an hour), with
    values and clock advancing from frame to frame. Every pass uses a fresh decoder and a new seed, so
    no frame is decoded twice by the same decoder. Pass 0 and the first WARMUP frames of every decoder
    are not counted: they measure imports and first-use caches, not the steady state of a live line.
    """
    from amsd.sim.meters import MeterSimulator

    size = 0
    samples: list[int] = []
    readings = 0
    clock = time.perf_counter_ns
    for seed in range(1, passes + 2):
        simulator = MeterSimulator(profile, seed=seed)
        simulator.profile.slot_kind = lambda index, hourly_due: kind  # type: ignore[method-assign]
        stream = [simulator.next_frame().data for _ in range(frames + STREAM_WARMUP)]
        cipher = simulator.cipher
        # With the simulator's own keys: the GCM tag is verified wherever the profile authenticates.
        decoder = Decoder(cipher.encryption_key, cipher.authentication_key) if cipher else Decoder()
        feed = decoder.feed
        gc.disable()
        try:
            for position, data in enumerate(stream):
                start = clock()
                events = feed(data)
                elapsed = clock() - start
                if seed == 1 or position < STREAM_WARMUP:
                    continue
                samples.append(elapsed)
                size = max(size, len(data))
                readings += sum(isinstance(e, Reading) for e in events)
        finally:
            gc.enable()
    samples.sort()
    return size, samples, readings


def main_stream(frames: int, passes: int, markdown: bool) -> int:
    from amsd.sim.meters import profile_names

    rows = []
    for profile in profile_names():
        for kind in _kinds(profile):
            size, samples, readings = measure_stream(profile, kind, frames, passes)
            p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
            name = f"{profile} {kind}"
            rows.append((name, size, statistics.median(samples) / 1000, p99 / 1000, readings, len(samples)))
    if markdown:
        print("| simulator profile, message | bytes | median us/frame | p99 us/frame | readings / frames |")
        print("|---|---:|---:|---:|---:|")
        for name, size, us, p99, readings, total in rows:
            print(f"| {name} | {size} | {us:.1f} | {p99:.1f} | {readings} / {total} |")
    else:
        for name, size, us, p99, readings, total in rows:
            print(f"{name:<24} {size:>5} B  median {us:>7.1f} us  p99 {p99:>7.1f} us  readings={readings}/{total}")
    return 0 if all(r[4] == r[5] for r in rows) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2000, help="runs per case, over all rounds")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds over all cases")
    parser.add_argument("--only", default="")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument(
        "--stream",
        action="store_true",
        help="decode streams of different simulated frames per profile instead of repeating corpus cases",
    )
    parser.add_argument("--frames", type=int, default=500, help="--stream: different frames per pass")
    parser.add_argument("--passes", type=int, default=4, help="--stream: measured passes (new seed each)")
    args = parser.parse_args(argv)
    if args.stream:
        return main_stream(args.frames, args.passes, args.markdown)
    if corpus_dir() is None:
        print("conformance corpus not found (../shared/conformance or AMSD_CONFORMANCE_DIR)", file=sys.stderr)
        return 2
    cases = [case for case in load_cases() if not args.only or args.only in case.id]
    rows = []
    for timer in measure_all(cases, args.repeat, args.rounds):
        case = timer.case
        median_us = statistics.median(timer.samples) / 1000.0
        quiet_us = min(timer.round_medians)
        rows.append((case.id, len(case.input), median_us, quiet_us, timer.count, TARGETS_US.get(case.id)))
    if args.markdown:
        print("| case | bytes | median us | quietest round us | readings | target us |")
        print("|---|---:|---:|---:|---:|---:|")
        for cid, size, us, quiet, count, target in rows:
            print(f"| {cid} | {size} | {us:.1f} | {quiet:.1f} | {count} | {target if target else ''} |")
    else:
        for cid, size, us, quiet, count, target in rows:
            mark = (
                ""
                if target is None
                else (f"  target {target:.0f} OK" if us <= target else f"  target {target:.0f} MISSED")
            )
            print(f"{cid:<50} {size:>5} B {us:>8.1f} us (quietest round {quiet:6.1f})  readings={count}{mark}")
    missed = [r for r in rows if r[5] is not None and r[2] > r[5]]
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
