"""Fuzz harness for the decoder: no input may raise, and every event must be well-formed.

    .venv/bin/python fuzz/fuzz_decoder.py [--seconds 60] [--seed-dir DIR]        # built-in mutator
    .venv/bin/python fuzz/fuzz_decoder.py --atheris [--seconds 600] [libFuzzer args ...]

Both modes run the same target over `Decoder.feed` (chunked as the first input byte says) and `flush`.
Seeds: frames from amsd's own simulator (every profile, plain and encrypted) plus the conformance
corpus when it is present (read at run time from ../shared/conformance or $AMSD_CONFORMANCE_DIR;
never copied into the project). Keys: the fuzz key, and the keys the corpus publishes with its frames,
so that decryption and the layers behind it are reached.

`--atheris` is coverage-guided (libFuzzer via atheris; `pip install atheris`, a wheel on x86_64 Linux
for CPython 3.11): amsd's modules are instrumented, the seeds are written to a corpus directory
(`--corpus`, default a temporary one) and libFuzzer reports `cov:` (edges) and `ft:` (features) as it
goes. Any exception or failed check is a crash: libFuzzer writes the input to `crash-*`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

REPO = Path(__file__).resolve().parent.parent
FUZZ_KEY = bytes(range(16))
FUZZ_AUTH_KEY = bytes(range(16, 32))
# Filled by load_seeds(): (encryption key, authentication key) pairs the control byte chooses from.
KEYS: list[tuple[bytes | None, bytes | None]] = [(None, None), (FUZZ_KEY, None), (FUZZ_KEY, FUZZ_AUTH_KEY)]


def conformance_dir() -> Path | None:
    configured = os.environ.get("AMSD_CONFORMANCE_DIR")
    path = Path(configured) if configured else REPO.parent / "shared" / "conformance"
    cases = path / "cases" if (path / "cases").is_dir() else path
    return cases if cases.is_dir() else None


def simulator_seeds(frames_per_profile: int = 4) -> list[bytes]:
    from amsd.sim.meters import PROFILES, MeterSimulator

    found: list[bytes] = []
    for name, profile in PROFILES.items():
        variants: list[dict[str, object]] = [{"encrypt": False}]
        if profile.encryption != "never":
            variants.append({"encryption_key": FUZZ_KEY, "authentication_key": FUZZ_AUTH_KEY})
            variants.append({"encryption_key": FUZZ_KEY})
        for options in variants:
            try:
                simulator = MeterSimulator(name, seed=7, **options)  # type: ignore[arg-type]
            except ValueError:
                continue
            found += [simulator.next_frame().data for _ in range(frames_per_profile)]
    return found


def load_seeds(seed_dir: Path | None) -> list[bytes]:
    """Seeds for both modes; also registers the corpus keys in KEYS."""
    found = simulator_seeds()
    directory = seed_dir or conformance_dir()
    if directory is not None:
        for path in sorted(directory.glob("*.json")):
            case = json.loads(path.read_text(encoding="utf-8"))
            if case.get("input_hex"):
                found.append(bytes.fromhex("".join(case["input_hex"].split())))
            elif case.get("input_text"):
                found.append(case["input_text"].encode("latin-1"))
            if case.get("key_hex"):
                pair = (
                    bytes.fromhex(case["key_hex"]),
                    bytes.fromhex(case["auth_key_hex"]) if case.get("auth_key_hex") else None,
                )
                if pair not in KEYS:
                    KEYS.append(pair)
    return found


def target(data: bytes) -> None:
    """One fuzz input: the first byte picks the keys and the chunk size, the rest is the line."""
    from amsd.decoder import Decoder, Reading, UndecodedFrame

    if not data:
        return
    control, line = data[0], data[1:]
    encryption_key, authentication_key = KEYS[control % len(KEYS)]
    decoder = Decoder(encryption_key, authentication_key)
    chunk = (control >> 3) or len(line) or 1
    events = []
    for pos in range(0, len(line), chunk):
        events += decoder.feed(line[pos : pos + chunk])
    events += decoder.flush()
    reported = 0
    for event in events:
        if isinstance(event, UndecodedFrame):
            assert event.layer and event.error and isinstance(event.raw, bytes), event
            assert event.error.replace("_", "").isalpha(), event.error
            reported += len(event.raw)
        else:
            assert isinstance(event, Reading), event
            assert isinstance(event.values, dict)
    # Nothing grows without bound: what is reported never exceeds a few times the input.
    assert reported <= 4 * len(line) + 64, (reported, len(line))


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


def run_builtin(seconds: float, seed: int, pool: list[bytes]) -> tuple[int, float]:
    """Mutate seeds for `seconds`; returns (inputs run, inputs per second). Raises on the first failure."""
    rng = random.Random(seed)
    started = time.monotonic()
    deadline = started + seconds
    runs = 0
    while time.monotonic() < deadline:
        data = mutate(rng, rng.choice(pool), pool)
        try:
            target(data)
        except Exception:
            print(f"CRASH on input {data.hex()}", file=sys.stderr)
            raise
        runs += 1
    elapsed = time.monotonic() - started
    return runs, runs / elapsed if elapsed else 0.0


def instrument_amsd() -> None:
    """Import amsd's modules under atheris' instrumentation (before anything else imports them), so
    that libFuzzer sees coverage of amsd only: instrumenting every loaded library takes minutes."""
    import atheris  # type: ignore[import-not-found,import-untyped,unused-ignore]

    with atheris.instrument_imports(include=["amsd"]):
        import amsd.decoder
        import amsd.sim.meters  # noqa: F401


def run_atheris(seconds: float, corpus: Path | None, pool: list[bytes], libfuzzer_args: list[str]) -> None:
    import atheris  # type: ignore[import-not-found,import-untyped,unused-ignore]

    directory = corpus or Path(tempfile.mkdtemp(prefix="amsd-fuzz-corpus-"))
    directory.mkdir(parents=True, exist_ok=True)
    for n, seed in enumerate(pool):
        # A control byte per key set, so that every seed is tried with each key.
        for index in range(len(KEYS)):
            (directory / f"seed-{n:04d}-{index}").write_bytes(bytes([index]) + seed)
    args = [sys.argv[0], str(directory), "-print_final_stats=1", f"-max_total_time={int(seconds)}", *libfuzzer_args]
    print(f"atheris: {len(pool)} seeds x {len(KEYS)} key sets in {directory}", file=sys.stderr)
    atheris.Setup(args, target)
    atheris.Fuzz()


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--seed-dir", type=Path, help="conformance cases directory (default: ../shared/conformance)")
    parser.add_argument("--atheris", action="store_true", help="coverage-guided, with libFuzzer")
    parser.add_argument("--corpus", type=Path, help="atheris: corpus directory (kept between runs)")
    args, rest = parser.parse_known_args()
    if args.atheris:
        instrument_amsd()
    pool = load_seeds(args.seed_dir)
    if args.atheris:
        run_atheris(args.seconds, args.corpus, pool, rest)
        return 0
    runs, rate = run_builtin(args.seconds, args.seed, pool)
    print(f"{runs} inputs in {args.seconds:.0f} s ({rate:.0f}/s), no failure ({len(pool)} seeds, {len(KEYS)} key sets)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
