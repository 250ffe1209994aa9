"""Resident memory of `amsd run` with one meter after ~30 s of frames, and `amsd --version` wall time.

Usage: .venv/bin/python -m bench.memory [--seconds 30] [--rate 10] [--profile lg-e450-ch --encrypted]

The daemon is a real `amsd run` subprocess (same set-up as bench/latency.py: a TCP line served here,
Mosquitto on loopback). Frames (aidon-no, different values each) are written at `--rate` per second,
faster than a real meter so that 30 s exercise hundreds of frames; VmRSS and VmHWM are then read from
/proc/PID/status. `amsd --version` is timed with hyperfine if installed, else a loop of runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.latency import REPO, Line, amsd_daemon, pregenerate
from tests.mosquitto import Broker

TARGET_RSS_MB = 40.0
TARGET_VERSION_MS = 200.0


def proc_status(pid: int) -> dict[str, float]:
    """VmRSS / VmHWM in MB."""
    values: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0]) / 1024.0
    return values


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (/proc/PID/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure_rss(
    seconds: float, rate: float, workdir: Path, profile: str = "aidon-no", encrypted: bool = False
) -> tuple[dict[str, float], int]:
    frames = pregenerate(profile, int(seconds * rate) + 1, encrypt=encrypted)
    keys = ""
    if encrypted:
        from amsd.sim.meters import DEMO_AUTHENTICATION_KEY, DEMO_ENCRYPTION_KEY

        keys = (
            f'encryption_key = "{DEMO_ENCRYPTION_KEY.hex()}"\nauthentication_key = "{DEMO_AUTHENTICATION_KEY.hex()}"\n'
        )
    line = Line()
    with Broker(workdir / "broker") as broker:
        async with amsd_daemon(workdir, broker, line, keys) as process:
            writer = line.writer
            assert writer is not None
            cpu_before = proc_cpu_seconds(process.pid)  # after start-up: only the steady state counts
            start = time.monotonic()
            for index, frame in enumerate(frames):
                writer.write(frame)
                await writer.drain()
                # Pace the line: frame n is due at n / rate seconds.
                await asyncio.sleep(max(0.0, start + (index + 1) / rate - time.monotonic()))
            await asyncio.sleep(1.0)  # let the last frames be processed before reading /proc
            status = proc_status(process.pid)
            status["cpu_s"] = proc_cpu_seconds(process.pid) - cpu_before
            return status, len(frames)


def version_wall_ms(runs: int) -> tuple[float, str]:
    amsd = shutil.which("amsd", path=str(Path(sys.executable).parent))
    command = [amsd, "--version"] if amsd else [sys.executable, "-m", "amsd", "--version"]
    hyperfine = shutil.which("hyperfine")
    if hyperfine:
        out = subprocess.run(
            [hyperfine, "--warmup", "3", "--runs", str(runs), "--export-json", "/dev/stdout", "-N", " ".join(command)],
            capture_output=True,
            text=True,
            check=True,
            cwd=REPO,
        ).stdout
        import json

        start = out.index("{")
        return float(json.loads(out[start:])["results"][0]["median"]) * 1000.0, "hyperfine median"
    for _ in range(3):
        subprocess.run(command, capture_output=True, check=True, cwd=REPO)
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(command, capture_output=True, check=True, cwd=REPO)
        samples.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(samples), f"median of {runs} runs of `{' '.join(Path(c).name for c in command)}`"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=10.0, help="frames per second on the line")
    parser.add_argument("--version-runs", type=int, default=20)
    parser.add_argument("--profile", default="aidon-no", help="simulated meter (default aidon-no)")
    parser.add_argument(
        "--encrypted", action="store_true", help="encrypt the frames (simulator demo keys; e.g. --profile lg-e450-ch)"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="amsd-bench-") as tmp:
        status, frames = asyncio.run(measure_rss(args.seconds, args.rate, Path(tmp), args.profile, args.encrypted))
    rss = status.get("VmRSS", float("nan"))
    what = f"{args.profile}{', encrypted' if args.encrypted else ''}"
    print(
        f"amsd run, 1 meter ({what}), {frames} frames over {args.seconds:.0f} s: VmRSS {rss:.1f} MB, "
        f"VmHWM {status.get('VmHWM', float('nan')):.1f} MB (target <= {TARGET_RSS_MB:.0f} MB: "
        f"{'OK' if rss <= TARGET_RSS_MB else 'MISSED'})"
    )
    cpu = status.get("cpu_s", float("nan"))
    # 10 ms clock ticks: over 30 s of frames the resolution is fine for a per-reading average.
    print(
        f"amsd run CPU (user+sys) while decoding and publishing: {cpu:.2f} s over {args.seconds:.0f} s = "
        f"{cpu / max(frames, 1) * 1e6:.0f} us per reading, {cpu / args.seconds * 100:.2f} % of one core"
    )
    wall, how = version_wall_ms(args.version_runs)
    print(
        f"amsd --version: {wall:.0f} ms ({how}; target <= {TARGET_VERSION_MS:.0f} ms: "
        f"{'OK' if wall <= TARGET_VERSION_MS else 'MISSED'})"
    )
    return 0 if rss <= TARGET_RSS_MB and wall <= TARGET_VERSION_MS else 1


if __name__ == "__main__":
    raise SystemExit(main())
