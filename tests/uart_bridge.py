"""Test helpers: a UART model and an RFC 2217 bridge that serves a meter through it.

A pty cannot do parity and a TCP socket has no framing at all, so neither can show what a reader
set to the wrong baud rate or parity really receives. `uart_receive` models it: the meter's bytes
become a bit stream (start bit, data bits LSB first, parity, stop bits; idle between bursts), and a
receiver with other settings samples that stream at the centres of its own bits, hunting for a
falling edge after each stop bit and rejecting a start bit that is high at its centre. Like Linux
with pyserial's settings (INPCK off, no PARMRK) every sampled character is delivered, framing and
parity errors included; a break comes out as 0x00.

`Rfc2217UartBridge` is a minimal ser2net `telnet(rfc2217)` stand-in: it negotiates COM-PORT-OPTION
with pyserial's own server-side state machine (`serial.rfc2217.PortManager`), relays the bytes of an
upstream simulator (socket://) and passes every chunk through `uart_receive` with the framing the
client last set. So `rfc2217://` detection meets the same garbage a real adapter would produce.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

import serial
from serial import rfc2217


@dataclass(frozen=True, slots=True)
class Framing:
    baudrate: int
    bytesize: int = 8
    parity: str = "N"
    stopbits: int = 1

    @classmethod
    def parse(cls, text: str) -> Framing:
        """`"2400 8E1"` -> Framing(2400, 8, "E", 1)."""
        baud, frame = text.split()
        return cls(int(baud), int(frame[0]), frame[1], int(frame[2]))


def _line_bits(data: bytes, framing: Framing) -> bytes:
    """The line levels (1 = mark/idle), one per bit time, for `data` sent back to back."""
    levels = bytearray(b"\x01")  # idle before the burst, so the first start bit is an edge
    mask = (1 << framing.bytesize) - 1
    for byte in data:
        value = byte & mask
        levels.append(0)
        levels.extend((value >> bit) & 1 for bit in range(framing.bytesize))
        if framing.parity != "N":
            ones = value.bit_count() & 1
            levels.append(ones if framing.parity == "E" else ones ^ 1)
        levels.extend(b"\x01" * framing.stopbits)
    return bytes(levels)


def uart_receive(data: bytes, sent: Framing, receiver: Framing) -> bytes:
    """What a UART set to `receiver` delivers when `data` is transmitted with `sent` (see module doc)."""
    if sent == receiver:
        return data
    levels = _line_bits(data, sent)
    size = len(levels)
    ratio = sent.baudrate / receiver.baudrate  # transmitter bit times per receiver bit time
    frame_bits = 1 + receiver.bytesize + (receiver.parity != "N") + receiver.stopbits

    def level(at: float) -> int:
        index = int(at)
        return levels[index] if index < size else 1

    out = bytearray()
    position = 0
    while (edge := levels.find(b"\x01\x00", position)) >= 0:
        start = edge + 1.0
        if level(start + 0.5 * ratio):  # a glitch shorter than half a receiver bit: no start bit
            position = edge + 1
            continue
        value = 0
        for bit in range(receiver.bytesize):
            value |= level(start + (1.5 + bit) * ratio) << bit
        out.append(value)
        # Hunt for the next start bit from the (last) stop bit sample on.
        position = max(edge + 1, int(start + (frame_bits - 0.5) * ratio))
        if position >= size:
            break
    return bytes(out)


class _Connection:
    """What PortManager writes its telnet answers to."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer

    def write(self, data: bytes) -> None:
        if not self._writer.is_closing():
            self._writer.write(data)


class Rfc2217UartBridge:
    """An RFC 2217 server on 127.0.0.1 relaying `upstream` (socket://host:port) as a meter with
    framing `meter`. `address` is the `rfc2217://` URL; `settings_seen` lists each client's framing."""

    def __init__(self, upstream: str, meter: Framing) -> None:
        host, _, port = upstream.removeprefix("socket://").rpartition(":")
        self._upstream = (host.strip("[]"), int(port))
        self.meter = meter
        self.address = ""
        self.settings_seen: list[Framing] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> Rfc2217UartBridge:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.address = f"rfc2217://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)

    async def __aenter__(self) -> Rfc2217UartBridge:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        port: Any = serial.serial_for_url("loop://", baudrate=9600)  # holds the framing the client sets
        manager = rfc2217.PortManager(port, _Connection(writer))
        relay: asyncio.Task[None] | None = None
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._upstream)
            relay = asyncio.create_task(self._relay(up_reader, writer, port))
            while data := await reader.read(4096):
                for _ in manager.filter(data):
                    pass  # bytes for the meter: a meter ignores them
            up_writer.close()
        except (ConnectionError, OSError):
            pass
        finally:
            if relay is not None:
                relay.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await relay
            writer.close()
            port.close()
            self._tasks.discard(task)

    async def _relay(self, upstream: asyncio.StreamReader, writer: asyncio.StreamWriter, port: Any) -> None:
        seen: Framing | None = None
        while chunk := await upstream.read(4096):
            framing = Framing(port.baudrate, port.bytesize, port.parity, int(port.stopbits))
            if framing != seen:
                seen = framing
                self.settings_seen.append(framing)
            received = uart_receive(chunk, self.meter, framing)
            if received and not writer.is_closing():
                writer.write(received.replace(b"\xff", b"\xff\xff"))  # telnet IAC escaping
        writer.close()
