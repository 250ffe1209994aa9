"""`amsd simulate`: a simulated meter on a pty or a TCP port, with real frame timing.

The asyncio API (`serve_tcp`, `serve_pty`, `SimServer`) is what tests and `amsd demo` use; the
command is a thin wrapper around it.

Timing: messages leave on the profile's cadence and bytes are paced at the line's baud rate
(10 or 11 bits per byte), both divided by `speed`, in chunks of 16-64 bytes so that readers see
frames arrive in pieces like on a real serial line. `pacing=False` writes each message at once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import os
import random
import re
import signal
import sys
import termios
import tty
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final, Self

from amsd.sim.meters import PROFILES, ExpectedValue, MeterSimulator, SimFrame

__all__ = [
    "FrameRecord",
    "ReplayServer",
    "SimServer",
    "parse_hex_key",
    "serve_pty",
    "serve_replay",
    "serve_tcp",
    "simulate_command",
]

EXIT_OK: Final = 0
EXIT_RUNTIME: Final = 1
EXIT_USAGE: Final = 2

# Garbage inserted between frames (--noise) never contains a byte that starts or ends a frame, so a
# message not marked corrupted must decode and a corrupted one must not.
_FRAME_BYTES: Final = frozenset(b"\x7e\x68\x16\x2f\x21\xdb\x0f\xe0\xe6\r\n")
_GARBAGE_ALPHABET: Final = bytes(b for b in range(256) if b not in _FRAME_BYTES)
# A flipped byte must not become a DSMR delimiter either: `!` + line end would end a telegram early
# with "no CRC", which decoders accept.
_FLIP_FORBIDDEN: Final = frozenset(b"!/\r\n")
# A slow TCP client is dropped rather than buffered without bound.
_MAX_CLIENT_BACKLOG: Final = 256 * 1024


@dataclass(slots=True)
class FrameRecord:
    """What was sent: one message, its expected values, and whether it was deliberately corrupted."""

    index: int
    at: float
    list_name: str
    meter_time: datetime
    meter_id: str
    encrypted: bool
    corrupted: bool
    data: bytes
    expected: dict[str, ExpectedValue]
    invocation_counter: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "at": self.at,
            "list": self.list_name,
            "meter_time": self.meter_time.isoformat(),
            "meter_id": self.meter_id,
            "encrypted": self.encrypted,
            "corrupted": self.corrupted,
            "bytes": len(self.data),
            "hex": self.data.hex(),
            "invocation_counter": self.invocation_counter,
            "expected": {obis: {"value": v.value, "unit": v.unit} for obis, v in self.expected.items()},
        }


# ------------------------------------------------------------------------------------ outputs


class _Output(ABC):
    """Where the byte stream goes."""

    address: str

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    def write(self, data: bytes) -> int:
        """Send now, never block; returns the bytes dropped (full buffers)."""

    @abstractmethod
    async def drop(self) -> None:
        """Break the line (close connections / the pty) and make it available again."""

    async def wait_reader(self) -> None:  # noqa: B027 - optional hook
        """Return once someone listens (TCP: a client connected)."""

    async def drain(self, timeout: float) -> None:  # noqa: B027 - optional hook
        """Give readers up to `timeout` seconds to take what was written."""

    @abstractmethod
    async def close(self) -> None: ...


class _TcpOutput(_Output):
    """Serve the stream to every connected TCP client, like ser2net's raw mode."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.address = ""
        self.clients: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self._connected = asyncio.Event()
        self.connections = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._on_client, self.host, self.port)
        sockname = self._server.sockets[0].getsockname()
        self.port = int(sockname[1])
        host = self.host if ":" not in self.host else f"[{self.host}]"
        self.address = f"socket://{host}:{self.port}"

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.clients.add(writer)
        self.connections += 1
        self._connected.set()
        try:
            while await reader.read(4096):
                pass  # meters ignore what is sent to them
        except (ConnectionError, OSError):
            pass
        finally:
            self.clients.discard(writer)
            writer.close()

    def write(self, data: bytes) -> int:
        dropped = 0
        for writer in list(self.clients):
            if writer.is_closing():
                self.clients.discard(writer)
            elif writer.transport.get_write_buffer_size() > _MAX_CLIENT_BACKLOG:
                self.clients.discard(writer)
                writer.transport.abort()
                dropped += len(data)
            else:
                writer.write(data)
        return dropped

    async def wait_reader(self) -> None:
        await self._connected.wait()

    async def drain(self, timeout: float) -> None:
        writers = [w for w in self.clients if not w.is_closing()]
        if writers:
            with contextlib.suppress(TimeoutError, ConnectionError, OSError):
                await asyncio.wait_for(asyncio.gather(*(w.drain() for w in writers)), timeout)

    async def drop(self) -> None:
        for writer in list(self.clients):
            writer.close()
        self.clients.clear()

    async def close(self) -> None:
        await self.drop()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)


class _PtyOutput(_Output):
    """Write to the master side of a pseudo-terminal; readers open the slave path.

    The simulator keeps the slave open itself so the path stays valid before a reader arrives and
    between reader restarts; the slave is put in raw mode so no byte (0x11, 0x13, CR) is eaten or
    translated. Note that a pty cannot do parity or 7 data bits: readers must open it as 8N1.
    `link` is a symlink kept pointing at the current slave, stable across `drop()`.
    """

    def __init__(self, link: str | None, on_reopen: Callable[[str], None] | None) -> None:
        self.link = Path(link) if link else None
        self.on_reopen = on_reopen
        self.master = -1
        self.slave = -1
        self.address = ""

    async def start(self) -> None:
        self._open()

    def _open(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)
        os.set_blocking(master, False)
        self.master, self.slave = master, slave
        self.address = os.ttyname(slave)
        if self.link is not None:
            tmp = self.link.with_name(self.link.name + ".tmp")
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            tmp.symlink_to(self.address)
            tmp.replace(self.link)

    def _close_fds(self) -> None:
        for fd in (self.master, self.slave):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.master = self.slave = -1

    def write(self, data: bytes) -> int:
        if self.master < 0:
            return len(data)
        try:
            written = os.write(self.master, data)
        except BlockingIOError:
            return len(data)  # nobody is reading and the pty buffer is full: a meter does not wait
        except OSError:
            return len(data)
        return len(data) - written

    def unread(self) -> int:
        if self.slave < 0:
            return 0
        buf = bytearray(4)
        try:
            fcntl.ioctl(self.slave, termios.FIONREAD, buf)
        except OSError:
            return 0
        return int.from_bytes(buf, sys.byteorder)

    async def drain(self, timeout: float) -> None:
        # Poll the slave's input queue: a pty has no event for "the reader caught up".
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.unread() and loop.time() < deadline:
            await asyncio.sleep(0.02)

    async def drop(self) -> None:
        self._close_fds()
        self._open()
        if self.on_reopen is not None:
            self.on_reopen(self.address)

    async def close(self) -> None:
        self._close_fds()
        if self.link is not None:
            with contextlib.suppress(OSError):
                if self.link.is_symlink():
                    self.link.unlink()


# ------------------------------------------------------------------------------------ server


class _LineServer:
    """What a simulated meter and a replay share: an output line, a sending task, `finished`."""

    def __init__(self, output: _Output) -> None:
        self._output = output
        self._task: asyncio.Task[None] | None = None
        self.finished = asyncio.Event()
        self.error: BaseException | None = None

    @property
    def address(self) -> str:
        """`socket://host:port` or the pty slave path."""
        return self._output.address

    async def stop(self) -> None:
        """Stop sending and close the line. Safe to call more than once."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.finished.set()
        await self._output.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class SimServer(_LineServer):
    """A running simulated meter. Create it with `serve_tcp` or `serve_pty`; stop it with `stop()`.

    Counters: `frames_sent` (messages, each possibly several link frames), `frames_corrupted`,
    `bytes_sent`, `bytes_dropped` (nobody reading), `garbage_bytes`, `drops` (line breaks).
    `records` holds the last `record_limit` messages sent with their expected values (bounded so a
    simulator left running does not grow; `FrameRecord.index` counts from the first message).
    """

    def __init__(
        self,
        simulator: MeterSimulator,
        output: _Output,
        *,
        speed: float = 1.0,
        pacing: bool = True,
        noise: float = 0.0,
        drop_every: int = 0,
        frames: int = 0,
        wait_for_reader: bool = False,
        noise_seed: int | None = None,
        record_limit: int = 10_000,
    ) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        if not 0.0 <= noise <= 1.0:
            raise ValueError("noise must be a probability between 0 and 1")
        super().__init__(output)
        self.simulator = simulator
        self.speed = speed
        self.pacing = pacing
        self.noise = noise
        self.drop_every = drop_every
        self.max_frames = frames
        self.wait_for_reader = wait_for_reader
        self._rng = random.Random(noise_seed)
        self.frames_sent = 0
        self.frames_corrupted = 0
        self.bytes_sent = 0
        self.bytes_dropped = 0
        self.garbage_bytes = 0
        self.drops = 0
        self.records: deque[FrameRecord] = deque(maxlen=record_limit)
        self._progress = asyncio.Event()
        self._wire_free = 0.0
        line = simulator.line
        self.byte_time = line.bits_per_byte / line.baudrate / speed
        # About 20 ms of line time per write, within 16..64 bytes.
        self.chunk_size = max(16, min(64, int(0.02 / self.byte_time)))

    @property
    def profile(self) -> str:
        return self.simulator.name

    async def _start(self) -> None:
        await self._output.start()
        self._task = asyncio.create_task(self._run(), name=f"amsd-simulate-{self.profile}")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            if self.wait_for_reader:
                await self._output.wait_reader()
            t0 = loop.time()
            self._wire_free = t0
            while self.max_frames <= 0 or self.frames_sent < self.max_frames:
                frame = self.simulator.next_frame()
                delay = t0 + frame.at / self.speed - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                await self._send_frame(frame)
                done = 0 < self.max_frames <= self.frames_sent
                if self.drop_every > 0 and self.frames_sent % self.drop_every == 0 and not done:
                    await self._output.drop()
                    self.drops += 1
            # The meter is done (--frames): let readers take the rest, then hang up the line.
            await self._output.drain(2.0)
            await self._output.close()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # surfaced through .error and the finished event
            self.error = exc
        finally:
            self.finished.set()
            self._notify()

    async def _send_frame(self, frame: SimFrame) -> None:
        data = frame.data
        corrupted = False
        garbage = b""
        if self.noise > 0.0:
            rng = self._rng
            if rng.random() < self.noise:
                data = self._flip_byte(data)
                corrupted = True
            if rng.random() < self.noise / 2:
                garbage = bytes(rng.choice(_GARBAGE_ALPHABET) for _ in range(rng.randint(1, 24)))
        if garbage:
            await self._send(garbage)
            self.garbage_bytes += len(garbage)
        await self._send(data)
        self.frames_sent += 1
        self.frames_corrupted += corrupted
        self.records.append(
            FrameRecord(
                index=self.frames_sent - 1,
                at=frame.at,
                list_name=frame.list_name,
                meter_time=frame.meter_time,
                meter_id=frame.meter_id,
                encrypted=frame.encrypted,
                corrupted=corrupted,
                data=data,
                expected=frame.expected,
                invocation_counter=frame.invocation_counter,
            )
        )
        self._notify()

    def _flip_byte(self, data: bytes) -> bytes:
        # Flip a byte that a checksum covers: inside the first link frame, never its flags or stop
        # byte (decoders rightly tolerate a damaged closing flag), so the loss is certain.
        rng = self._rng
        first = data[0]
        if first == 0x7E and len(data) > 3:
            last = ((data[1] & 0x07) << 8) | data[2]  # bytes between the flags: 1..length
        elif first == 0x68 and len(data) > 6:
            last = data[1] + 4  # up to and including the checksum
        elif first == 0x2F:
            last = data.rfind(b"!") - 1  # CRC-covered text, not the CRC digits
        else:
            last = len(data) - 1
        position = rng.randint(1, max(1, min(last, len(data) - 1)))
        original = data[position]
        while True:
            flipped = original ^ rng.randrange(1, 256)
            if flipped not in _FLIP_FORBIDDEN:
                break
        return data[:position] + bytes((flipped,)) + data[position + 1 :]

    async def _send(self, data: bytes) -> None:
        if not self.pacing:
            self.bytes_dropped += self._output.write(data)
            self.bytes_sent += len(data)
            return
        loop = asyncio.get_running_loop()
        size = self.chunk_size
        for offset in range(0, len(data), size):
            piece = data[offset : offset + size]
            self.bytes_dropped += self._output.write(piece)
            self.bytes_sent += len(piece)
            # The wire is busy until this piece has been clocked out; never faster than the baud rate.
            self._wire_free = max(self._wire_free, loop.time()) + len(piece) * self.byte_time
            delay = self._wire_free - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)

    def _notify(self) -> None:
        self._progress.set()
        self._progress = asyncio.Event()

    async def wait_frames(self, count: int) -> None:
        """Return once `count` messages were sent (or the simulator finished). Bound it with wait_for."""
        while self.frames_sent < count and not self.finished.is_set():
            await self._progress.wait()

    def report(self) -> dict[str, Any]:
        line = self.simulator.line
        return {
            "profile": self.profile,
            "address": self.address,
            "line": {
                "baudrate": line.baudrate,
                "bytesize": line.bytesize,
                "parity": line.parity,
                "stopbits": line.stopbits,
            },
            "encrypted": self.simulator.encrypted,
            "speed": self.speed,
            "frames_sent": self.frames_sent,
            "frames_corrupted": self.frames_corrupted,
            "bytes_sent": self.bytes_sent,
            "bytes_dropped": self.bytes_dropped,
            "garbage_bytes": self.garbage_bytes,
            "drops": self.drops,
            "frames": [record.to_json() for record in self.records],
        }

    def summary(self) -> str:
        return (
            f"amsd simulate: {self.profile}: {self.frames_sent} frames sent "
            f"({self.frames_corrupted} corrupted), {self.bytes_sent} bytes, {self.drops} line drops"
        )


def _simulator(
    profile: str,
    encryption_key: bytes | None,
    authentication_key: bytes | None,
    encrypt: bool | None,
    seed: int | None,
    start: datetime | None,
) -> MeterSimulator:
    return MeterSimulator(
        profile,
        encryption_key=encryption_key,
        authentication_key=authentication_key,
        encrypt=encrypt,
        seed=seed,
        start=start,
    )


async def serve_tcp(
    profile: str,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    speed: float = 1.0,
    pacing: bool = True,
    encryption_key: bytes | None = None,
    authentication_key: bytes | None = None,
    encrypt: bool | None = None,
    noise: float = 0.0,
    drop_every: int = 0,
    frames: int = 0,
    wait_for_client: bool = False,
    seed: int | None = 1,
    start: datetime | None = None,
) -> SimServer:
    """Start a simulated meter served on TCP (port 0 = any free port; see `SimServer.address`).

    `wait_for_client=True` holds the first message until a client connects, so tests see every frame.
    """
    server = SimServer(
        _simulator(profile, encryption_key, authentication_key, encrypt, seed, start),
        _TcpOutput(host, port),
        speed=speed,
        pacing=pacing,
        noise=noise,
        drop_every=drop_every,
        frames=frames,
        wait_for_reader=wait_for_client,
        noise_seed=seed,
    )
    await server._start()
    return server


async def serve_pty(
    profile: str,
    *,
    speed: float = 1.0,
    pacing: bool = True,
    encryption_key: bytes | None = None,
    authentication_key: bytes | None = None,
    encrypt: bool | None = None,
    noise: float = 0.0,
    drop_every: int = 0,
    frames: int = 0,
    link: str | None = None,
    on_reopen: Callable[[str], None] | None = None,
    seed: int | None = 1,
    start: datetime | None = None,
) -> SimServer:
    """Start a simulated meter on a new pty; `SimServer.address` is the slave path to open (8N1)."""
    server = SimServer(
        _simulator(profile, encryption_key, authentication_key, encrypt, seed, start),
        _PtyOutput(link, on_reopen),
        speed=speed,
        pacing=pacing,
        noise=noise,
        drop_every=drop_every,
        frames=frames,
        noise_seed=seed,
    )
    await server._start()
    return server


# ------------------------------------------------------------------------------------ replay


class ReplayServer(_LineServer):
    """Plays recorded chunks (an `amsd capture` file) at their original offsets divided by `speed`.

    Each chunk is written as it was read, so a reader sees the same bytes in about the same pieces
    and with the same gaps. When the last chunk is out the line is drained and closed (`finished`).
    """

    def __init__(
        self,
        chunks: list[tuple[float, bytes]],
        output: _Output,
        *,
        speed: float = 1.0,
        wait_for_reader: bool = False,
    ) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        super().__init__(output)
        self.chunks = chunks
        self.speed = speed
        self.wait_for_reader = wait_for_reader
        self.chunks_sent = 0
        self.bytes_sent = 0
        self.bytes_dropped = 0

    async def _start(self) -> None:
        await self._output.start()
        self._task = asyncio.create_task(self._run(), name="amsd-simulate-replay")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            if self.wait_for_reader:
                await self._output.wait_reader()
            t0 = loop.time()
            first = self.chunks[0][0] if self.chunks else 0.0
            for offset, chunk in self.chunks:
                delay = t0 + (offset - first) / self.speed - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                self.bytes_dropped += self._output.write(chunk)
                self.bytes_sent += len(chunk)
                self.chunks_sent += 1
            await self._output.drain(2.0)
            await self._output.close()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # surfaced through .error and the finished event
            self.error = exc
        finally:
            self.finished.set()


async def serve_replay(
    chunks: list[tuple[float, bytes]],
    *,
    tcp: tuple[str, int] | None = None,
    link: str | None = None,
    speed: float = 1.0,
    wait_for_client: bool = False,
) -> ReplayServer:
    """Replay timed chunks on TCP (`tcp=(host, port)`) or on a new pty (default)."""
    output: _Output = _TcpOutput(*tcp) if tcp is not None else _PtyOutput(link, None)
    server = ReplayServer(chunks, output, speed=speed, wait_for_reader=wait_for_client and tcp is not None)
    await server._start()
    return server


async def _replay(args: argparse.Namespace, chunks: list[tuple[float, bytes]], header: dict[str, str]) -> int:
    tcp = _parse_tcp(args.tcp) if args.tcp else None
    server = await serve_replay(
        chunks,
        tcp=tcp,
        link=getattr(args, "link", None),
        speed=args.speed,
        wait_for_client=getattr(args, "wait_client", False),
    )
    _emit(server.address)
    duration = chunks[-1][0] - chunks[0][0] if chunks else 0.0
    _emit(
        json.dumps(
            {
                "event": "ready",
                "tcp" if tcp is not None else "pty": server.address,
                "replay": args.replay,
                "recorded_line": {k: header[k] for k in ("baudrate", "bytesize", "parity", "stopbits") if k in header},
                "chunks": len(chunks),
                "bytes": sum(len(chunk) for _, chunk in chunks),
                "duration_s": round(duration / args.speed, 3),
                "speed": args.speed,
            }
        )
    )
    await _serve_until_done(server.finished, server.stop)
    print(
        f"amsd simulate: replayed {server.chunks_sent} of {len(chunks)} chunks, {server.bytes_sent} bytes",
        file=sys.stderr,
        flush=True,
    )
    if server.error is not None:
        print(f"amsd simulate: {server.error}", file=sys.stderr)
        return EXIT_RUNTIME
    return EXIT_OK


def _replay_command(args: argparse.Namespace) -> int:
    from amsd.tools import CaptureFormatError, parse_capture  # lazy: only replays need it

    try:
        if args.speed <= 0:
            raise UsageError("--speed: must be positive")
        if args.tcp:
            _parse_tcp(args.tcp)  # a bad --tcp is reported before the file is read
        with open(args.replay, "rb") as handle:
            capture = parse_capture(handle.read())
    except UsageError as exc:
        print(f"amsd simulate: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"amsd simulate: cannot read {args.replay}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    except CaptureFormatError as exc:
        print(f"amsd simulate: --replay {args.replay}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return asyncio.run(_replay(args, capture.chunks, capture.header))
    except OSError as exc:
        print(f"amsd simulate: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_RUNTIME


# ------------------------------------------------------------------------------------ command

_KEY_NOISE: Final = re.compile(r"[\s:,\-]|0[xX]")


class UsageError(ValueError):
    """A bad option; the message names the option, never a secret value."""


def parse_hex_key(text: str, option: str) -> bytes:
    """16-byte key from hex; spaces, colons, commas, dashes and 0x prefixes are tolerated."""
    cleaned = _KEY_NOISE.sub("", text)
    if len(cleaned) != 32:
        raise UsageError(f"{option}: must be 32 hex characters (got {len(cleaned)})")
    try:
        return bytes.fromhex(cleaned)
    except ValueError:
        raise UsageError(f"{option}: must contain only hex digits") from None


def _parse_tcp(text: str) -> tuple[str, int]:
    host, _, port_text = text.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    try:
        port = int(port_text)
    except ValueError:
        raise UsageError(f"--tcp: expected [HOST:]PORT, got {text!r}") from None
    if not 0 <= port <= 65535:
        raise UsageError("--tcp: port must be 0..65535")
    return host, port


def _list_profiles() -> str:
    rows = []
    for name, cls in PROFILES.items():
        encryption = {"default": "encrypted by default", "optional": "--key to encrypt", "never": "plain"}
        rows.append(
            f"{name:<12} {cls.line!s:<11} every {cls.period:<4g}s {cls.description} "
            f"[{encryption[cls.encryption]}]"
        )
    return "\n".join(rows)


def simulate_command(args: argparse.Namespace) -> int:
    """Entry point of `amsd simulate` (exit 0 ok / on SIGTERM or SIGINT, 2 usage error, 1 failure)."""
    if getattr(args, "list_profiles", False):
        print(_list_profiles())
        return EXIT_OK
    if getattr(args, "replay", None):
        return _replay_command(args)
    try:
        options = _options(args)
    except UsageError as exc:
        print(f"amsd simulate: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return asyncio.run(_simulate(args, options))
    except OSError as exc:
        print(f"amsd simulate: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_RUNTIME


def _options(args: argparse.Namespace) -> dict[str, Any]:
    if args.profile not in PROFILES:
        raise UsageError(f"--profile: unknown profile {args.profile!r} (known: {', '.join(PROFILES)})")
    if args.speed <= 0:
        raise UsageError("--speed: must be positive")
    if not 0.0 <= args.noise <= 1.0:
        raise UsageError("--noise: must be a probability between 0 and 1")
    if args.frames < 0 or args.drop_every < 0:
        raise UsageError("--frames and --drop-every must not be negative")
    encrypt: bool | None = None
    encryption_key = None
    key_text = (args.key or "").strip()
    if key_text.lower() in ("off", "none", "plain"):
        encrypt = False
    elif key_text:
        encryption_key = parse_hex_key(key_text, "--key")
    authentication_key = parse_hex_key(args.auth_key, "--auth-key") if args.auth_key else None
    if PROFILES[args.profile].encryption == "never" and (encryption_key or authentication_key):
        raise UsageError(f"--key: profile {args.profile} does not support encryption")
    options: dict[str, Any] = {
        "speed": args.speed,
        "pacing": not args.no_pacing,
        "encryption_key": encryption_key,
        "authentication_key": authentication_key,
        "encrypt": encrypt,
        "noise": args.noise,
        "drop_every": args.drop_every,
        "frames": args.frames,
        "seed": getattr(args, "seed", None),
    }
    if args.tcp:
        options["tcp"] = _parse_tcp(args.tcp)
    return options


def _emit(line: str) -> None:
    print(line, flush=True)


async def _simulate(args: argparse.Namespace, options: dict[str, Any]) -> int:
    tcp = options.pop("tcp", None)
    if tcp is not None:
        server = await serve_tcp(
            args.profile, tcp[0], tcp[1], wait_for_client=getattr(args, "wait_client", False), **options
        )
        kind = "tcp"
    else:
        server = await serve_pty(
            args.profile,
            link=getattr(args, "link", None),
            on_reopen=lambda path: _emit(json.dumps({"event": "reopened", "pty": path})),
            **options,
        )
        kind = "pty"
    line = server.simulator.line
    # First line: the address alone (machine-readable); then one JSON line with the details.
    _emit(server.address)
    _emit(
        json.dumps(
            {
                "event": "ready",
                kind: server.address,
                "profile": server.profile,
                "baudrate": line.baudrate,
                "bytesize": line.bytesize,
                "parity": line.parity if kind == "tcp" else "N",
                "stopbits": line.stopbits,
                "meter_parity": line.parity,
                "encrypted": server.simulator.encrypted,
                "speed": server.speed,
            }
        )
    )
    await _serve_until_done(server.finished, server.stop)
    if args.report:
        Path(args.report).write_text(json.dumps(server.report(), indent=1) + "\n")
    print(server.summary(), file=sys.stderr, flush=True)
    if server.error is not None:
        print(f"amsd simulate: {server.error}", file=sys.stderr)
        return EXIT_RUNTIME
    return EXIT_OK


async def _serve_until_done(finished: asyncio.Event, stop_server: Callable[[], Awaitable[None]]) -> None:
    """Serve until the server has sent everything or SIGTERM/SIGINT arrives, then stop it."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    stop_wait = asyncio.create_task(stop.wait())
    finished_wait = asyncio.create_task(finished.wait())
    try:
        await asyncio.wait({stop_wait, finished_wait}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop_wait.cancel()
        finished_wait.cancel()
        await stop_server()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
