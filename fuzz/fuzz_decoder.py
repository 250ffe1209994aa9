"""Fuzz harness for the decoder: no input may raise, and every event must be well-formed.

    .venv/bin/python fuzz/fuzz_decoder.py [--seconds 60] [--seed-dir DIR]      # built-in mutator
    .venv/bin/python fuzz/fuzz_decoder.py --atheris [libFuzzer args ...]      # coverage-guided

The built-in mutator needs nothing beyond amsd: it mutates seeds (frames from amsd's own simulator,
plus the conformance corpus when present) with bit flips, byte insertions, deletions, splices and
chunked feeding. With `pip install atheris` the same target runs under libFuzzer.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from amsd.decoder import Decoder, Reading, UndecodedFrame

KEY = bytes(range(16))


def target(data: bytes) -> None:
    """One fuzz input: the first byte picks keys and chunk size, the rest is the line."""
    if not data:
        return
    control, line = data[0], data[1:]
    decoder = Decoder(KEY if control & 1 else None, KEY if control & 2 else None)
    chunk = (control >> 2) or len(line) or 1
    events = []
    for pos in range(0, len(line), chunk):
        events += decoder.feed(line[pos : pos + chunk])
    events += decoder.flush()
    for event in events:
        if isinstance(event, UndecodedFrame):
            assert event.layer and event.error and isinstance(event.raw, bytes)
        else:
            assert isinstance(event, Reading)


def seeds(seed_dir: Path | None) -> list[bytes]:
    found: list[bytes] = []
    try:
        from amsd.sim.meters import seed_frames

        found += seed_frames()
    except ImportError:
        pass
    corpus = Path(__file__).resolve().parent.parent.parent / "shared" / "conformance" / "cases"
    if seed_dir is None and corpus.is_dir():
        seed_dir = corpus
    if seed_dir is not None:
        import json

        for path in sorted(seed_dir.glob("*.json")):
            case = json.loads(path.read_text(encoding="utf-8"))
            if case.get("input_hex"):
                found.append(bytes.fromhex("".join(case["input_hex"].split())))
            elif case.get("input_text"):
                found.append(case["input_text"].encode("latin-1"))
    return found or [b"\x7e\xa0\x07\x03\x03\x13\x00\x00\x7e"]


def mutate(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        choice = rng.random()
        if not buf or choice < 0.1:
            buf += rng.choice(pool)
        elif choice < 0.45:
            pos = rng.randrange(len(buf))
            buf[pos] ^= 1 << rng.randrange(8)
        elif choice < 0.6:
            pos = rng.randrange(len(buf))
            buf[pos:pos] = rng.randbytes(rng.randint(1, 8))
        elif choice < 0.75:
            pos = rng.randrange(len(buf))
            del buf[pos : pos + rng.randint(1, 16)]
        elif choice < 0.9:
            other = rng.choice(pool)
            cut = rng.randrange(len(other) + 1)
            buf[rng.randrange(len(buf) + 1) :] = other[cut:]
        else:
            buf = buf[: rng.randrange(len(buf) + 1)]
    return bytes([rng.randrange(256)]) + bytes(buf)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--seed-dir", type=Path)
    parser.add_argument("--atheris", action="store_true")
    args, rest = parser.parse_known_args()
    if args.atheris:
        import atheris  # type: ignore[import-not-found]

        atheris.Setup([sys.argv[0], *rest], target)
        atheris.Fuzz()
        return 0
    rng = random.Random(args.seed)
    pool = seeds(args.seed_dir)
    deadline = time.monotonic() + args.seconds
    runs = 0
    while time.monotonic() < deadline:
        data = mutate(rng, rng.choice(pool), pool)
        try:
            target(data)
        except Exception:
            print(f"CRASH on input {data.hex()}", file=sys.stderr)
            raise
        runs += 1
    print(f"{runs} inputs in {args.seconds:.0f} s, no failure ({len(pool)} seeds)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
