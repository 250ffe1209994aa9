"""amsd against the existing Python decoders, side by side, interleaved, in one run.

    .venv/bin/python -m bench.peers                  # from the repository root

creates (once) a throwaway venv for the peers, default /tmp/amsd-peers-venv (`--venv DIR`), and
pip installs gurux-dlms, dsmr-parser, amshan and dlms-cosem there. They are never project
dependencies and never touch the project's venv. Each contender then runs in its own worker process
(`bench/peer_worker.py`): the peers in the peer venv's interpreter, amsd in this one. Every round
asks every contender to decode every frame for a short batch, in a shuffled order, so that load
changes on a noisy machine hit all contenders alike. Per frame it prints the median us over all
runs, the range of the per-round medians, and the ratio fastest peer / amsd.

Frames, bytes to values, CRC included, read from the conformance corpus at run time (nothing from it
is stored in the project): Aidon list 3, Kamstrup 10 s list (list 2) and list 3, Kaifa list 2,
DSMR 5 telegram, L+G E570 encrypted GBT push (5 HDLC frames). The corpus has no DSMR telegram inside
general-glo-ciphering, so that frame is built here: the corpus Sagemcom T210-D-R P1 telegram
encrypted with amsd's own encoder (`amsd.sim.encode.glo_cipher`, AES-128-GCM, EK + AK, 12-byte tag)
under random keys made at run time. A last row decodes a stream of 1,500 different DSMR 5 telegrams
from amsd's simulator (values and clock change as on a live line), each contender taking the next
telegram on every run: amsd's parsed-line cache then helps exactly as much as it does on a real line
(ids, tariff and slow counters hit; clock, powers, voltages and energies are parsed every time). (The
first version cycled 64 telegrams, so that after one cycle every line was a cache hit: that overstated
amsd on this row.)
The built DSMR-in-GCM frame also runs as a live line: 1,500 telegrams in which the clock, the import
powers and the two import counters change, each wrapped as above (`DSMR in GCM, live`).
Another stream row wraps each of the simulated telegrams in general-glo-ciphering (rising invocation counter,
random keys), as an encrypted P1 line sends them; dsmr-parser takes them with its DSMR 5 objects and
its general-glo-ciphering path.

Every contender's decode must produce the expected values: the worker returns what it decoded and
this script checks that distinctive expected values (strings, numbers >= 10) are among them, so no
failure path is timed. A peer that cannot decode a frame is listed as n/a with the reason.

`--amsd-only` (no venv, nothing installed) and `--quick` (two short rounds) are for the CI smoke test.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "peer_worker.py"
DEFAULT_VENV = Path("/tmp/amsd-peers-venv")
PEER_PACKAGES = ("gurux-dlms", "dsmr-parser", "amshan", "dlms-cosem")
PEERS = ("gurux-dlms", "dlms-cosem", "amshan", "dsmr-parser")
REQUIRED_RATIO = 10.0

# (frame label, corpus case id, extra case fields)
FRAMES: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("Aidon list 3", "no-aidon-6534-list3-gh1119", {}),
    ("Kamstrup 10 s list (list 2)", "no-kamstrup-omnipower-list2-gh862", {}),
    ("Kamstrup list 3", "no-kamstrup-omnipower-list3-em001-1", {}),
    ("Kaifa list 2", "no-kaifa-ma304h3e-list2-gh180", {"kaifa_tagged_datetime": True}),
    ("DSMR 5 telegram", "nl-dsmr50-iskra-am550-2mbus", {}),
    ("L+G E570 GBT push, GCM", "ch-lg-e570-gbt-encrypted-scs", {}),
)
GCM_DSMR_LABEL = "DSMR in GCM (built)"
GCM_DSMR_SOURCE = "at-sagemcom-t210d-r-p1"
# Like a live line: different telegrams one after the other (built by amsd's simulator, not corpus).
DSMR_STREAM_LABEL = "DSMR 5 stream (simulated)"
GCM_DSMR_STREAM_LABEL = "DSMR 5 in GCM stream (simulated)"
GCM_SAGEMCOM_STREAM_LABEL = "DSMR in GCM, live (built)"
# Enough different telegrams that none comes round again while amsd's parsed-line cache still holds
# its changing lines (the cache is emptied at 4,096 lines, every ~240 telegrams of a DSMR 5 meter):
# the clock, power, voltage and energy lines are parsed afresh every time, as on a live line.
STREAM_TELEGRAMS = 1500
# DSMR rows are timed twice for amsd: with its parsed-line cache warm (the same telegram repeated)
# and cleared before every run (no line seen before). The verdict uses the slower of the two.
AMSD_CONTENDERS = ("amsd", "amsd-cold")


def corpus_dir() -> Path | None:
    env = os.environ.get("AMSD_CONFORMANCE_DIR")
    candidates = [Path(env)] if env else []
    candidates.append(REPO.parent / "shared" / "conformance")
    for path in candidates:
        if (path / "cases").is_dir():
            return path
    return None


def load_case(root: Path, case_id: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((root / "cases" / f"{case_id}.json").read_text())
    return data


def build_dsmr_stream(count: int) -> dict[str, Any]:
    """`count` different DSMR 5 telegrams from amsd's simulator, as a live meter sends them (clock,
    powers, voltages, energies change; ids and most counters repeat), each decoded once per cycle."""
    from amsd.sim.meters import MeterSimulator

    simulator = MeterSimulator("dsmr5", seed=8)
    frames = [simulator.next_frame() for _ in range(count)]
    first = frames[0]
    return {
        "id": f"{count} simulated dsmr5 telegrams",
        "transport": "dsmr",
        "input_hex": first.data.hex(),
        "input_text": first.data.decode("latin-1"),
        "stream_hex": [frame.data.hex() for frame in frames],
        # The check decodes the first telegram: its values as the simulator made them.
        "expected": {key: expected.value for key, expected in first.expected.items()},
    }


def _in_gcm(telegrams: list[bytes], maker: bytes, first_counter: int) -> tuple[dict[str, Any], list[str]]:
    """The telegrams in general-glo-ciphering (EK + AK, 12-byte tag, rising invocation counter) under
    fresh random keys: the case fields that say so, and the frames as hex."""
    from amsd.sim.encode import glo_cipher

    ek, ak, title = os.urandom(16), os.urandom(16), maker + os.urandom(5)
    frames = [
        glo_cipher(
            telegram,
            system_title=title,
            invocation_counter=first_counter + index,
            encryption_key=ek,
            authentication_key=ak,
            security_control=0x30,
        ).hex()
        for index, telegram in enumerate(telegrams)
    ]
    fields = {"dsmr_inside": True, "encrypted": True, "key_hex": ek.hex(), "auth_key_hex": ak.hex()}
    return fields, frames


def build_gcm_dsmr(root: Path) -> dict[str, Any]:
    """The corpus P1 telegram wrapped in general-glo-ciphering with fresh random keys."""
    source = load_case(root, GCM_DSMR_SOURCE)
    fields, [frame] = _in_gcm([bytes.fromhex(source["input_hex"])], b"SAG", 0x1234)
    return {
        "id": f"built from {GCM_DSMR_SOURCE}",
        "transport": "dsmr",
        **fields,
        "sagemcom_spec": True,
        "input_hex": frame,
        "expected": source["expected"],
    }


def build_gcm_sagemcom_stream(root: Path, count: int) -> dict[str, Any]:
    """The built DSMR-in-GCM frame as a live line sends it: `count` telegrams 5 s apart, in which the
    clock, active and reactive import power and the two active import counters change (the other 15
    lines repeat, as on a meter without export), each with its own CRC, wrapped in general-glo-
    ciphering with a rising invocation counter. Made at run time from the corpus telegram."""
    import random
    from datetime import datetime, timedelta

    from amsd.sim.encode import dsmr_telegram

    source = load_case(root, GCM_DSMR_SOURCE)
    text = bytes.fromhex(source["input_hex"]).decode("latin-1")
    ident, _, body = text[1:].partition("\r\n")
    lines = [line for line in body.split("\r\n") if line and not line.startswith("!")]
    obis = [line.partition("(")[0] for line in lines]
    value = {key: line.partition("(")[2] for key, line in zip(obis, lines, strict=True)}
    clock = datetime.strptime(value["0-0:1.0.0"][:12], "%y%m%d%H%M%S")
    total, tariff = int(value["1-0:1.8.0"][:9]), int(value["1-0:1.8.1"][:9])
    rng = random.Random(8)
    telegrams = []
    for index in range(count):
        watts, vars_ = rng.randrange(150, 4000), rng.randrange(0, 600)
        energy = round(watts * 5 / 3600)  # Wh in 5 s
        total, tariff = total + energy, tariff + energy
        value["0-0:1.0.0"] = f"{(clock + timedelta(seconds=5 * index)):%y%m%d%H%M%S}S)"
        value["1-0:1.7.0"] = f"{watts:09d}*W)"
        value["1-0:4.7.0"] = f"{vars_:09d}*var)"
        value["1-0:1.8.0"] = f"{total:09d}*Wh)"
        value["1-0:1.8.1"] = f"{tariff:09d}*Wh)"
        telegrams.append(dsmr_telegram(ident, [f"{key}({value[key]}" for key in obis]))
    fields, frames = _in_gcm(telegrams, b"SAG", 0x2000)
    changed = ("0-0:1.0.0.255", "1-0:1.7.0.255", "1-0:4.7.0.255", "1-0:1.8.0.255", "1-0:1.8.1.255")
    return {
        "id": f"{count} telegrams built from {GCM_DSMR_SOURCE}",
        "transport": "dsmr",
        **fields,
        "sagemcom_spec": True,
        "input_hex": frames[0],
        "stream_hex": frames,
        # The check decodes the first telegram: the lines that do not change keep the corpus values.
        "expected": {key: item for key, item in source["expected"].items() if key not in changed},
    }


def build_gcm_dsmr_stream(count: int) -> dict[str, Any]:
    """`count` different simulated DSMR 5 telegrams, each in general-glo-ciphering (EK + AK, rising
    invocation counter) under fresh random keys: a live encrypted P1 line (Luxembourg, Austria)."""
    plain = build_dsmr_stream(count)
    fields, frames = _in_gcm([bytes.fromhex(telegram) for telegram in plain["stream_hex"]], b"SIM", 0x1000)
    return {
        **plain,
        "id": f"{count} simulated dsmr5 telegrams in GCM",
        **fields,
        "input_hex": frames[0],
        "stream_hex": frames,
    }


# ------------------------------------------------------------------------------------ workers


class Worker:
    def __init__(self, name: str, python: str) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            [python, str(WORKER), name],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env={**os.environ, "PYTHONHASHSEED": "0"},
        )

    def ask(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.name} died")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def ensure_venv(venv: Path, install: bool) -> str | None:
    """The peer venv's interpreter, created and filled on first use."""
    python = venv / "bin" / "python"
    probe = "import gurux_dlms, dsmr_parser, han, dlms_cosem"
    if python.exists() and subprocess.run([python, "-c", probe], capture_output=True).returncode == 0:
        return str(python)
    if not install:
        return None
    print(f"creating peer venv {venv} and installing {' '.join(PEER_PACKAGES)} (once)", file=sys.stderr)
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(venv)], check=True)
    subprocess.run([python, "-m", "pip", "install", "-q", *PEER_PACKAGES], check=True)
    return str(python)


# ------------------------------------------------------------------------------------ checking


def distinctive_expected(case: dict[str, Any]) -> list[Any]:
    """Expected values unlikely to appear by chance: strings of 4+ characters, numbers >= 10."""
    picked: list[Any] = []
    for value in case.get("expected", {}).values():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str) and len(item) >= 4 and not item[:4].isdigit():
                picked.append(item)
            elif isinstance(item, (int, float)) and not isinstance(item, bool) and abs(item) >= 10:
                picked.append(float(item))
    for scaler in (case.get("scalers") or {}).values():
        raw = scaler.get("raw") if isinstance(scaler, dict) else None
        if isinstance(raw, int) and abs(raw) >= 10:
            picked.append(float(raw))
    return picked


def values_found(case: dict[str, Any], leaves: list[Any]) -> tuple[int, int]:
    """How many distinctive expected values the contender's output contains (units may differ by
    1000: kW vs W, Wh vs kWh; raw unscaled integers count too)."""
    numbers = [leaf for leaf in leaves if isinstance(leaf, float)]
    texts = {leaf for leaf in leaves if isinstance(leaf, str)}
    wanted = distinctive_expected(case)
    found = 0
    for value in wanted:
        if isinstance(value, str):
            found += value in texts or any(value in text for text in texts)
        else:
            targets = (value, value * 1000, value / 1000, value * 100, value / 100)
            found += any(abs(n - t) <= 1e-6 * max(1.0, abs(t)) for n in numbers for t in targets)
    return found, len(wanted)


# ------------------------------------------------------------------------------------ main


@dataclass
class Cell:
    samples: list[int] = field(default_factory=list)
    round_medians: list[float] = field(default_factory=list)
    runs_per_batch: int = 0
    produced: int = 0
    note: str = ""
    partial: str = ""  # what this contender skips on this frame (no CRC check, no framing)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="peer venv (created if missing)")
    parser.add_argument("--no-install", action="store_true", help="never create the venv or pip install")
    parser.add_argument("--amsd-only", action="store_true", help="time amsd only (no peer venv)")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds")
    parser.add_argument("--batch-ms", type=float, default=40.0, help="timing per contender, frame and round")
    parser.add_argument("--quick", action="store_true", help="2 rounds of 2 ms (smoke test)")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.batch_ms = 2, 2.0
    root = corpus_dir()
    if root is None:
        print("conformance corpus not found (../shared/conformance or AMSD_CONFORMANCE_DIR)", file=sys.stderr)
        return 2

    cases: list[tuple[str, dict[str, Any]]] = []
    for label, case_id, extra in FRAMES:
        cases.append((label, {**load_case(root, case_id), **extra}))
    cases.append((GCM_DSMR_LABEL, build_gcm_dsmr(root)))
    cases.append((GCM_SAGEMCOM_STREAM_LABEL, build_gcm_sagemcom_stream(root, STREAM_TELEGRAMS)))
    cases.append((DSMR_STREAM_LABEL, build_dsmr_stream(STREAM_TELEGRAMS)))
    cases.append((GCM_DSMR_STREAM_LABEL, build_gcm_dsmr_stream(STREAM_TELEGRAMS)))

    workers: dict[str, Worker] = {name: Worker(name, sys.executable) for name in AMSD_CONTENDERS}
    if not args.amsd_only:
        python = ensure_venv(args.venv, install=not args.no_install)
        if python is None:
            print(f"peer venv {args.venv} missing and --no-install given: amsd only", file=sys.stderr)
        else:
            workers.update({name: Worker(name, python) for name in PEERS})
    try:
        versions: dict[str, str] = {}
        for worker in workers.values():
            reply = worker.ask({"op": "versions"})
            versions.update(reply["versions"])
            versions[f"python ({worker.name})"] = reply["python"]

        cells: dict[tuple[str, str], Cell] = {}
        failed_check = False
        for label, case in cases:
            for name, worker in workers.items():
                reply = worker.ask({"op": "setup", "frame": label, "case": case})
                if not reply["ok"]:
                    cells[(label, name)] = Cell(note=reply["reason"])
                    continue
                found, wanted = values_found(case, reply["leaves"])
                needed = min(3, wanted)
                if found < needed:
                    cells[(label, name)] = Cell(note=f"values not found ({found}/{wanted}): not timed")
                    failed_check |= name.startswith("amsd")
                    continue
                probe = worker.ask({"op": "time", "frame": label, "runs": 5})
                median_ns = statistics.median(probe["samples"])
                runs = max(3, int(args.batch_ms * 1e6 / max(median_ns, 1.0)))
                partial = reply.get("partial", "")
                note = f"{found}/{wanted} values checked" + (f"; LESS WORK: {partial}" if partial else "")
                cells[(label, name)] = Cell(runs_per_batch=runs, note=note, partial=partial)

        order = [(label, name) for (label, name), cell in cells.items() if cell.runs_per_batch]
        shuffle = random.Random(8)
        for _ in range(args.rounds):
            shuffle.shuffle(order)
            for label, name in order:
                cell = cells[(label, name)]
                reply = workers[name].ask({"op": "time", "frame": label, "runs": cell.runs_per_batch})
                cell.samples.extend(reply["samples"])
                cell.produced += reply["produced"]
                cell.round_medians.append(statistics.median(reply["samples"]) / 1000.0)
    finally:
        for worker in workers.values():
            worker.close()

    return report(cases, list(workers), cells, versions, args.markdown) or int(failed_check)


def report(
    cases: list[tuple[str, dict[str, Any]]],
    names: list[str],
    cells: dict[tuple[str, str], Cell],
    versions: dict[str, str],
    markdown: bool,
) -> int:
    print("versions: " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())))
    if markdown:
        print("| frame | bytes | contender | median us | range of round medians | fastest peer / amsd |")
        print("|---|---:|---|---:|---|---:|")
    missed = 0
    for label, case in cases:
        size = len(case["input_hex"]) // 2
        medians: dict[str, float] = {}
        for name in names:
            cell = cells.get((label, name))
            if cell is None or not cell.samples:
                continue
            medians[name] = statistics.median(cell.samples) / 1000.0
        amsd_rows = [medians[n] for n in AMSD_CONTENDERS if n in medians]
        amsd_us = max(amsd_rows) if amsd_rows else None
        peers = {n: v for n, v in medians.items() if n not in AMSD_CONTENDERS}
        for name in names:
            cell = cells.get((label, name))
            if cell is None or (not cell.samples and name == "amsd-cold"):
                continue
            if cell.samples:
                low, high = min(cell.round_medians), max(cell.round_medians)
                median = f"{medians[name]:.1f}"
                spread = f"{low:.1f}-{high:.1f}"
                ratio = f"{medians[name] / amsd_us:.1f}x" if name in peers and amsd_us else ""
                runs = len(cell.samples)
                note = f"{cell.note}; {runs} runs"
                if cell.produced != runs:
                    note += f", only {cell.produced} decoded"  # a failure path was timed: say so
            else:
                median, spread, ratio, note = "n/a", "", "", cell.note
            if markdown:
                print(f"| {label} | {size} | {name} | {median} | {spread} | {ratio} |")
            else:
                print(f"{label:<28} {size:>5} B  {name:<12} {median:>9} us  [{spread:>13}]  {ratio:>7}  {note}")
        # The verdict compares with peers that do the whole job (framing, CRC, values); a peer that
        # skips part of it is still shown, with its own ratio.
        full = {n: v for n, v in peers.items() if not cells[(label, n)].partial}
        if full and amsd_us:
            fastest = min(full, key=lambda n: full[n])
            ratio_value = full[fastest] / amsd_us
            verdict = "OK" if ratio_value >= REQUIRED_RATIO else "MISSED"
            missed += verdict == "MISSED"
            line = (
                f"=> {label}: fastest full peer {fastest} {full[fastest]:.1f} us, amsd (slowest amsd row) "
                f"{amsd_us:.1f} us: {ratio_value:.1f}x (target >= {REQUIRED_RATIO:.0f}x) {verdict}"
            )
            lighter = {n: v for n, v in peers.items() if n not in full and v < full[fastest]}
            for name, value in lighter.items():
                line += f"; vs {name} doing less work ({cells[(label, name)].partial}): {value / amsd_us:.1f}x"
            print(f"<!-- {line} -->" if markdown else line)
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
