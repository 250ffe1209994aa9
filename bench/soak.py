"""Soak: many frames from several simulated meters through the whole pipeline, resources sampled over
time, every frame accounted for (issue 4, scenario 8).

Full run (about 100,000 frames; a few minutes on a 2-core machine):

    .venv/bin/python -m bench.soak --frames 100000 --meters 6 --out bench/results/soak

Short run (what tests/e2e/test_soak.py does in CI): `--frames 5000 --meters 3`.

Set-up, all real: Mosquitto on a free loopback port; `amsd run` as a subprocess with one meter per
simulator; the simulators (`serve_tcp`, in this process) serve their meters over TCP at a compressed
cadence (`--rate` messages/s per meter, no byte pacing) and count what they sent; a `mosquitto_sub`
process counts every `state` and `raw` message per meter.

Sampled every `--interval` seconds: amsd's VmRSS and open file descriptors (from /proc) and its asyncio
task count (the `tasks` field of the diagnostics, which amsd re-publishes when Home Assistant
announces `online`: the soak publishes that itself). Written as CSV and as a markdown table.

Accounting, per meter, at the end: frames sent (simulator) == frames_ok + crc_errors + decrypt_errors
+ unknown (amsd diagnostics), and readings received by the subscriber == frames_ok. Flatness: after a
warm-up (the first quarter of the run), RSS may not grow more than `--rss-slack-mib`, and the fd and
task counts may not grow at all. Exit status 0 when everything holds, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from amsd.sim.meters import PROFILES
from amsd.sim.simulate import SimServer, serve_tcp
from tests.mosquitto import Broker

REPO = Path(__file__).resolve().parent.parent
# Profiles cycled over the meters: HDLC, M-Bus + CTR, HDLC + GBT + GCM, DSMR text.
DEFAULT_PROFILES = ("kamstrup-no", "aidon-no", "sagemcom-at", "lg-e450-ch", "dsmr5", "kaifa-no")
UNDECODED_COUNTERS = ("crc_errors", "decrypt_errors", "unknown")
TASK_SLACK = 2


@dataclass
class Sample:
    elapsed_s: float
    frames_sent: int
    readings_received: int
    rss_kib: int
    open_fds: int
    tasks: int | None


@dataclass
class SoakResult:
    frames_sent: int
    readings_received: int
    seconds: float
    samples: list[Sample]
    per_meter: dict[str, dict[str, int]]
    accounted: bool
    flat: bool
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.accounted and self.flat


class TopicCounter:
    """`mosquitto_sub` printing `topic<TAB>payload` per message; a thread counts state/raw per meter
    and keeps the last diagnostics payload per meter."""

    def __init__(self, host: str, port: int) -> None:
        executable = shutil.which("mosquitto_sub")
        if executable is None:
            raise RuntimeError("mosquitto_sub is not installed (apt-get install mosquitto-clients)")
        self.process = subprocess.Popen(
            [executable, "-h", host, "-p", str(port), "-q", "1", "-F", "%t\t%p",
             "-t", "amsd/+/state", "-t", "amsd/+/raw", "-t", "amsd/+/diagnostics"],
            stdout=subprocess.PIPE,
        )  # fmt: skip
        self.counts: Counter[str] = Counter()
        self.diagnostics: dict[str, dict[str, Any]] = {}
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            topic, _, payload = line.decode(errors="replace").rstrip("\n").partition("\t")
            parts = topic.split("/")
            if len(parts) != 3:
                continue
            if parts[2] == "diagnostics":
                with contextlib.suppress(ValueError):
                    self.diagnostics[parts[1]] = json.loads(payload)
            else:
                self.counts[f"{parts[1]}/{parts[2]}"] += 1

    def readings(self, meter: str | None = None) -> int:
        if meter is not None:
            return self.counts[f"{meter}/state"]
        return sum(n for key, n in self.counts.items() if key.endswith("/state"))

    def stop(self) -> None:
        self.process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)


def proc_value(pid: int, field_name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field_name} not in /proc/{pid}/status")


def write_config(path: Path, broker: Broker, servers: list[SimServer], outbox: Path) -> None:
    lines = [
        "[mqtt]", 'host = "127.0.0.1"', f"port = {broker.port}", 'client_id = "amsd-soak"',
        "[homeassistant]", "enabled = true",
        "[outbox]", f'path = "{outbox}"',
        "[log]", 'level = "warning"', 'format = "json"',
    ]  # fmt: skip
    for n, server in enumerate(servers):
        lines += ["[[meters]]", f'name = "m{n}"', f'port = "{server.address}"', "idle_timeout_s = 600"]
        if server.simulator.cipher is not None:
            cipher = server.simulator.cipher
            lines.append(f'encryption_key = "{cipher.encryption_key.hex()}"')
            if cipher.authentication_key is not None:
                lines.append(f'authentication_key = "{cipher.authentication_key.hex()}"')
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)


async def announce_home_assistant(broker: Broker) -> None:
    """`homeassistant/status online`: amsd answers with discovery, availability and diagnostics."""
    executable = shutil.which("mosquitto_pub")
    if executable is None:
        return
    process = await asyncio.create_subprocess_exec(
        executable, "-h", broker.host, "-p", str(broker.port), "-t", "homeassistant/status", "-m", "online",
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    await asyncio.wait_for(process.wait(), 10)


async def run_soak(
    workdir: Path,
    *,
    frames: int,
    meters: int,
    rate: float,
    interval: float,
    profiles: tuple[str, ...] = DEFAULT_PROFILES,
    rss_slack_mib: float = 4.0,
    log: Any = print,
) -> SoakResult:
    per_meter = -(-frames // meters)
    broker = Broker(workdir / "broker").start()
    servers: list[SimServer] = []
    counter: TopicCounter | None = None
    amsd: asyncio.subprocess.Process | None = None
    samples: list[Sample] = []
    started = time.monotonic()
    try:
        for n in range(meters):
            profile = profiles[n % len(profiles)]
            servers.append(
                await serve_tcp(
                    profile,
                    speed=rate * PROFILES[profile].period,
                    pacing=False,
                    frames=per_meter,
                    wait_for_client=True,
                    seed=1000 + n,
                )
            )
        config = workdir / "amsd.toml"
        write_config(config, broker, servers, workdir / "outbox.sqlite3")
        counter = TopicCounter(broker.host, broker.port)
        stderr = (workdir / "amsd.stderr").open("wb")
        amsd = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "amsd", "run", "-c", str(config),
            stdout=subprocess.DEVNULL, stderr=stderr, stdin=subprocess.DEVNULL, cwd=REPO,
        )  # fmt: skip
        stderr.close()
        started = time.monotonic()

        def sample() -> Sample:
            assert amsd is not None and counter is not None
            tasks = [int(d["tasks"]) for d in counter.diagnostics.values() if d.get("tasks") is not None]
            return Sample(
                elapsed_s=round(time.monotonic() - started, 1),
                frames_sent=sum(s.frames_sent for s in servers),
                readings_received=counter.readings(),
                rss_kib=proc_value(amsd.pid, "VmRSS"),
                open_fds=len(os.listdir(f"/proc/{amsd.pid}/fd")),
                tasks=max(tasks) if tasks else None,
            )

        # Run: sample on a fixed cadence until every simulator has sent all its frames.
        while not all(s.finished.is_set() for s in servers):
            if amsd.returncode is not None:
                raise RuntimeError(f"amsd exited with {amsd.returncode} during the soak")
            await announce_home_assistant(broker)
            await asyncio.sleep(interval)
            samples.append(sample())
            log(f"  {asdict(samples[-1])}")
        sent = sum(s.frames_sent for s in servers)
        # Drain: every reading reaches the subscriber (bounded by a generous deadline).
        deadline = time.monotonic() + 60
        while counter.readings() < sent and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        # Final counters: ask for diagnostics until each meter's frames_ok has caught up.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            await announce_home_assistant(broker)
            await asyncio.sleep(1.0)
            diagnostics = counter.diagnostics
            if all(
                sum(diagnostics.get(f"m{n}", {}).get(key, 0) for key in ("frames_ok", *UNDECODED_COUNTERS))
                >= s.frames_sent
                for n, s in enumerate(servers)
            ):
                break
        await asyncio.sleep(interval)
        samples.append(sample())
        seconds = time.monotonic() - started
        amsd.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(amsd.wait(), 15)
    finally:
        if amsd is not None and amsd.returncode is None:
            amsd.kill()
            await amsd.wait()
        for server in servers:
            await server.stop()
        if counter is not None:
            counter.stop()
        broker.stop()

    problems: list[str] = []
    if code != 0:
        problems.append(f"amsd exited with {code}")
    table: dict[str, dict[str, int]] = {}
    for n, server in enumerate(servers):
        name = f"m{n}"
        diag = counter.diagnostics.get(name, {})
        row = {
            "frames_sent": server.frames_sent,
            "frames_ok": int(diag.get("frames_ok", 0)),
            **{key: int(diag.get(key, 0)) for key in UNDECODED_COUNTERS},
            "readings_received": counter.readings(name),
            "raw_received": counter.counts[f"{name}/raw"],
        }
        table[f"{name} ({server.profile})"] = row
        counted = row["frames_ok"] + sum(row[key] for key in UNDECODED_COUNTERS)
        if counted != row["frames_sent"]:
            problems.append(f"{name}: {row['frames_sent']} frames sent, {counted} counted by amsd")
        if row["readings_received"] < row["frames_ok"]:
            problems.append(f"{name}: {row['frames_ok']} decoded, {row['readings_received']} received")
    accounted = not problems
    warm = samples[max(0, len(samples) // 4)] if samples else None
    last = samples[-1] if samples else None
    if warm is None or last is None:
        problems.append("no samples")
    else:
        if last.rss_kib - warm.rss_kib > rss_slack_mib * 1024:
            problems.append(f"RSS grew {last.rss_kib - warm.rss_kib} KiB after warm-up")
        if last.open_fds > warm.open_fds:
            problems.append(f"open fds grew {warm.open_fds} -> {last.open_fds}")
        # A task or two come and go (a Home Assistant re-announce sleeps in one): a leak grows steadily.
        if warm.tasks is not None and last.tasks is not None and last.tasks > warm.tasks + TASK_SLACK:
            problems.append(f"asyncio tasks grew {warm.tasks} -> {last.tasks}")
    flat = not [p for p in problems if "grew" in p or "no samples" in p]
    return SoakResult(
        frames_sent=sum(row["frames_sent"] for row in table.values()),
        readings_received=sum(row["readings_received"] for row in table.values()),
        seconds=round(seconds, 1),
        samples=samples,
        per_meter=table,
        accounted=accounted,
        flat=flat,
        problems=problems,
    )


def markdown(result: SoakResult, args: argparse.Namespace) -> str:
    lines = [
        f"# Soak: {result.frames_sent:,} frames, {len(result.per_meter)} meters, {result.seconds} s",
        "",
        f"Command: `.venv/bin/python -m bench.soak --frames {args.frames} --meters {args.meters} --rate {args.rate}`",
        "",
        f"Result: {'PASS' if result.ok else 'FAIL'} "
        f"({result.readings_received:,} readings received; {'; '.join(result.problems) or 'no problems'})",
        "",
        "| meter | sent | frames_ok | crc_errors | decrypt_errors | unknown | readings received |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in result.per_meter.items():
        lines.append(
            f"| {name} | {row['frames_sent']} | {row['frames_ok']} | {row['crc_errors']} | {row['decrypt_errors']} "
            f"| {row['unknown']} | {row['readings_received']} |"
        )
    lines += [
        "",
        "| elapsed s | frames sent | readings received | RSS KiB | open fds | tasks |",
        "|---|---|---|---|---|---|",
    ]
    for s in result.samples:
        lines.append(
            f"| {s.elapsed_s} | {s.frames_sent} | {s.readings_received} | {s.rss_kib} | {s.open_fds} | {s.tasks} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="amsd soak: frames through the full pipeline, resources sampled")
    parser.add_argument("--frames", type=int, default=100_000, help="frames in total, over all meters")
    parser.add_argument("--meters", type=int, default=6)
    parser.add_argument("--rate", type=float, default=250.0, help="messages per second per meter")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--rss-slack-mib", type=float, default=4.0)
    parser.add_argument("--out", type=Path, help="directory for soak.csv and soak.md (default: print)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="amsd-soak-") as tmp:
        result = asyncio.run(
            run_soak(
                Path(tmp), frames=args.frames, meters=args.meters, rate=args.rate, interval=args.interval,
                rss_slack_mib=args.rss_slack_mib,
            )
        )  # fmt: skip
    report = markdown(result, args)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        with (args.out / "soak.csv").open("w", newline="") as handle:
            writer = csv.DictWriter(
                handle, fieldnames=list(asdict(result.samples[0])) if result.samples else ["elapsed_s"]
            )
            writer.writeheader()
            for s in result.samples:
                writer.writerow(asdict(s))
        (args.out / "soak.md").write_text(report)
    print(report)
    return 0 if result.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
