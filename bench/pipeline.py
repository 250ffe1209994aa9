"""Readings per second through the whole pipeline into a real Mosquitto, counted at a subscriber.

Usage: .venv/bin/python -m bench.pipeline [--meters 30] [--seconds 20] [--profile aidon-no ...]

One process, as `amsd run` would be: N `MeterPipeline`s (one Decoder each), one `Publisher` (amsd.mqtt,
QoS 1, persistent outbox) and a Mosquitto broker started here on a free loopback port. Frames are
pre-generated with `MeterSimulator` (different values in every frame) and handed to
`MeterPipeline.on_data` directly, the same call the line reader makes for each chunk it reads; the
serial/TCP reading itself is not part of this measurement (bench/latency.py covers a real socket).
Feeding is paced by the publisher's queue (kept below a high-water mark) so that nothing spills into
the outbox: what is counted is what the publisher sustains, not what it buffers.

A separate `mosquitto_sub` process (C, so it does not steal the interpreter) subscribes to
`amsd/+/state` and the readings are counted there. Every reading also yields an `obis` message and one
message per readable key (`amsd/<meter>/<key>`); the MQTT message rate is reported too.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from amsd.decoder import Decoder
from amsd.outbox import Outbox
from amsd.pipeline import MeterOptions, MeterPipeline
from amsd.publish import Publisher, PublisherSettings

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.mosquitto import Broker

TARGET_READINGS_PER_S = 5000.0
HIGH_WATER = 4000  # publisher queue depth above which feeding pauses (its spill limit is 20,000)


class SubscriberCounter:
    """`mosquitto_sub` printing one line per message; a thread counts them."""

    def __init__(self, host: str, port: int, topic: str) -> None:
        executable = shutil.which("mosquitto_sub")
        if executable is None:
            raise RuntimeError("mosquitto_sub is not installed (apt-get install mosquitto-clients)")
        self.process = subprocess.Popen(
            [executable, "-h", host, "-p", str(port), "-t", topic, "-q", "1", "-F", "%t"],
            stdout=subprocess.PIPE,
        )
        self.count = 0
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for _ in self.process.stdout:
            self.count += 1

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(5)


def pregenerate(profiles: list[str], meters: int, frames: int) -> list[list[bytes]]:
    from amsd.sim.meters import MeterSimulator

    streams = []
    for index in range(meters):
        simulator = MeterSimulator(profiles[index % len(profiles)], seed=index + 1)
        streams.append([simulator.next_frame().data for _ in range(frames)])
    return streams


async def run(args: argparse.Namespace, workdir: Path) -> int:
    streams = pregenerate(args.profile, args.meters, args.frames)
    with Broker(workdir / "broker") as broker:
        counter = SubscriberCounter(broker.host, broker.port, "amsd/+/state")
        settings = PublisherSettings(host=broker.host, port=broker.port, client_id="amsd-bench", discovery_prefix=None)
        publisher = Publisher(settings, Outbox(workdir / "outbox.sqlite3", 100_000))
        pipelines = [
            MeterPipeline(MeterOptions(name=f"m{index:03d}", discovery_prefix=None), Decoder(), publisher.submit)
            for index in range(args.meters)
        ]
        publisher.start()
        await asyncio.wait_for(publisher.wait_connected(), 10)
        await asyncio.sleep(0.5)  # let mosquitto_sub finish subscribing (no event to wait on from outside)
        base_count = counter.count
        fed = 0
        position = 0
        start = time.perf_counter()
        cpu_start = os.times()
        deadline = start + args.seconds
        while time.perf_counter() < deadline:
            if publisher.stats()["queue_depth"] > HIGH_WATER:
                await asyncio.sleep(0)  # let the publisher drain
                continue
            for pipeline, stream in zip(pipelines, streams, strict=True):
                pipeline.on_data(stream[position % len(stream)])
            fed += len(pipelines)
            position += 1
            await asyncio.sleep(0)
        fed_elapsed = time.perf_counter() - start
        # Let what was fed arrive, then count.
        drain_deadline = time.perf_counter() + 30
        while counter.count - base_count < fed and time.perf_counter() < drain_deadline:
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - start
        cpu_end = os.times()
        received = counter.count - base_count
        stats = publisher.stats()
        await publisher.stop()
        counter.stop()
    per_second = received / elapsed
    messages_per_reading = stats["published"] / max(fed, 1)
    print(f"meters={args.meters} profiles={','.join(args.profile)} fed={fed} in {fed_elapsed:.1f} s")
    print(f"readings at subscriber: {received} in {elapsed:.1f} s = {per_second:,.0f} readings/s")
    print(
        f"MQTT messages published: {stats['published']} ({messages_per_reading:.1f} per reading) = "
        f"{stats['published'] / elapsed:,.0f} msg/s; outboxed={stats['outboxed']} dropped={stats['dropped']}"
    )
    # CPU of this process only (decoders, payloads, publisher, feeding loop); Mosquitto and the
    # counting subscriber are other processes.
    cpu = (cpu_end.user - cpu_start.user) + (cpu_end.system - cpu_start.system)
    print(f"CPU of the amsd process: {cpu:.2f} s = {cpu / max(fed, 1) * 1e6:.0f} us per reading (user+sys)")
    verdict = "OK" if per_second >= TARGET_READINGS_PER_S else "MISSED"
    print(f"target >= {TARGET_READINGS_PER_S:,.0f} readings/s: {verdict}")
    return 0 if per_second >= TARGET_READINGS_PER_S and received == fed else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meters", type=int, default=30)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--frames", type=int, default=200, help="pre-generated frames per meter (cycled)")
    parser.add_argument(
        "--profile", action="append", help="simulator profile(s), cycled over meters (default: aidon-no)"
    )
    args = parser.parse_args(argv)
    args.profile = args.profile or ["aidon-no"]
    with tempfile.TemporaryDirectory(prefix="amsd-bench-") as tmp:
        return asyncio.run(run(args, Path(tmp)))


if __name__ == "__main__":
    raise SystemExit(main())
