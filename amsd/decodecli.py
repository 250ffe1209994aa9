"""`amsd decode`: decode a capture (amsd capture file, hex, amsreader debug dump, binary or DSMR text)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
from collections.abc import Iterable
from typing import Any, Final, TextIO

from amsd.decoder import Decoder, Event, Reading, UndecodedFrame
from amsd.decoder.keys import InvalidKeyError

EXIT_OK: Final = 0
EXIT_USAGE: Final = 2

_HEX_ONLY: Final = re.compile(rb"^(?:[0-9A-Fa-f\s:,]|0[xX])*$")
# amsreader-firmware debug output: "(D) 7E A0 ...", sometimes after a timestamp or log prefix.
_DEBUG_LINE: Final = re.compile(rb"\(D\)\s*((?:[0-9A-Fa-f]{2}\s*)+)$")


class InputError(Exception):
    pass


def read_capture(data: bytes, fmt: str = "auto") -> bytes:
    """Turn the contents of a capture file into the bytes that came off the line.

    Formats: an `amsd capture` file (v1, timed hex chunks), clean hex, amsreader debug dumps, and
    anything else as the raw bytes (old binary captures, DSMR text).
    """
    if not data.strip():
        raise InputError("input is empty")
    if fmt == "binary":
        return data
    from amsd.tools import CaptureFormatError, is_capture, parse_capture

    if fmt == "capture" or (fmt == "auto" and is_capture(data)):
        try:
            return parse_capture(data).data
        except CaptureFormatError as exc:
            raise InputError(str(exc)) from None
    stripped = data.strip()
    if fmt == "hex" or (stripped and _HEX_ONLY.match(stripped)):
        digits = re.sub(rb"[\s:,]|0[xX]", b"", stripped)
        if len(digits) % 2:
            raise InputError(f"hex input has an odd number of digits ({len(digits)})")
        try:
            return bytes.fromhex(digits.decode("ascii"))
        except ValueError:
            raise InputError("input is neither clean hex nor a recognised capture") from None
    lines = stripped.splitlines()
    debug = [m.group(1) for line in lines if (m := _DEBUG_LINE.search(line.rstrip()))]
    if debug:
        return bytes.fromhex(b" ".join(debug).decode("ascii"))
    return data


def _value_json(reading: Reading) -> dict[str, dict[str, Any]]:
    return {obis: {"value": v.value, "unit": v.unit} for obis, v in reading.values.items()}


def event_json(event: Event) -> dict[str, Any]:
    """The `amsd decode --json` object for one event (DESIGN.md section 6)."""
    if isinstance(event, Reading):
        out: dict[str, Any] = {
            "event": "reading",
            "meter_id": event.meter_id,
            "timestamp": event.timestamp.isoformat() if event.timestamp else None,
            "model": event.model,
            "list": event.list,
            "manufacturer": event.manufacturer,
            "protocol": event.protocol,
            "values": _value_json(event),
        }
        if event.crc_present is not None:
            out["crc_present"] = event.crc_present
    else:
        out = {
            "event": "undecoded",
            "layer": event.layer,
            "error": event.error,
            "detail": event.detail,
            "hex": event.raw.hex().upper(),
        }
    if event.system_title is not None:
        out["system_title"] = event.system_title
        out["invocation_counter"] = event.invocation_counter
    return out


def _format_value(value: object) -> str:
    if isinstance(value, list):
        return ", ".join(_format_value(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def print_table(events: Iterable[Event], out: TextIO) -> None:
    for number, event in enumerate(events, 1):
        if isinstance(event, Reading):
            stamp = event.timestamp.isoformat() if event.timestamp else "-"
            title = " ".join(
                part
                for part in (
                    f"meter {event.meter_id}" if event.meter_id else "",
                    f"model {event.model}" if event.model else "",
                    f"list {event.list}" if event.list else "",
                )
                if part
            )
            print(f"#{number} reading  {stamp}  {title}", file=out)
            width = max((len(k) for k in event.values), default=0)
            for obis, value in event.values.items():
                unit = f" {value.unit}" if value.unit else ""
                print(f"    {obis:<{width}}  {_format_value(value.value)}{unit}", file=out)
        else:
            assert isinstance(event, UndecodedFrame)
            print(f"#{number} undecoded  {event.layer}/{event.error}: {event.detail}", file=out)
            if event.system_title:
                print(
                    f"    system title {event.system_title}, invocation counter {event.invocation_counter}",
                    file=out,
                )
            hexdata = event.raw.hex().upper()
            shown = hexdata if len(hexdata) <= 160 else hexdata[:160] + f"... ({len(event.raw)} bytes)"
            print(f"    {shown}", file=out)


def decode_command(args: argparse.Namespace) -> int:
    try:
        decoder = Decoder(args.key, args.auth_key, profile=args.profile)
    except InvalidKeyError as exc:
        name = str(exc).replace("encryption_key", "--key").replace("authentication_key", "--auth-key")
        print(f"amsd decode: {name}", file=sys.stderr)
        return EXIT_USAGE
    except ValueError as exc:  # unknown profile
        print(f"amsd decode: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.input == "-":
            data = sys.stdin.buffer.read()
        else:
            with open(args.input, "rb") as handle:
                data = handle.read()
    except OSError as exc:
        print(f"amsd decode: cannot read {args.input}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        line = read_capture(data, args.format)
    except InputError as exc:
        print(f"amsd decode: unreadable input: {exc}", file=sys.stderr)
        return EXIT_USAGE
    events = decoder.feed(line) + decoder.flush()
    out = sys.stdout
    try:
        if args.json:
            for event in events:
                out.write(json.dumps(event_json(event), ensure_ascii=False) + "\n")
        else:
            if not events:
                print("no frames found", file=out)
            print_table(events, out)
        out.flush()
    except BrokenPipeError:
        # The reader went away (`amsd decode ... | head`): not an error of ours.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return EXIT_OK
