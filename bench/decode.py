"""Median microseconds per conformance case through `Decoder.feed` (bytes to events, CRC included).

Usage: .venv/bin/python -m bench.decode [--cases DIR] [--repeat N] [--only SUBSTR] [--markdown]

Each case's whole input is fed to one long-lived Decoder (as on a live line) and `flush()` is called
after it; the median over N repetitions is reported, after a warm-up. Reads the corpus at run time;
nothing from it is stored.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

from amsd.decoder import Decoder, Reading

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


def measure(case: Case, repeat: int) -> tuple[float, int]:
    decoder = Decoder(case.key, case.auth_key)
    data = case.input
    feed, flush = decoder.feed, decoder.flush
    for _ in range(20):
        events = feed(data) + flush()
    count = sum(isinstance(e, Reading) for e in events)
    samples = []
    clock = time.perf_counter_ns
    gc.disable()
    try:
        for _ in range(repeat):
            start = clock()
            feed(data)
            flush()
            samples.append(clock() - start)
    finally:
        gc.enable()
    return statistics.median(samples) / 1000.0, count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2000)
    parser.add_argument("--only", default="")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args(argv)
    if corpus_dir() is None:
        print("conformance corpus not found (../shared/conformance or AMSD_CONFORMANCE_DIR)", file=sys.stderr)
        return 2
    rows = []
    for case in load_cases():
        if args.only and args.only not in case.id:
            continue
        median_us, count = measure(case, args.repeat)
        rows.append((case.id, len(case.input), median_us, count, TARGETS_US.get(case.id)))
    if args.markdown:
        print("| case | bytes | median us | readings | target us |")
        print("|---|---:|---:|---:|---:|")
        for cid, size, us, count, target in rows:
            print(f"| {cid} | {size} | {us:.1f} | {count} | {target if target else ''} |")
    else:
        for cid, size, us, count, target in rows:
            mark = (
                ""
                if target is None
                else (f"  target {target:.0f} OK" if us <= target else f"  target {target:.0f} MISSED")
            )
            print(f"{cid:<50} {size:>5} B {us:>8.1f} us  readings={count}{mark}")
    missed = [r for r in rows if r[4] is not None and r[2] > r[4]]
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
