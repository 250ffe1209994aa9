"""`amsd detect PORT` (find the line settings and frame format) and `amsd capture PORT` (record raw bytes).

Both read the line through `amsd.reader`, so they behave exactly like the daemon (exclusive open,
socket:// bridges, reopen on unplug).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO

from amsd.reader import (
    LineReader,
    LineSettings,
    ProbeAttempt,
    ReaderState,
    auto_candidates,
    probe_line_settings,
)

if TYPE_CHECKING:
    from amsd.decoder import Event

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_USAGE = 2

# First byte of a frame -> what the meter speaks.
_FORMATS = {
    0x7E: "HDLC (IEC 62056-46) with DLMS/COSEM",
    0x68: "wired M-Bus long frames with DLMS/COSEM",
    0x2F: "DSMR / IEC 62056-21 P1 text telegrams",
    0xDB: "DLMS general-glo-ciphering without link layer",
    0xE6: "DLMS with LLC header, no HDLC",
    0x0F: "bare DLMS data-notification APDUs",
    0xE0: "DLMS general block transfer, no HDLC",
}


# System title prefixes (FLAG manufacturer ids) seen on HAN ports.
_MAKERS = {
    "KAM": "Kamstrup",
    "KFM": "Kaifa",
    "LGZ": "Landis+Gyr",
    "SAG": "Sagemcom",
    "ISK": "Iskra",
    "AID": "Aidon",
}


def _quiet_reader_log() -> None:
    # The commands print their own progress; the reader's warnings would say the same twice.
    logging.getLogger("amsd.reader").setLevel(logging.ERROR)


def _maker(system_title_hex: str) -> str | None:
    try:
        prefix = bytes.fromhex(system_title_hex[:6]).decode("ascii")
    except ValueError:
        return None
    return _MAKERS.get(prefix.upper())


# ------------------------------------------------------------------------------------ detect
@dataclass(slots=True)
class Finding:
    """The first good frame seen on a line setting."""

    frame_format: str
    encrypted: bool
    needs_key: bool
    meter_id: str | None = None
    model: str | None = None
    manufacturer: str | None = None
    list_name: str | None = None
    system_title: str | None = None
    values: int = 0


class _Sniffer:
    """Feeds one line setting's bytes to a fresh decoder; a reading or a clean `no_key` proves it.

    A `no_key`/`wrong_key` error counts: the link layer checked out (CRCs), only the key is missing,
    and the point of `detect` is to find the line settings before the user has the key.
    """

    def __init__(self) -> None:
        from amsd.decoder import Decoder  # lazy: only needed once a probe starts

        self._decoder = Decoder()
        self.finding: Finding | None = None
        self.errors: Counter[str] = Counter()

    def __call__(self, chunk: bytes) -> bool:
        if self.finding is not None:
            return True
        for event in self._decoder.feed(chunk):
            self.finding = _finding(event)
            if self.finding is not None:
                return True
            if event.event == "undecoded":
                self.errors[f"{event.layer}:{event.error}"] += 1
        return False


def _frame_format(raw: bytes) -> str:
    return _FORMATS.get(raw[0], "unrecognised framing") if raw else "unknown"


def _finding(event: Event) -> Finding | None:
    from amsd.decoder import NO_KEY, WRONG_KEY

    if event.event == "reading":
        return Finding(
            frame_format="DSMR / IEC 62056-21 P1 text telegrams"
            if event.protocol == "dsmr" and event.raw[:1] == b"/"
            else _frame_format(event.raw),
            encrypted=event.system_title is not None,
            needs_key=False,
            meter_id=event.meter_id,
            model=event.model,
            manufacturer=event.manufacturer,
            list_name=event.list,
            system_title=event.system_title,
            values=len(event.values),
        )
    if event.layer == "cipher" and event.error in (NO_KEY, WRONG_KEY):
        return Finding(
            frame_format=_frame_format(event.raw),
            encrypted=True,
            needs_key=True,
            system_title=event.system_title,
        )
    return None


def _progress_line(attempt: ProbeAttempt, sniffer: _Sniffer | None) -> str:
    what = "socket bridge" if attempt.settings.is_socket else attempt.settings.line
    if attempt.error is not None:
        return f"  {what:<12} {attempt.error}"
    if attempt.accepted:
        return f"  {what:<12} {attempt.bytes_received} bytes, valid frame"
    text = f"  {what:<12} {attempt.bytes_received} bytes, no valid frame"
    if sniffer is not None and sniffer.errors:
        top = ", ".join(f"{count} x {name}" for name, count in sniffer.errors.most_common(3))
        text += f" ({top})"
    return text


def _print_result(settings: LineSettings, finding: Finding, out: TextIO) -> None:
    print(f"Found: {settings}", file=out)
    print(f"  format:    {finding.frame_format}", file=out)
    if finding.encrypted:
        state = "needs encryption_key (and maybe authentication_key)" if finding.needs_key else "decrypted"
        print(f"  encrypted: yes, {state}", file=out)
        if finding.system_title:
            maker = _maker(finding.system_title)
            suffix = f" ({maker})" if maker else ""
            print(f"  system title: {finding.system_title}{suffix}", file=out)
    for label, value in (
        ("meter id", finding.meter_id),
        ("manufacturer", finding.manufacturer),
        ("model", finding.model),
        ("list", finding.list_name),
    ):
        if value:
            print(f"  {label}: {value}", file=out)
    if finding.values:
        print(f"  values in first frame: {finding.values}", file=out)
    print("\nConfiguration for /etc/amsd/amsd.toml:\n", file=out)
    print("[[meters]]", file=out)
    print('name = "main"', file=out)
    print(f'port = "{settings.port}"', file=out)
    if not settings.is_socket:
        print(f"baudrate = {settings.baudrate}", file=out)
        print(f'parity = "{settings.parity}"', file=out)
        if settings.bytesize != 8:
            print(f"bytesize = {settings.bytesize}", file=out)
        if settings.stopbits != 1:
            print(f"stopbits = {settings.stopbits}", file=out)
    if finding.needs_key:
        print('encryption_key = "<32 hex characters from your grid operator>"', file=out)


def _print_hints(port: str, attempts: list[ProbeAttempt], seconds: float, out: TextIO) -> None:
    print("No valid frame found.", file=out)
    total = sum(attempt.bytes_received for attempt in attempts)
    opened = [attempt for attempt in attempts if attempt.error is None or attempt.bytes_received]
    hints: list[str] = []
    if not opened:
        hints.append("the port could not be opened with any setting (see the errors above)")
    elif total == 0:
        hints += [
            "no bytes arrived at all: check the cable and the adapter",
            "many grid operators must enable the HAN port first (ask them to open it)",
            "an RJ12 P1 port only sends while its data-request line (pin 2) is held at 5 V",
            f"meters push every 2-10 s; listen longer with --seconds (now {seconds:g})",
        ]
    else:
        hints += [
            "bytes arrived but never a valid frame: the baud rate, parity or signal polarity is wrong",
            "RJ12 P1 ports (DSMR, Sagemcom LU/AT, Aidon SE) send an INVERTED signal: use an adapter "
            "that inverts it, or invert it in the bridge",
            "M-Bus meters use 2400 baud, 8E1 (Aidon, Kaifa NO/SE) or 8N1 (Kamstrup, Kaifa PL, L+G AT)",
            "a bad or noisy cable gives CRC errors on every setting",
        ]
    if port.startswith("socket://"):
        hints.append("for a socket:// bridge the baud rate and parity are set on the bridge (ser2net, ESP)")
    for hint in hints:
        print(f"  - {hint}", file=out)


async def detect_line(
    port: str,
    *,
    seconds: float,
    candidates: list[LineSettings] | None = None,
    err: TextIO = sys.stderr,
) -> tuple[LineSettings | None, Finding | None, list[ProbeAttempt]]:
    """Probe the port; returns the accepted settings and what was found, or (None, None, attempts)."""
    sniffers: list[_Sniffer] = []

    def new_validator() -> _Sniffer:
        sniffers.append(_Sniffer())
        return sniffers[-1]

    def on_attempt(attempt: ProbeAttempt) -> None:
        print(_progress_line(attempt, sniffers[-1] if sniffers else None), file=err, flush=True)

    chosen = candidates if candidates is not None else auto_candidates(port)
    label = "the socket bridge" if port.startswith("socket://") else f"{len(chosen)} line settings"
    print(f"Listening on {port}: {label}, up to {seconds:g} s each", file=err, flush=True)
    report = await probe_line_settings(
        port, new_validator, candidates=chosen, seconds=seconds, on_attempt=on_attempt
    )
    if report.found is None:
        return None, None, report.attempts
    return report.found, sniffers[-1].finding, report.attempts


def detect_command(args: argparse.Namespace) -> int:
    port: str = args.port
    seconds: float = args.seconds
    if seconds <= 0:
        print("amsd detect: --seconds must be positive", file=sys.stderr)
        return EXIT_USAGE
    _quiet_reader_log()
    settings, finding, attempts = asyncio.run(detect_line(port, seconds=seconds))
    if settings is None or finding is None:
        _print_hints(port, attempts, seconds, sys.stdout)
        return EXIT_RUNTIME
    _print_result(settings, finding, sys.stdout)
    return EXIT_OK


# ------------------------------------------------------------------------------------ capture
async def capture_line(settings: LineSettings, path: str, *, seconds: float, err: TextIO = sys.stderr) -> int:
    """Record raw bytes from the line into `path` for `seconds` (or until SIGINT/SIGTERM).

    Returns the number of bytes written; raises OSError when the file cannot be written.
    """
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    write_errors: list[OSError] = []
    with open(path, "wb") as file:

        def on_data(chunk: bytes) -> None:
            try:
                file.write(chunk)
            except OSError as exc:  # disk full: stop rather than pretend to record
                write_errors.append(exc)
                done.set()

        def on_state(state: ReaderState, detail: str | None) -> None:
            if state == "open":
                print(
                    f"Recording {settings} for {seconds:g} s to {path} (Ctrl-C stops)", file=err, flush=True
                )
            elif state == "waiting_retry" and detail:
                print(f"  {settings.port}: {detail}; retrying", file=err, flush=True)

        reader = LineReader(settings, on_data, on_state=on_state, idle_timeout=None)
        handled: list[signal.Signals] = []
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, done.set)
                handled.append(signum)
        started = time.monotonic()
        reader.start()
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), seconds)
        finally:
            await reader.stop()
            for handled_signal in handled:
                loop.remove_signal_handler(handled_signal)
        elapsed = time.monotonic() - started
    if write_errors:
        raise write_errors[0]
    count = reader.bytes_read
    print(f"Wrote {count} bytes to {path} in {elapsed:.1f} s ({reader.opens} opens)", file=err)
    if count:
        print(f"Decode it with: amsd decode {path}", file=err)
    return count


def capture_command(args: argparse.Namespace) -> int:
    seconds: float = args.seconds
    if seconds <= 0:
        print("amsd capture: --seconds must be positive", file=sys.stderr)
        return EXIT_USAGE
    _quiet_reader_log()
    settings = LineSettings(
        args.port, args.baudrate, args.parity, getattr(args, "bytesize", 8), getattr(args, "stopbits", 1)
    )
    try:
        count = asyncio.run(capture_line(settings, args.output, seconds=seconds))
    except OSError as exc:
        print(f"amsd capture: cannot write {args.output}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_RUNTIME
    if count == 0:
        print(
            "Nothing received. Check the cable, that the HAN port is enabled, and the line settings "
            "(try `amsd detect PORT`).",
            file=sys.stderr,
        )
        return EXIT_RUNTIME
    return EXIT_OK
