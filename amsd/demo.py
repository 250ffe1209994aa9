"""`amsd demo`: a simulated meter through the whole pipeline on this machine, no hardware needed.

The simulator serves a meter on a local TCP port (like a ser2net bridge), and the real daemon reads it
with its real decoder. With an MQTT broker on localhost:1883 (or `--broker`) the readings are
published there under the `amsd-demo` prefix; without one, the demo says so and prints what it would
publish.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TextIO

from pydantic import SecretBytes

from amsd.publish import OutMessage

DEMO_PREFIX = "amsd-demo"


def _parse_broker(text: str | None) -> tuple[str, int]:
    if not text:
        return "localhost", 1883
    host, _, port = text.rpartition(":") if ":" in text else (text, "", "1883")
    return host or "localhost", int(port)


def broker_reachable(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class ConsolePrinter:
    """Prints messages as they are published (or, without a broker, instead of publishing)."""

    def __init__(self, out: TextIO, width: int) -> None:
        self.out = out
        self.width = width
        self.count = 0
        self.shown_values = False

    def show(self, message: OutMessage) -> None:
        self.count += 1
        topic = message.topic
        # The per-value and /obis topics repeat the state: show one of them, once.
        if not message.persistent or topic.endswith("/obis"):
            if self.shown_values or topic.endswith("/obis"):
                return
            self.shown_values = True
            self._line(f"{topic} {message.payload.decode()}   (one topic per value; not repeated here)")
            return
        self._line(f"{topic} {message.payload.decode('utf-8', 'replace')}")

    def _line(self, text: str) -> None:
        if len(text) > self.width:
            text = text[: self.width - 3] + "..."
        print(text, file=self.out, flush=True)


class PrintingSink:
    """A stand-in for the publisher when no broker is reachable: prints, and counts."""

    def __init__(self, printer: ConsolePrinter) -> None:
        self.printer = printer

    def submit(self, message: OutMessage) -> None:
        self.printer.show(message)

    def start(self) -> asyncio.Task[None]:
        return asyncio.create_task(asyncio.sleep(0))

    async def stop(self, timeout: float = 0.0) -> None:
        return None

    def stats(self) -> dict[str, Any]:
        return {"mqtt_connected": False, "published": 0, "dropped": 0, "outbox_depth": 0}


def demo_command(args: argparse.Namespace) -> int:
    from amsd.log import configure_logging

    configure_logging("warning", "console")
    try:
        host, port = _parse_broker(args.broker)
    except ValueError:
        print(f"amsd demo: --broker must be HOST or HOST:PORT, got {args.broker!r}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_demo(args, host, port))
    except KeyboardInterrupt:
        return 0


async def _demo(args: argparse.Namespace, host: str, port: int) -> int:
    from amsd.config import AmsdConfig, HomeAssistantConfig, MeterConfig, MqttConfig, OutboxConfig
    from amsd.daemon import Daemon
    from amsd.sim.meters import DEMO_AUTHENTICATION_KEY, DEMO_ENCRYPTION_KEY, PROFILES
    from amsd.sim.simulate import serve_tcp

    if args.profile not in PROFILES:
        print(f"amsd demo: unknown profile {args.profile!r}; choose one of {', '.join(PROFILES)}", file=sys.stderr)
        return 2
    out = sys.stdout
    width = max(60, shutil.get_terminal_size((160, 24)).columns)
    printer = ConsolePrinter(out, width)
    server = await serve_tcp(args.profile, "127.0.0.1", 0, speed=args.speed, wait_for_client=True)
    state_dir = tempfile.mkdtemp(prefix="amsd-demo-")
    online = broker_reachable(host, port)
    # Validated like a config file, then the daemon's plain view of it.
    config = AmsdConfig(
        mqtt=MqttConfig(host=host, port=port, topic_prefix=DEMO_PREFIX, client_id=f"amsd-demo-{os.getpid()}"),
        homeassistant=HomeAssistantConfig(enabled=online),
        outbox=OutboxConfig(path=Path(state_dir) / "outbox.sqlite3"),
        meters=[
            MeterConfig(
                name="demo",
                port=server.address,
                encryption_key=SecretBytes(DEMO_ENCRYPTION_KEY),
                authentication_key=SecretBytes(DEMO_AUTHENTICATION_KEY),
                idle_timeout_s=30,
            )
        ],
    ).for_run()
    line = PROFILES[args.profile]().line
    print(f"amsd demo: simulated {args.profile} meter ({line}) on {server.address}, {args.speed:g}x speed", file=out)
    if online:
        print(f"amsd demo: publishing to MQTT broker {host}:{port} under {DEMO_PREFIX}/", file=out)
        print(f"           watch with: mosquitto_sub -h {host} -p {port} -t '{DEMO_PREFIX}/#' -v", file=out)
        daemon = Daemon(config, observer=printer.show)
    else:
        print(
            f"amsd demo: no MQTT broker reachable at {host}:{port}, so nothing is published; "
            "this is what amsd would publish:",
            file=out,
        )
        daemon = Daemon(config, publisher=PrintingSink(printer))
    print("", file=out, flush=True)
    started = time.monotonic()
    runner = asyncio.create_task(daemon.run())
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(runner), args.duration or None)
    daemon.request_stop()
    code = await runner
    await server.stop()
    readings = sum(p.counters["frames_ok"] for p in daemon.pipelines)
    errors = sum(p.counters["crc_errors"] + p.counters["decrypt_errors"] for p in daemon.pipelines)
    elapsed = time.monotonic() - started
    print(
        f"\namsd demo: {server.frames_sent} messages sent by the meter, {readings} readings decoded, "
        f"{errors} errors, {printer.count} MQTT messages in {elapsed:.0f} s"
        + ("" if online else " (printed, not published)"),
        file=out,
    )
    shutil.rmtree(state_dir, ignore_errors=True)
    return code
