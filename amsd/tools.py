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
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TextIO

from amsd.reader import (
    LineReader,
    LineSettings,
    ProbeAttempt,
    ReaderState,
    auto_candidates,
    load_line_settings,
    prefer,
    probe_line_settings,
    save_line_settings,
)

if TYPE_CHECKING:
    from amsd.decoder import Event
    from amsd.pipeline import MeterPipeline
    from amsd.runconfig import MeterSettings

log = logging.getLogger("amsd.detect")

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


# A frame whose link layer carries a checksum proves the line setting on its own; a bare APDU or a
# DSMR telegram without CRC does not: a wrong setting (8N1 read as 7E1 strips bit 7) can leave a
# bare 0F... APDU inside the garbage that still decodes. Those need company (see FrameSniffer).
_CHECKED_LINK = frozenset((0x7E, 0x68))
UNCHECKED_FRAMES_NEEDED: Final = 2


class FrameSniffer:
    """Validator for one line setting: feeds its bytes to a fresh decoder and says when they prove it.

    Proof is a frame with an integrity check (HDLC FCS, M-Bus checksum, DSMR CRC) that decodes or
    fails only for want of the key (`no_key`/`wrong_key`: the link layer checked out, and the point
    of detecting is to find the line before the user has the key). Frames without any check count
    only as `UNCHECKED_FRAMES_NEEDED` in a row with nothing undecodable between them. `finding`
    describes the proving frame; `errors` counts what failed (for the progress display).
    """

    def __init__(self, encryption_key: bytes | None = None, authentication_key: bytes | None = None) -> None:
        from amsd.decoder import Decoder  # lazy: only needed once a probe starts

        self._decoder = Decoder(encryption_key, authentication_key)
        self.finding: Finding | None = None
        self.errors: Counter[str] = Counter()
        self.frames = 0
        self._unchecked_run = 0

    def __call__(self, chunk: bytes) -> bool:
        if self.finding is not None:
            return True
        for event in self._decoder.feed(chunk):
            finding = _finding(event)
            if finding is None:
                if event.event == "undecoded":
                    self.errors[f"{event.layer}:{event.error}"] += 1
                self._unchecked_run = 0
                continue
            self.frames += 1
            if _has_checksum(event):
                self.finding = finding
                return True
            self._unchecked_run += 1
            if self._unchecked_run >= UNCHECKED_FRAMES_NEEDED:
                self.finding = finding
                return True
        return False


def _has_checksum(event: Event) -> bool:
    raw = event.raw
    if not raw:
        return False
    if raw[0] in _CHECKED_LINK:
        return True
    return event.event == "reading" and event.protocol == "dsmr" and event.crc_present is True


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


def _setting_label(settings: LineSettings) -> str:
    return "as the bridge sends it" if settings.is_socket else settings.line


def _progress_line(attempt: ProbeAttempt, sniffer: FrameSniffer | None) -> str:
    what = _setting_label(attempt.settings)
    if attempt.error is not None:
        return f"  {what:<22} {attempt.error}"
    if attempt.accepted:
        return f"  {what:<22} {attempt.bytes_received} bytes, valid frame"
    text = f"  {what:<22} {attempt.bytes_received} bytes, no valid frame"
    if sniffer is not None and sniffer.errors:
        top = ", ".join(f"{count} x {name}" for name, count in sniffer.errors.most_common(3))
        text += f" ({top})"
    return text


class _Progress:
    """The live line on a terminal: which setting, seconds left, bytes so far. Silent otherwise."""

    def __init__(self, out: TextIO, total: int, seconds: float) -> None:
        self._out = out
        self._live = out.isatty()
        self._total = total
        self._seconds = seconds
        self._task: asyncio.Task[None] | None = None

    def begin(self, index: int, attempt: ProbeAttempt) -> None:
        self.end()
        if self._live:
            self._task = asyncio.create_task(self._tick(index, attempt))

    async def _tick(self, index: int, attempt: ProbeAttempt) -> None:
        started = time.monotonic()
        spinner = "|/-\\"
        step = 0
        while True:
            left = max(0.0, self._seconds - (time.monotonic() - started))
            text = (
                f"  [{index}/{self._total}] {_setting_label(attempt.settings)}: listening, "
                f"{left:4.1f} s left, {attempt.bytes_received} bytes {spinner[step % 4]}"
            )
            self._out.write("\r" + text + "\033[K")
            self._out.flush()
            step += 1
            await asyncio.sleep(0.2)

    def end(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
            self._out.write("\r\033[K")
            self._out.flush()


def _toml_block(settings: LineSettings, finding: Finding) -> list[str]:
    lines = ["[[meters]]", 'name = "main"', f'port = "{settings.port}"']
    if settings.is_socket:
        lines.append("# socket://: baud rate and parity are set on the bridge, not here")
    else:
        lines += [f"baudrate = {settings.baudrate}", f'parity = "{settings.parity}"']
        if settings.bytesize != 8:
            lines.append(f"bytesize = {settings.bytesize}")
        if settings.stopbits != 1:
            lines.append(f"stopbits = {settings.stopbits}")
    if finding.needs_key:
        lines.append('encryption_key = "<32 hex characters from your grid operator>"')
        lines.append('# authentication_key = "<32 hex characters>"  # only if the operator gives you one')
    return lines


def _print_result(settings: LineSettings, finding: Finding, out: TextIO) -> None:
    if settings.is_socket:
        print(f"Found: {settings.port} (a raw TCP bridge)", file=out)
        print(
            "  line:      set on the bridge (ser2net, ESP); over plain TCP every baud rate and parity\n"
            "             read the same bytes, so amsd cannot and need not check them here",
            file=out,
        )
    else:
        print(f"Found: {settings}", file=out)
        print(f"  line:      {settings.line}", file=out)
    print(f"  format:    {finding.frame_format}", file=out)
    maker = _maker(finding.system_title) if finding.system_title else None
    if finding.encrypted:
        state = "needs encryption_key (and maybe authentication_key)" if finding.needs_key else "decrypted"
        print(f"  encrypted: yes, {state}", file=out)
    else:
        print("  encrypted: no", file=out)
    if finding.system_title:
        suffix = f" ({maker})" if maker else ""
        print(f"  system title: {finding.system_title}{suffix}", file=out)
    manufacturer = finding.manufacturer or maker
    for label, value in (
        ("meter id", finding.meter_id),
        ("manufacturer", manufacturer),
        ("model", finding.model),
        ("list", finding.list_name),
    ):
        if value:
            print(f"  {label}: {value}", file=out)
    if finding.values:
        print(f"  values in first frame: {finding.values}", file=out)
    if finding.needs_key:
        print(
            f"\nThe frames are encrypted. Ask your grid operator for the HAN port keys of the meter with "
            f"system title {finding.system_title or '(see above)'}.",
            file=out,
        )
    print("\nConfiguration for /etc/amsd/amsd.toml:\n", file=out)
    for line in _toml_block(settings, finding):
        print(line, file=out)


def _print_hints(port: str, attempts: list[ProbeAttempt], seconds: float, out: TextIO) -> None:
    print(
        f"No valid frame found on {port}: tried {len(attempts)} line setting(s) for {seconds:g} s each.",
        file=out,
    )
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
            f"meters push every 1-10 s; listen longer with --seconds (now {seconds:g})",
        ]
    else:
        hints += [
            "bytes arrived but never a valid frame: the baud rate, parity or signal polarity is wrong",
            "RJ12 P1 ports (DSMR, Sagemcom LU/AT, Aidon SE) send an INVERTED signal: use an adapter "
            "that inverts it, or invert it in the bridge",
            "M-Bus meters use 2400 baud, 8E1 (Aidon, Kaifa NO/SE) or 8N1 (Kamstrup, Kaifa PL, L+G AT)",
            "a bad or noisy cable gives CRC errors on every setting",
            f"a meter that pushes rarely needs a longer --seconds (now {seconds:g})",
        ]
    if port.startswith("socket://"):
        hints.append(
            "for a socket:// bridge the baud rate and parity are set on the bridge (ser2net, ESP): try "
            "2400 8E1, 2400 8N1 and 115200 8N1 there, or use rfc2217:// so that amsd can set them"
        )
    for hint in hints:
        print(f"  - {hint}", file=out)


async def detect_line(
    port: str,
    *,
    seconds: float,
    candidates: list[LineSettings] | None = None,
    err: TextIO = sys.stderr,
) -> tuple[LineSettings | None, Finding | None, list[ProbeAttempt]]:
    """Probe the port; returns the accepted settings and what was found, or (None, None, attempts).

    Progress goes to `err`: a live line when it is a terminal, one summary line per setting always.
    """
    sniffers: list[FrameSniffer] = []
    chosen = candidates if candidates is not None else auto_candidates(port)
    progress = _Progress(err, len(chosen), seconds)

    def new_validator() -> FrameSniffer:
        sniffers.append(FrameSniffer())
        return sniffers[-1]

    def on_start(attempt: ProbeAttempt) -> None:
        progress.begin(len(sniffers), attempt)

    def on_attempt(attempt: ProbeAttempt) -> None:
        progress.end()
        print(_progress_line(attempt, sniffers[-1] if sniffers else None), file=err, flush=True)

    if port.startswith("socket://"):
        label = "a raw TCP bridge (its line settings are set on the bridge)"
    else:
        label = f"{len(chosen)} line settings"
    print(f"Listening on {port}: {label}, up to {seconds:g} s each", file=err, flush=True)
    try:
        report = await probe_line_settings(
            port, new_validator, candidates=chosen, seconds=seconds, on_attempt=on_attempt, on_start=on_start
        )
    finally:
        progress.end()
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
    try:
        settings, finding, attempts = asyncio.run(detect_line(port, seconds=seconds))
    except ValueError as exc:  # a malformed socket:// or rfc2217:// address
        print(f"amsd detect: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if settings is None or finding is None:
        _print_hints(port, attempts, seconds, sys.stdout)
        return EXIT_RUNTIME
    _print_result(settings, finding, sys.stdout)
    return EXIT_OK


# ------------------------------------------------------------------------------------ daemon
def line_state_path(state_dir: Path, meter_name: str) -> Path:
    """Where `baudrate = "auto"` remembers a meter's detected setting (next to the outbox)."""
    return state_dir / f"line-{meter_name}.json"


def meter_line_reader(meter: MeterSettings, pipeline: MeterPipeline, state_dir: Path) -> LineReader:
    """The daemon's reader for one meter; with `baudrate`/`parity = "auto"` it detects the setting.

    Detection probes the candidates with `FrameSniffer` (the meter's keys included, so an encrypted
    meter proves the setting with a decrypted frame), tries the setting remembered in
    `line-<meter>.json` first (it is still verified: a frame must decode within the probe time), saves
    a newly found one, and probes again after `redetect_after_s` of bytes without a decoded frame.
    """
    baud_auto = meter.baudrate == "auto"
    # `baudrate = "auto"` alone detects the whole framing; an explicit parity pins that half.
    parity_auto = meter.parity == "auto" or (baud_auto and not meter.parity_given)
    fixed = LineSettings(
        meter.port,
        2400 if meter.baudrate == "auto" else int(meter.baudrate),
        "N" if meter.parity == "auto" else meter.parity,
        meter.bytesize,
        meter.stopbits,
    )
    common: dict[str, Any] = {
        "on_state": pipeline.on_state,
        "on_silent": pipeline.on_silent,
        "idle_timeout": meter.idle_timeout_s,
    }
    if not (baud_auto or parity_auto) or fixed.is_socket:
        # A socket:// bridge sets the framing itself: "auto" has nothing to choose from there.
        return LineReader(fixed, pipeline.on_data, **common)
    candidates = auto_candidates(
        meter.port,
        baudrate=None if baud_auto else fixed.baudrate,
        parity=None if parity_auto else fixed.parity,
    )
    path = line_state_path(state_dir, meter.name)
    remembered = load_line_settings(path, meter.port)
    if (
        remembered is not None
        and (baud_auto or remembered.baudrate == fixed.baudrate)
        and (parity_auto or remembered.parity == fixed.parity)
    ):
        candidates = prefer(candidates, remembered)
        log.info("%s: trying the remembered line setting %s first", meter.name, remembered.line)
    saved = [remembered]
    encryption_key = meter.encryption_key.get_secret_value() if meter.encryption_key else None
    authentication_key = meter.authentication_key.get_secret_value() if meter.authentication_key else None

    def on_lock(settings: LineSettings) -> None:
        log.warning("%s: line settings detected: %s", meter.name, settings.line)
        if settings == saved[0]:
            return
        try:
            save_line_settings(path, settings)
        except OSError as exc:  # read-only state dir: detection still works, just not remembered
            log.warning("%s: cannot remember the line setting in %s: %s", meter.name, path, exc)
        else:
            saved[0] = settings

    def decoded_frames() -> int:
        # A frame that fails only for its key proves the line as well as a decoded one.
        counters = pipeline.counters
        return counters["frames_ok"] + counters["decrypt_errors"]

    return LineReader(
        candidates[0],
        pipeline.on_data,
        candidates=candidates,
        new_validator=lambda: FrameSniffer(encryption_key, authentication_key),
        on_lock=on_lock,
        decoded_frames=decoded_frames,
        redetect_after=meter.redetect_after_s,
        **common,
    )


# ------------------------------------------------------------------------------------ capture
# The capture file (`amsd capture -o FILE`), read back by `amsd decode FILE` and
# `amsd simulate --replay FILE`. Plain text so that it survives e-mail and issue trackers:
#
#   # amsd capture v1 port=/dev/ttyUSB0 baudrate=2400 bytesize=8 parity=E stopbits=1 started=<ISO 8601>
#   # (more comment lines may follow)
#   0.000000 7EA0E22B2113239AE6E7000F...
#   0.021337 ...
#
# One line per chunk as the line delivered it: seconds since the start (monotonic clock), one
# space, the bytes in hex. Only what came off the line is written: never a key.
CAPTURE_MAGIC: Final = b"# amsd capture v1"


@dataclass(slots=True)
class Capture:
    """A parsed capture file: header fields and the timed chunks in order."""

    header: dict[str, str]
    chunks: list[tuple[float, bytes]]

    @property
    def data(self) -> bytes:
        return b"".join(chunk for _, chunk in self.chunks)


class CaptureFormatError(ValueError):
    pass


def is_capture(data: bytes) -> bool:
    return data.startswith(CAPTURE_MAGIC)


def capture_header(settings: LineSettings, started: datetime) -> str:
    fields = [f"port={settings.port}"]
    if not settings.is_socket:
        fields += [
            f"baudrate={settings.baudrate}",
            f"bytesize={settings.bytesize}",
            f"parity={settings.parity}",
            f"stopbits={settings.stopbits}",
        ]
    fields.append(f"started={started.isoformat(timespec='seconds')}")
    return f"{CAPTURE_MAGIC.decode()} {' '.join(fields)}\n"


def parse_capture(data: bytes) -> Capture:
    """Parse a v1 capture; raises CaptureFormatError naming the bad line."""
    if not is_capture(data):
        raise CaptureFormatError("not an amsd capture (no '# amsd capture v1' header)")
    lines = data.splitlines()
    header: dict[str, str] = {}
    for item in lines[0][len(CAPTURE_MAGIC) :].decode("utf-8", "replace").split():
        name, _, value = item.partition("=")
        header[name] = value
    chunks: list[tuple[float, bytes]] = []
    last = 0.0
    for number, line in enumerate(lines[1:], 2):
        text = line.strip()
        if not text or text.startswith(b"#"):
            continue
        offset_text, _, hex_text = text.partition(b" ")
        try:
            offset = float(offset_text)
            chunk = bytes.fromhex(hex_text.decode("ascii"))
        except ValueError:
            raise CaptureFormatError(f"line {number}: expected '<seconds> <hex>'") from None
        if offset < last or offset != offset:  # NaN or going back in time
            raise CaptureFormatError(f"line {number}: time offset goes backwards")
        last = offset
        chunks.append((offset, chunk))
    return Capture(header, chunks)


async def capture_line(settings: LineSettings, path: str, *, seconds: float, err: TextIO = sys.stderr) -> int:
    """Record timed chunks from the line into `path` for `seconds` (or until SIGINT/SIGTERM).

    Returns the number of bytes recorded; raises OSError when the file cannot be written.
    """
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    write_errors: list[OSError] = []
    with open(path, "w", encoding="ascii") as file:
        file.write(capture_header(settings, datetime.now(UTC)))
        file.flush()
        started = time.monotonic()

        def on_data(chunk: bytes) -> None:
            try:
                file.write(f"{time.monotonic() - started:.6f} {chunk.hex().upper()}\n")
            except OSError as exc:  # disk full: stop rather than pretend to record
                write_errors.append(exc)
                done.set()

        def on_state(state: ReaderState, detail: str | None) -> None:
            if state == "open":
                print(f"Recording {settings} for {seconds:g} s to {path} (Ctrl-C stops)", file=err, flush=True)
            elif state == "waiting_retry" and detail:
                print(f"  {settings.port}: {detail}; retrying", file=err, flush=True)

        reader = LineReader(settings, on_data, on_state=on_state, idle_timeout=None)
        handled: list[signal.Signals] = []
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, done.set)
                handled.append(signum)
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
        print(f"Decode it with: amsd decode {path}   replay it with: amsd simulate --replay {path}", file=err)
    return count


def capture_command(args: argparse.Namespace) -> int:
    seconds: float = args.seconds
    if seconds <= 0:
        print("amsd capture: --seconds must be positive", file=sys.stderr)
        return EXIT_USAGE
    _quiet_reader_log()
    try:
        settings = LineSettings(
            args.port, args.baudrate, args.parity, getattr(args, "bytesize", 8), getattr(args, "stopbits", 1)
        )
    except ValueError as exc:
        print(f"amsd capture: {exc}", file=sys.stderr)
        return EXIT_USAGE
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
