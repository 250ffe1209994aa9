"""amsd against the reference Python decoders, side by side in one run on the same frames.

Median microseconds per frame, bytes to values, CRC included, for four corpus cases (read from the
conformance corpus at run time; nothing from it is stored here). The reference libraries must NOT be
installed into the project; use a separate venv that also has amsd installed in editable mode:

    python3 -m venv /tmp/benchref
    /tmp/benchref/bin/pip install gurux-dlms dsmr-parser amshan
    /tmp/benchref/bin/pip install -e /work/main
    /tmp/benchref/bin/python -m bench.compare          # from the repository root

A library that is not installed is skipped with a message. DESIGN.md section 7 asks amsd to be at
least 10x faster than the fastest reference on every frame.

What each contender does per frame:
- amsd: one long-lived `Decoder`, `feed(frame) + flush()` -> `Reading` (HDLC/GBT/GCM/A-XDR/OBIS/units).
  For DSMR a second row clears amsd's parsed-line cache before every run (outside the timing): the
  same telegram repeated would otherwise be served from that cache, which a live meter only partly
  does (ids and constant lines repeat, values change).
- gurux-dlms: `GXDLMSClient.getData` (`GXDLMSSecureClient` with the block cipher key for the encrypted
  case) over the whole HDLC byte stream until the notification is complete: HCS/FCS, GBT, GCM, A-XDR
  values (no OBIS/unit interpretation, so it does less than amsd).
- amshan: `HdlcFrameReader` (FCS) + `AutoDecoder.decode_message` -> named values; DSMR through
  `AutoDecoder.decode_message_payload` (amshan does not check the DSMR CRC there).
- dsmr-parser: `TelegramParser(V5, apply_checksum_validation=True).parse(text)`.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from amsd.decoder import Decoder, Reading

CASES = (
    ("no-aidon-6534-list3-gh1119", "Aidon list 3"),
    ("no-kamstrup-omnipower-list3-em001-1", "Kamstrup list 3"),
    ("nl-dsmr50-iskra-am550-2mbus", "DSMR 5 telegram"),
    ("ch-lg-e570-gbt-encrypted-scs", "L+G E570 GBT push, AES-GCM"),
)
# DESIGN.md section 7: the fastest reference measured earlier on this kind of machine (us per frame).
DESIGN_REFERENCE_US = {
    "no-aidon-6534-list3-gh1119": 436.0,
    "no-kamstrup-omnipower-list3-em001-1": 185.0,
    "nl-dsmr50-iskra-am550-2mbus": 658.0,
    "ch-lg-e570-gbt-encrypted-scs": 3448.0,
}
REQUIRED_RATIO = 10.0

Runner = Callable[[], int]  # decodes the frame once; returns how many messages/readings it produced


class NotApplicable(Exception):
    """The library has no decoder for this transport."""


def corpus_dir() -> Path | None:
    env = os.environ.get("AMSD_CONFORMANCE_DIR")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parent.parent.parent / "shared" / "conformance")
    for path in candidates:
        if (path / "cases").is_dir():
            return path
    return None


def load_case(root: Path, case_id: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((root / "cases" / f"{case_id}.json").read_text())
    return data


def _key(case: dict[str, Any], field: str) -> bytes | None:
    value = case.get(field)
    return bytes.fromhex(value) if value else None


# ------------------------------------------------------------------------------------ contenders


def amsd_runner(case: dict[str, Any]) -> Runner:
    decoder = Decoder(_key(case, "key_hex"), _key(case, "auth_key_hex"))
    data = bytes.fromhex(case["input_hex"])
    feed, flush = decoder.feed, decoder.flush

    def run() -> int:
        return sum(isinstance(e, Reading) for e in feed(data) + flush())

    return run


def amsd_cold_dsmr_runner(case: dict[str, Any]) -> tuple[Runner, Callable[[], None]]:
    """amsd with its DSMR parsed-line cache emptied before every run (the `before` hook, untimed)."""
    if case["transport"] != "dsmr":
        raise NotApplicable
    from amsd.decoder import dsmr

    caches = getattr(dsmr, "_line_caches", None)
    if not isinstance(caches, dict):
        raise NotApplicable
    return amsd_runner(case), caches.clear


def gurux_runner(case: dict[str, Any]) -> Runner:
    if case["transport"] != "hdlc":
        raise NotApplicable
    from gurux_dlms import GXByteBuffer, GXDLMSClient, GXReplyData
    from gurux_dlms.enums import Authentication, InterfaceType, Security
    from gurux_dlms.secure import GXDLMSSecureClient

    key = _key(case, "key_hex")
    client: Any
    if key is not None:
        client = GXDLMSSecureClient(True, -1, -1, Authentication.NONE, None, InterfaceType.HDLC)
        client.ciphering.security = Security.ENCRYPTION
        client.ciphering.blockCipherKey = key
    else:
        client = GXDLMSClient(True, -1, -1, Authentication.NONE, None, InterfaceType.HDLC)
    data = bytes.fromhex(case["input_hex"])

    def run() -> int:
        buffer = GXByteBuffer(data)
        reply, notify = GXReplyData(), GXReplyData()
        complete = 0
        while buffer.position < buffer.size:
            client.getData(buffer, reply, notify)
            if notify.complete and not notify.isMoreData():
                complete += notify.value is not None
                notify.clear()
        return complete

    return run


def amshan_runner(case: dict[str, Any]) -> Runner:
    from han import autodecoder, hdlc

    decoder = autodecoder.AutoDecoder()
    data = bytes.fromhex(case["input_hex"])
    if case["transport"] == "dsmr":

        def run_p1() -> int:
            return decoder.decode_message_payload(data) is not None

        return run_p1
    if case.get("encrypted"):
        raise NotApplicable  # amshan has no decryption
    if case["transport"] != "hdlc":
        raise NotApplicable
    reader = hdlc.HdlcFrameReader(False)

    def run() -> int:
        decoded = 0
        for frame in reader.read(data):
            if frame.is_good_ffc and decoder.decode_message(frame) is not None:
                decoded += 1
        return decoded

    return run


def dsmr_parser_runner(case: dict[str, Any]) -> Runner:
    if case["transport"] != "dsmr":
        raise NotApplicable
    from dsmr_parser import telegram_specifications
    from dsmr_parser.parsers import TelegramParser

    parser = TelegramParser(telegram_specifications.V5, apply_checksum_validation=True)
    text = case["input_text"]

    def run() -> int:
        return 1 if parser.parse(text) else 0

    return run


REFERENCES: tuple[tuple[str, str, Callable[[dict[str, Any]], Runner]], ...] = (
    ("gurux-dlms", "gurux_dlms", gurux_runner),
    ("amshan", "han", amshan_runner),
    ("dsmr-parser", "dsmr_parser", dsmr_parser_runner),
)

# ------------------------------------------------------------------------------------ timing


def median_us(run: Runner, before: Callable[[], None] | None, budget_s: float, max_repeat: int) -> tuple[float, int]:
    """Median us per run after a warm-up; repeats until `budget_s` or `max_repeat` (at least 30)."""
    sink = io.StringIO()  # gurux prints "Encryption is applied." on every decrypt
    with contextlib.redirect_stdout(sink):
        produced = 0
        for _ in range(10):
            if before:
                before()
            produced = run()
        samples: list[int] = []
        clock = time.perf_counter_ns
        deadline = time.monotonic() + budget_s
        gc.disable()
        try:
            while len(samples) < max_repeat and (len(samples) < 30 or time.monotonic() < deadline):
                if before:
                    before()
                start = clock()
                run()
                samples.append(clock() - start)
                if len(samples) % 256 == 0:
                    sink.seek(0)
                    sink.truncate()
        finally:
            gc.enable()
    return statistics.median(samples) / 1000.0, produced


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=2.0, help="seconds of timing per contender and case")
    parser.add_argument("--repeat", type=int, default=5000, help="maximum runs per contender and case")
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables")
    args = parser.parse_args(argv)
    root = corpus_dir()
    if root is None:
        print("conformance corpus not found (../shared/conformance or AMSD_CONFORMANCE_DIR)", file=sys.stderr)
        return 2

    available = []
    for name, module, factory in REFERENCES:
        try:
            __import__(module)
        except ImportError:
            print(f"SKIP {name}: not installed in this interpreter ({sys.executable}); see the module docstring")
            continue
        available.append((name, factory))
    if not available:
        print("no reference library installed: only amsd is measured", file=sys.stderr)

    results: list[tuple[str, str, int, dict[str, float | str]]] = []
    for case_id, label in CASES:
        case = load_case(root, case_id)
        size = len(bytes.fromhex(case["input_hex"]))
        row: dict[str, float | str] = {}
        us, produced = median_us(amsd_runner(case), None, args.budget, args.repeat)
        row["amsd"] = us if produced else f"{us:.1f} (no reading!)"
        with contextlib.suppress(NotApplicable):
            run, before = amsd_cold_dsmr_runner(case)
            row["amsd, line cache cleared"] = median_us(run, before, args.budget, args.repeat)[0]
        for name, factory in available:
            try:
                runner = factory(case)
            except NotApplicable:
                row[name] = "n/a"
                continue
            us, produced = median_us(runner, None, args.budget, args.repeat)
            row[name] = us if produced else f"{us:.1f} (no values)"
        results.append((case_id, label, size, row))

    failed = False
    header = "| frame | bytes | contender | median us | x faster than amsd (worst amsd row) |"
    if args.markdown:
        print(header)
        print("|---|---:|---|---:|---:|")
    for case_id, label, size, row in results:
        amsd_us = max(v for k, v in row.items() if k.startswith("amsd") and isinstance(v, float))
        refs = {k: v for k, v in row.items() if not k.startswith("amsd") and isinstance(v, float)}
        for contender, value in row.items():
            shown = f"{value:.1f}" if isinstance(value, float) else value
            ratio = f"{value / amsd_us:.1f}" if contender in refs and isinstance(value, float) else ""
            if args.markdown:
                print(f"| {label} | {size} | {contender} | {shown} | {ratio} |")
            else:
                print(f"{label:<28} {size:>5} B  {contender:<26} {shown:>12} us  {ratio and ratio + 'x'}")
        if refs:
            fastest_name = min(refs, key=lambda k: refs[k])
            ratio_value = refs[fastest_name] / amsd_us
            ok = ratio_value >= REQUIRED_RATIO
            failed |= not ok
            verdict = "OK" if ok else "MISSED"
            line = (
                f"{label}: fastest reference {fastest_name} {refs[fastest_name]:.1f} us; amsd (worst row) "
                f"{amsd_us:.1f} us; ratio {ratio_value:.1f}x (target >= {REQUIRED_RATIO:.0f}x) {verdict}; "
                f"DESIGN.md reference {DESIGN_REFERENCE_US[case_id]:.0f} us"
            )
            print(line if not args.markdown else f"<!-- {line} -->")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
