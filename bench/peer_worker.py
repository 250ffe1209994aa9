"""Timing worker for `bench.peers`: one contender (amsd or a peer library) in its own interpreter.

Started by `bench/peers.py` as `<python> bench/peer_worker.py <contender>`; the peers run in the
throwaway peer venv's interpreter, amsd in the project's. This file must not import amsd at module
level (the peer venv does not have it) and uses only the standard library besides the contender.

Protocol, one JSON object per line:
  -> {"op": "setup", "frame": NAME, "case": {...}}        prepare one frame (untimed)
  <- {"ok": true, "leaves": [...]} | {"ok": false, "reason": "..."}
     `leaves` are the numbers and strings the contender decoded from the frame, so that the parent
     can check that the library really produced the expected values (not a fast failure path).
  -> {"op": "time", "frame": NAME, "runs": N}
  <- {"samples": [ns, ...], "produced": K}                  K = runs that produced a decoded message
  -> {"op": "versions"}  <- {"versions": {...}}
"""

from __future__ import annotations

import contextlib
import gc
import importlib.metadata
import itertools
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

# A prepared frame: `run()` decodes once and returns how many messages it decoded; `before()` runs
# untimed before each run; `result()` decodes once more and returns the decoded object for the check.
Prepared = tuple[Callable[[], int], Callable[[], None] | None, Callable[[], Any]]


# Set by a prepare function when the contender does less than bytes-to-values-with-CRC on this frame.
partial_reason: list[str] = []


class NotApplicable(Exception):
    """The contender has no decoder for this frame's transport or security."""


# ------------------------------------------------------------------------------------ helpers


def _key(case: dict[str, Any], field: str) -> bytes | None:
    value = case.get(field)
    return bytes.fromhex(value) if value else None


def _crc16_x25(data: bytes) -> int:
    # Only used untimed, to rebuild a Kaifa frame for libraries that reject its header (see below).
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x8408 if crc & 1 else crc >> 1
    return crc ^ 0xFFFF


def _untag_kaifa_datetime(frame: bytes) -> bytes:
    """Kaifa NO sends the DataNotification date-time as `09 0C ...` (tagged); gurux and dlms-cosem
    expect `0C ...`. Remove the tag and recompute length, HCS and FCS (as the corpus cross-check did).
    One unsegmented HDLC frame: 7E, format(2), addresses, control, HCS(2), LLC(3), 0F, ..., FCS(2), 7E."""
    pos = 3
    for _ in range(2):  # destination and source address: the last byte has bit 0 set
        while not frame[pos] & 1:
            pos += 1
        pos += 1
    head_end = pos + 1  # control byte
    info = frame[head_end + 2 : -3]
    if not (info[3] == 0x0F and info[8] == 0x09 and info[9] == 0x0C):
        return frame
    info = info[:8] + info[9:]
    length = len(frame) - 3  # without the two flags, one byte shorter now
    head = (0xA000 | length).to_bytes(2, "big") + frame[3:head_end]
    head += _crc16_x25(head).to_bytes(2, "little")
    content = head + info
    return b"\x7e" + content + _crc16_x25(content).to_bytes(2, "little") + b"\x7e"


def _stream(case: dict[str, Any]) -> Iterator[str] | None:
    """For a stream row: the different inputs (hex), cycled; each run takes the next one. The hex
    is decoded inside the timed run by every contender alike (~1 us for a telegram)."""
    inputs = case.get("stream_hex")
    return itertools.cycle(inputs) if inputs else None


def leaves(value: Any, depth: int = 0) -> Iterator[Any]:
    """Numbers and strings inside whatever structure a library returns."""
    if depth > 12 or value is None:
        return
    if isinstance(value, bool):
        return
    if isinstance(value, (int, float, Decimal)):
        yield float(value)
    elif isinstance(value, str):
        yield value
    elif isinstance(value, (bytes, bytearray)):
        with contextlib.suppress(UnicodeDecodeError):
            text = bytes(value).decode("ascii")
            if text.isprintable():
                yield text
        yield bytes(value).hex().upper()
    elif isinstance(value, dict):
        for item in value.values():
            yield from leaves(item, depth + 1)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from leaves(item, depth + 1)
    elif hasattr(value, "__dict__") or hasattr(value, "__slots__"):
        # Library objects (dsmr-parser CosemObject, gurux GXDateTime...): their public attributes.
        names = list(getattr(value, "__dict__", {})) or list(getattr(value, "__slots__", ()))
        for name in names:
            if not name.startswith("_"):
                with contextlib.suppress(Exception):
                    yield from leaves(getattr(value, name), depth + 1)
        for name in ("value", "values"):
            attr = getattr(type(value), name, None)
            if isinstance(attr, property):
                with contextlib.suppress(Exception):
                    yield from leaves(getattr(value, name), depth + 1)


# ------------------------------------------------------------------------------------ contenders


def prepare_amsd(case: dict[str, Any], variant: str) -> Prepared:
    from amsd.decoder import Decoder, Reading
    from amsd.decoder.replay import InvocationCounterTracker

    decoder = Decoder(_key(case, "key_hex"), _key(case, "auth_key_hex"))
    data = bytes.fromhex(case["input_hex"])
    feed, flush = decoder.feed, decoder.flush
    stream = _stream(case)
    if stream is not None and variant == "cold":
        raise NotApplicable("the stream row measures the cache as a live line uses it")
    hooks: list[Callable[[], None]] = []
    if case.get("encrypted"):
        # The same ciphered frame is decoded again and again: forget its invocation counter so that
        # every run decodes it fully instead of reporting a replay.
        def reset_counters() -> None:
            decoder.invocation_counters = InvocationCounterTracker()

        hooks.append(reset_counters)
    if variant == "cold":
        if case["transport"] != "dsmr" and not case.get("dsmr_inside"):
            raise NotApplicable("the line cache only exists for DSMR")
        from amsd.decoder import dsmr

        hooks.append(dsmr._line_caches.clear)  # the benchmark reaches into the cache on purpose

    def before() -> None:
        for hook in hooks:
            hook()

    # On a live line flush() is never called: time feed() alone where it completes the message (it
    # does unless the input ends without the frame's last byte, e.g. a telegram without CRLF).
    before()
    feed_alone = any(type(e) is Reading for e in feed(data))
    flush()

    def run() -> int:
        if stream is not None:
            return sum(type(e) is Reading for e in feed(bytes.fromhex(next(stream))))
        if feed_alone:
            return sum(type(e) is Reading for e in feed(data))
        return sum(type(e) is Reading for e in feed(data) + flush())

    def result() -> Any:
        before()
        readings = [e for e in feed(data) + flush() if isinstance(e, Reading)]
        return [{k: v.value for k, v in r.values.items()} for r in readings]

    return run, before if hooks else None, result


def prepare_gurux(case: dict[str, Any]) -> Prepared:
    if case["transport"] != "hdlc":
        raise NotApplicable("gurux-dlms: DLMS over HDLC only here (no DSMR parser)")
    from gurux_dlms import GXByteBuffer, GXDLMSClient, GXReplyData
    from gurux_dlms.enums import Authentication, InterfaceType, Security
    from gurux_dlms.secure import GXDLMSSecureClient

    key = _key(case, "key_hex")
    client: Any
    if key is not None:
        client = GXDLMSSecureClient(True, -1, -1, Authentication.NONE, None, InterfaceType.HDLC)
        client.ciphering.security = Security.ENCRYPTION
        client.ciphering.blockCipherKey = key
        auth = _key(case, "auth_key_hex")
        if auth is not None:
            client.ciphering.authenticationKey = auth
    else:
        client = GXDLMSClient(True, -1, -1, Authentication.NONE, None, InterfaceType.HDLC)
    data = bytes.fromhex(case["input_hex"])
    if case.get("kaifa_tagged_datetime"):
        # gurux neither accepts the tagged header nor this I-frame (control 0x10) in HDLC mode: give
        # its PDU interface the de-tagged APDU. Framing and FCS are then NOT in gurux's time, which
        # flatters gurux (a stricter comparison for amsd).
        partial_reason.append("gurux: de-tagged APDU via its PDU interface, no HDLC framing/FCS")
        frame = _untag_kaifa_datetime(data)
        data = frame[frame.index(b"\xe6\xe7\x00") + 3 : -3]
        client = GXDLMSClient(True, -1, -1, Authentication.NONE, None, InterfaceType.PDU)
    values: list[Any] = []

    def run() -> int:
        buffer = GXByteBuffer(data)
        reply, notify = GXReplyData(), GXReplyData()
        complete = 0
        while buffer.position < buffer.size:
            position = buffer.position
            client.getData(buffer, reply, notify)
            if buffer.position == position:
                raise RuntimeError("gurux-dlms stopped advancing in the stream")
            if notify.complete and not notify.isMoreData():
                if notify.value is not None:
                    complete += 1
                    values.append(notify.value)
                notify.clear()
        return complete

    def result() -> Any:
        values.clear()
        run()
        return list(values)

    def before() -> None:
        values.clear()

    return run, before, result


def prepare_amshan(case: dict[str, Any]) -> Prepared:
    from han import autodecoder, hdlc

    decoder = autodecoder.AutoDecoder()
    data = bytes.fromhex(case["input_hex"])
    if case["transport"] == "dsmr":
        if case.get("dsmr_inside"):
            raise NotApplicable("amshan: no decryption")

        stream = _stream(case)
        partial_reason.append("amshan: no DSMR CRC check")

        def run_p1() -> int:
            if stream is not None:
                return decoder.decode_message_payload(bytes.fromhex(next(stream))) is not None
            return decoder.decode_message_payload(data) is not None

        return run_p1, None, lambda: decoder.decode_message_payload(data)
    if case.get("encrypted"):
        raise NotApplicable("amshan: no decryption")
    if case["transport"] != "hdlc":
        raise NotApplicable("amshan: HDLC or P1 only")
    reader = hdlc.HdlcFrameReader(False)
    decoded: list[Any] = []

    def run() -> int:
        count = 0
        for frame in reader.read(data):
            if frame.is_good_ffc:
                message = decoder.decode_message(frame)
                if message is not None:
                    count += 1
                    decoded.append(message)
        return count

    def result() -> Any:
        decoded.clear()
        run()
        return list(decoded)

    return run, decoded.clear, result


def prepare_dsmr_parser(case: dict[str, Any]) -> Prepared:
    if case["transport"] != "dsmr":
        raise NotApplicable("dsmr-parser: DSMR only")
    from dsmr_parser import telegram_specifications
    from dsmr_parser.parsers import TelegramParser

    if case.get("dsmr_inside"):
        # Austrian Sagemcom T210-D-R style: the P1 telegram inside general-glo-ciphering (EK + AK,
        # tag verified by dlms-cosem inside dsmr-parser). dsmr-parser takes the frame as hex text.
        # A stream of DSMR 5 telegrams takes its DSMR 5 objects with the same ciphering path.
        gcm_stream = _stream(case)
        spec = (
            telegram_specifications.SAGEMCOM_T210_D_R
            if case.get("sagemcom_spec")
            else {**telegram_specifications.V5, "general_global_cipher": True}
        )
        parser = TelegramParser(spec, apply_checksum_validation=True)
        frame_hex = case["input_hex"]
        ek, ak = case["key_hex"], case["auth_key_hex"]

        def run_gcm() -> int:
            return 1 if parser.parse(next(gcm_stream) if gcm_stream else frame_hex, ek, ak) else 0

        return run_gcm, None, lambda: parser.parse(frame_hex, ek, ak)
    parser = TelegramParser(telegram_specifications.V5, apply_checksum_validation=True)
    text = case["input_text"]
    stream = _stream(case)

    def run() -> int:
        if stream is not None:
            return 1 if parser.parse(bytes.fromhex(next(stream)).decode("latin-1")) else 0
        return 1 if parser.parse(text) else 0

    return run, None, lambda: parser.parse(text)


def prepare_dlms_cosem(case: dict[str, Any]) -> Prepared:
    if case["transport"] != "hdlc":
        raise NotApplicable("dlms-cosem: HDLC DLMS only")
    from dlms_cosem.connection import XDlmsApduFactory
    from dlms_cosem.dlms_data import DlmsDataParser
    from dlms_cosem.hdlc.frames import UnnumberedInformationFrame

    data = bytes.fromhex(case["input_hex"])
    if case.get("kaifa_tagged_datetime"):
        data = _untag_kaifa_datetime(data)
    if data.count(b"\x7e\x7e") or data[1] & 0x08 or case.get("encrypted"):
        # No general-block-transfer or HDLC segment reassembly in dlms-cosem's push path.
        raise NotApplicable("dlms-cosem: no GBT/segment reassembly for push frames")
    decoded: list[Any] = []

    def run() -> int:
        frame = UnnumberedInformationFrame.from_bytes(data)  # checks HCS and FCS
        apdu = XDlmsApduFactory.apdu_from_bytes(frame.payload[3:])
        values = DlmsDataParser().parse(apdu.body)
        decoded.append(values)
        return 1

    def result() -> Any:
        decoded.clear()
        run()
        return [[getattr(v, "value", v) for v in batch] for batch in decoded]

    return run, decoded.clear, result


PREPARE: dict[str, Callable[[dict[str, Any]], Prepared]] = {
    "amsd": lambda case: prepare_amsd(case, "warm"),
    "amsd-cold": lambda case: prepare_amsd(case, "cold"),
    "gurux-dlms": prepare_gurux,
    "amshan": prepare_amshan,
    "dsmr-parser": prepare_dsmr_parser,
    "dlms-cosem": prepare_dlms_cosem,
}
DISTRIBUTIONS = {
    "amsd": "amsd",
    "amsd-cold": "amsd",
    "gurux-dlms": "gurux-dlms",
    "amshan": "amshan",
    "dsmr-parser": "dsmr-parser",
    "dlms-cosem": "dlms-cosem",
}


def time_runs(prepared: Prepared, runs: int) -> tuple[list[int], int]:
    run, before, _ = prepared
    clock = time.perf_counter_ns
    samples = []
    produced = 0
    gc.disable()  # every contender is timed without collector pauses
    try:
        for _ in range(runs):
            if before is not None:
                before()
            start = clock()
            count = run()
            samples.append(clock() - start)
            produced += count > 0
    finally:
        gc.enable()
    return samples, produced


def main() -> int:
    contender = sys.argv[1]
    prepare = PREPARE[contender]
    # Libraries may print (gurux: "Encryption is applied."): keep the protocol on its own stream.
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the worker
    frames: dict[str, Prepared] = {}
    for line in sys.stdin:
        request = json.loads(line)
        op = request["op"]
        reply: dict[str, Any]
        if op == "versions":
            dist = DISTRIBUTIONS[contender]
            try:
                version = importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                version = "?"
            reply = {"versions": {dist: version}, "python": sys.version.split()[0]}
        elif op == "setup":
            partial_reason.clear()
            try:
                prepared = prepare(request["case"])
                for _ in range(5):  # warm-up, and the first run must not raise
                    if prepared[1] is not None:
                        prepared[1]()
                    prepared[0]()
                decoded = prepared[2]()
                frames[request["frame"]] = prepared
                reply = {"ok": True, "leaves": list(leaves(decoded))[:2000], "partial": "; ".join(partial_reason)}
            except NotApplicable as exc:
                reply = {"ok": False, "reason": str(exc)}
            except Exception as exc:  # a library that fails on this frame is reported, not timed
                reply = {"ok": False, "reason": f"fails: {type(exc).__name__}: {str(exc)[:120]}"}
        elif op == "time":
            samples, produced = time_runs(frames[request["frame"]], int(request["runs"]))
            reply = {"samples": samples, "produced": produced}
        else:
            reply = {"error": f"unknown op {op}"}
        protocol.write(json.dumps(reply) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
