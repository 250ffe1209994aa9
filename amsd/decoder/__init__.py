"""Sans-IO decoder for smart meter HAN/P1 streams.

`Decoder.feed(bytes)` takes bytes as they come off the line, in any chunking, and returns typed
events: a `Reading` per decoded message, an `UndecodedFrame` for everything else (noise, bad CRCs,
missing or wrong keys, unknown lists), always with the raw bytes. It never raises on input and never
reads a clock, opens a socket or logs.
"""

from __future__ import annotations

import re
from binascii import crc_hqx
from collections import Counter
from typing import Final

from amsd.decoder import cipher, dsmr, gbt, hdlc, mbus, stream
from amsd.decoder.crc import REVERSE_BITS, X25_BEFORE_FLAG, X25_GOOD, X25_GOOD_THEN_FLAG, x25_ok
from amsd.decoder.dlms import DlmsInterpreter
from amsd.decoder.events import (
    NO_KEY,
    TRUNCATED,
    WRONG_KEY,
    Event,
    Layer,
    Reading,
    UndecodedFrame,
    Value,
)
from amsd.decoder.hdlc import FLAG
from amsd.decoder.keys import parse_key
from amsd.decoder.replay import REPLAYED_COUNTER, InvocationCounterTracker, Verdict
from amsd.decoder.stream import Kind

__all__ = [
    "NO_KEY",
    "TRUNCATED",
    "WRONG_KEY",
    "Decoder",
    "Event",
    "Reading",
    "UndecodedFrame",
    "Value",
    "parse_key",
]

# Noise is reported in pieces of at most this size so that a wrong baud rate cannot grow memory.
MAX_NOISE_REPORT: Final = 1024
MAX_NESTING: Final = 4
STRONG_START_BYTES: Final = frozenset((hdlc.FLAG, mbus.START, 0x2F))
PLAUSIBILITY_FULL_SCAN: Final = 96
# A ciphered bare APDU up to this size waits to be complete even when its ciphertext seems to hold a
# frame start (it may, by chance): its key then decides. Larger ones give way at once, as before.
MAX_CIPHERED_WAIT: Final = 4096
# 0F, invoke-id(4), date-time (none / 09 0C + 12 / 0C + 12 / typed 19 + 12), then an array or a
# structure (BER count) whose first element has a known A-XDR tag.
_NOTIFICATION_START: Final = re.compile(
    rb"\x0f.{4}(?:\x00|\x09\x0c.{12}|[\x0c\x19].{12})[\x01\x02](?:[\x00-\x7f]|\x81.|\x82..)"
    rb"[\x00-\x06\x09\x0a\x0c\x0d\x0f-\x1b]",
    re.DOTALL,
)


class Decoder:
    """Decode one meter's byte stream.

    Keys are 16 bytes or 32 hex characters (spaces, colons and a 0x prefix are tolerated). `profile`
    selects scaling for lists that carry no scalers (see `amsd.decoder.profiles`).
    `dsmr_standard_offset_minutes` is the UTC offset of the meter's standard (winter) time, used with
    the S/W flag of DSMR timestamps.
    """

    def __init__(
        self,
        encryption_key: bytes | str | None = None,
        authentication_key: bytes | str | None = None,
        *,
        profile: str = "auto",
        dsmr_standard_offset_minutes: int = 60,
        require_crc: bool = False,
    ) -> None:
        self._encryption_key = parse_key(encryption_key, "encryption_key")
        self._authentication_key = parse_key(authentication_key, "authentication_key")
        self._interpreter = DlmsInterpreter(profile)
        self._dsmr_offset = dsmr_standard_offset_minutes
        self._require_crc = require_crc
        self._buf = bytearray()
        self._noise = bytearray()
        self._reported_until = 0  # bytes before this offset were already reported with a bad frame
        self._last_frame_end = -1  # a 0x7E right here is the previous frame's closing flag
        # Set once a frame with its own integrity check (HDLC, M-Bus, DSMR) decoded: from then on the
        # line is known to be framed and bare APDUs are not looked for.
        self._framed = False
        self._hdlc_segments: list[bytes] = []
        self._hdlc_raw: list[bytes] = []
        self._mbus_segments: list[bytes] = []
        self._mbus_raw: list[bytes] = []
        self._gbt = gbt.GbtAssembler()
        # Replayed or decreasing GCM invocation counters per system title (amsd.decoder.replay).
        self.invocation_counters = InvocationCounterTracker()
        self.counters: Counter[str] = Counter()

    # ------------------------------------------------------------------------------------ public
    def feed(self, data: bytes | bytearray | memoryview) -> list[Event]:
        """Add bytes from the line; returns the events they complete, in stream order."""
        events: list[Event] = []
        if data:
            self._buf += data
            self._scan(events, final=False)
        return events

    def flush(self) -> list[Event]:
        """End of input: report whatever is left (cut-off frames, trailing noise) as `truncated`."""
        events: list[Event] = []
        self._scan(events, final=True)
        leftover = bytes(self._noise) + bytes(self._buf)
        partial = b"".join(self._hdlc_raw) + b"".join(self._mbus_raw) + self._gbt.reset()
        self._hdlc_segments.clear()
        self._hdlc_raw.clear()
        self._mbus_segments.clear()
        self._mbus_raw.clear()
        self._noise.clear()
        self._buf.clear()
        self._reported_until = 0
        self._last_frame_end = -1
        if partial:
            events.append(self._undecoded("stream", TRUNCATED, "message incomplete at end of input", partial))
        if leftover:
            events.append(self._undecoded("stream", TRUNCATED, f"{len(leftover)} bytes left at end of input", leftover))
        return events

    # ------------------------------------------------------------------------------------ stream
    def _scan(self, events: list[Event], *, final: bool) -> None:
        buf = self._buf
        pos = 0
        size = len(buf)
        search = stream.CANDIDATE.search
        while pos < size:
            match = search(buf, pos)
            if match is None:
                self._add_noise(events, pos, size)
                pos = size
                break
            start = match.start()
            if start > pos:
                self._add_noise(events, pos, start)
            pos = start
            if start == self._last_frame_end and buf[start] == FLAG:
                # The last frame's closing flag (one probe less per frame on a live line): skip it
                # when the next frame brings its own opening flag, wait when nothing follows yet.
                following = buf[start + 1 : start + 2]
                if following == b"\x7e":
                    pos = start + 1
                    continue
                if not following and not final:
                    break
            if buf[start] == FLAG:
                # Intact HDLC frames, back to back: the common case on an HDLC line, decoded by
                # one flat loop. Anything else (incomplete, damaged, not a frame) is left to the
                # general path below, which then sees the same bytes.
                after = self._hdlc_frames(events, buf, start, size, final)
                if after != start:
                    pos = after
                    if after + 1 == size and not final and buf[after] == FLAG:
                        break  # only a flag so far (closing or opening): wait for what follows it
                    continue
            if buf[start] not in STRONG_START_BYTES and (start < self._reported_until or self._framed):
                # Inside a frame that failed its check, or on a line that carries checked frames: only
                # a frame with its own integrity check may start here, never a bare APDU (which could
                # be the damaged inside of a frame whose header was hit by noise).
                self._add_noise(events, start, start + 1)
                pos = start + 1
                continue
            result: stream.Probe | bool | None
            if buf[start] == FLAG:
                # stream.probe's HDLC branch, inlined: this runs for every frame on an HDLC line.
                header_or_verdict = hdlc.parse_header(buf, start)
                if isinstance(header_or_verdict, hdlc.HdlcHeader):
                    end = start + header_or_verdict.length + 1
                    ready = end < size or (final and end == size)  # (the closing flag is in, see probe)
                    result = (Kind.HDLC, end, header_or_verdict) if ready else None
                else:
                    result = header_or_verdict
            else:
                result = stream.probe(buf, start, final)
            if result is None:
                if final and start == self._last_frame_end and buf[start] == FLAG:
                    pos = start + 1  # the last frame's closing flag
                    continue
                if final or self._weak_gives_way(buf, start):
                    self._add_noise(events, start, start + 1)
                    pos = start + 1
                    continue
                break  # wait for more bytes
            if result is False:
                if buf[start] == FLAG and (start == self._last_frame_end or buf[start + 1 : start + 2] == b"\x7e"):
                    pos = start + 1  # closing or fill flag, not noise
                    continue
                self._add_noise(events, start, start + 1)
                pos = start + 1
                continue
            assert isinstance(result, tuple)
            kind, end, header = result
            if self._noise:
                self._flush_noise(events)
            frame = bytes(buf[start:end])
            failure: tuple[Layer, str, str] | None = None
            if kind is Kind.HDLC:
                assert header is not None
                failure = self._on_hdlc(events, frame, header, buf, end)
            elif kind is Kind.MBUS:
                failure = self._on_mbus(events, frame)
            elif kind is Kind.DSMR:
                self.counters["frames"] += 1
                self._on_dsmr(events, frame)
            elif kind is Kind.P1_CIPHERED:
                # A clear ident line, then the rest of the telegram as a ciphering body without its
                # DB tag (Polish Elgama P1). The GCM tag or the plausibility check vouches for it.
                self.counters["frames"] += 1
                ident_end = frame.index(b"\n") + 1
                self._on_ciphered(events, b"\xdb" + frame[ident_end:], frame, 0, frame[:ident_end])
            elif not self._on_bare_apdu(events, frame, buf, start, end):
                # Line noise that happened to parse as an APDU: already counted as noise.
                self._reported_until = max(self._reported_until, end)
                pos = start + 1
                continue
            if failure is None:
                pos = end
                self._last_frame_end = end
                if kind is not Kind.APDU:
                    self._framed = True
                # The closing-flag handling at the top of the loop, without another search:
                if buf[end : end + 2] == b"\x7e\x7e":
                    pos += 1  # a closing flag, then the next frame's opening flag
                elif end + 1 == size and not final and buf[end] == FLAG:
                    break  # only the closing flag so far: wait for what follows it
                continue
            # A bad frame may have been cut short on the line, with a good frame starting inside it:
            # report only the bytes before that frame, and resynchronise inside the bad one.
            layer, error, detail = failure
            inner = self._strong_start_within(buf, start + 1, end)
            if inner is not None:
                end = inner
                error, detail = "cut_short", "frame cut short: another frame starts inside it"
            elif kind is Kind.HDLC and buf[end : end + 1] == b"\x7e":
                end += 1  # report the closing flag with the frame
            events.append(self._undecoded(layer, error, detail, bytes(buf[start:end])))
            self._reported_until = max(self._reported_until, end)
            pos = start + 1
        if pos:
            del buf[:pos]
            self._reported_until = max(0, self._reported_until - pos)
            self._last_frame_end -= pos

    def _hdlc_frames(self, events: list[Event], buf: bytearray, pos: int, size: int, final: bool) -> int:
        """Decode complete, intact HDLC frames back to back from the flag at `buf[pos]`.

        Returns the offset after the last frame decoded, `pos` if there was none. Same checks and
        results as the general path (hdlc.parse_header, probe, _on_hdlc), without its per-frame
        overhead: one header regex, HCS and FCS one C call each over one bit-reversed copy, no
        header object. A frame that fails any check is left where it is for the general path.
        """
        header_match = hdlc.HEADER.match
        reverse_bits = REVERSE_BITS
        counters = self.counters
        while True:
            match = header_match(buf, pos)
            if match is None:
                return pos
            length = ((buf[pos + 1] & 0x07) << 8) | buf[pos + 2]
            end = pos + length + 1
            # (wait for the closing flag too, as the general path does, so that raw includes it)
            if end >= size and not (final and end == size):
                return pos
            header_size = match.end() + 1 - pos  # format through HCS
            if length < hdlc.MIN_LENGTH or header_size > length:
                return pos
            closed = end < size and buf[end] == FLAG
            raw = bytes(buf[pos : end + 1]) if closed else bytes(buf[pos:end])
            # HCS and FCS over the frame's wire bytes, flags included: starting from X25_BEFORE_FLAG
            # the opening flag brings the CRC register to its usual initial value, and a closing flag
            # after a correct FCS leaves it at X25_GOOD_THEN_FLAG (one slice less per frame).
            reversed_raw = raw.translate(reverse_bits)
            if crc_hqx(reversed_raw[: header_size + 1], X25_BEFORE_FLAG) != X25_GOOD or crc_hqx(
                reversed_raw, X25_BEFORE_FLAG
            ) != (X25_GOOD_THEN_FLAG if closed else X25_GOOD):
                return pos
            if self._noise:
                self._flush_noise(events)
            counters["frames"] += 1
            self._last_frame_end = end
            self._framed = True
            self._on_hdlc_information(events, raw[header_size + 1 : length - 1], raw, buf[pos + 1] & hdlc.SEGMENTED_BIT)
            # The closing flag, then the next frame's opening flag: skip the closing one.
            pos = end + 1 if buf[end : end + 2] == b"\x7e\x7e" else end

    def _weak_gives_way(self, buf: bytearray, start: int) -> bool:
        """An incomplete bare APDU yields to a strong candidate further on, or when too long.

        Except a ciphered APDU of ordinary size while we hold a key: its ciphertext may contain
        anything, a frame start included, so it is decided once complete (`_on_bare_apdu`)."""
        if buf[start] in STRONG_START_BYTES:
            return False
        if len(buf) - start > stream.MAX_BARE_APDU:
            return True
        inner = self._strong_start_within(buf, start + 1, len(buf))
        if inner is None:
            return False
        if buf[start] == cipher.TAG and self._encryption_key is not None:
            extent = stream.bare_apdu_extent(buf, start)
            return not (isinstance(extent, int) and extent is not True and extent - start <= MAX_CIPHERED_WAIT)
        return True

    def _open(self, apdu: bytes) -> tuple[cipher.GloHeader, bytes] | None:
        """The header and plaintext of a ciphered APDU that decrypts with our key (its tag verified,
        or without a tag its plaintext plausible); None for anything else. No events, no counters."""
        if self._encryption_key is None:
            return None
        try:
            header = cipher.parse_header(apdu)
            plaintext = cipher.decrypt(
                apdu, header, self._encryption_key, self._authentication_key, _plausible_plaintext
            )
        except cipher.CipherError:
            return None
        return header, plaintext

    def _add_noise(self, events: list[Event], start: int, end: int) -> None:
        start = max(start, self._reported_until)
        if start >= end:
            return
        self._noise += self._buf[start:end]
        if len(self._noise) >= MAX_NOISE_REPORT:
            self._flush_noise(events)

    def _flush_noise(self, events: list[Event]) -> None:
        if self._noise:
            noise = bytes(self._noise)
            self._noise.clear()
            if not noise.strip(b"\r\n"):
                return  # line ends between DSMR telegrams carry nothing
            events.append(self._undecoded("stream", "noise", f"{len(noise)} bytes outside any frame", noise))

    # ------------------------------------------------------------------------------------ frames
    def _on_hdlc(
        self, events: list[Event], frame: bytes, header: hdlc.HdlcHeader, buf: bytearray, end: int
    ) -> tuple[Layer, str, str] | None:
        length = header.length
        if not x25_ok(frame[1 : length + 1]):  # the FCS (hdlc.fcs_ok, inlined: once per frame)
            self._drop_segments(events, "hdlc", self._hdlc_segments, self._hdlc_raw)
            return "hdlc", "fcs_error", "frame check sequence does not match"
        raw = frame + b"\x7e" if buf[end : end + 1] == b"\x7e" else frame
        self.counters["frames"] += 1
        info = frame[header.header_end : length - 1]  # hdlc.information (empty without one)
        self._on_hdlc_information(events, info, raw, header.segmented)
        return None

    def _on_hdlc_information(self, events: list[Event], info: bytes, raw: bytes, segmented: object) -> None:
        """An intact HDLC frame's information field (empty for supervisory frames)."""
        if segmented:
            self._hdlc_segments.append(info)
            self._hdlc_raw.append(raw)
            return
        if self._hdlc_segments:
            self._hdlc_segments.append(info)
            self._hdlc_raw.append(raw)
            info = b"".join(self._hdlc_segments)
            raw = b"".join(self._hdlc_raw)
            self._hdlc_segments.clear()
            self._hdlc_raw.clear()
        if info:  # supervisory frames carry no information: nothing to decode
            self._on_apdu(events, info, raw, "hdlc")

    def _drop_segments(self, events: list[Event], layer: Layer, segments: list[bytes], raws: list[bytes]) -> None:
        """Report a segmented message that cannot be completed, and forget it."""
        if segments:
            raw = b"".join(raws)
            segments.clear()
            raws.clear()
            events.append(self._undecoded(layer, "segment_lost", "segmented message lost a segment", raw))

    def _on_mbus(self, events: list[Event], frame: bytes) -> tuple[Layer, str, str] | None:
        if not mbus.checksum_ok(frame):
            self._drop_segments(events, "mbus", self._mbus_segments, self._mbus_raw)
            return "mbus", "checksum_error", "M-Bus checksum or stop byte wrong"
        self.counters["frames"] += 1
        parsed = mbus.parse(frame)
        if parsed.sequence != len(self._mbus_segments):
            self._drop_segments(events, "mbus", self._mbus_segments, self._mbus_raw)
            if parsed.sequence != 0:
                detail = f"segment {parsed.sequence} without its predecessors"
                events.append(self._undecoded("mbus", "segment_lost", detail, frame))
                return None
        self._mbus_segments.append(parsed.payload)
        self._mbus_raw.append(frame)
        if not parsed.final:
            return None
        apdu = b"".join(self._mbus_segments)
        raw = b"".join(self._mbus_raw)
        self._mbus_segments.clear()
        self._mbus_raw.clear()
        self._on_apdu(events, apdu, raw, "mbus")
        return None

    def _on_dsmr(
        self,
        events: list[Event],
        telegram: bytes,
        system_title: str | None = None,
        invocation_counter: int | None = None,
    ) -> None:
        event = dsmr.parse_telegram(
            telegram,
            standard_offset_minutes=self._dsmr_offset,
            require_crc=self._require_crc,
            system_title=system_title,
            invocation_counter=invocation_counter,
        )
        self._emit(events, event)

    def _on_bare_apdu(self, events: list[Event], frame: bytes, buf: bytearray, start: int, end: int) -> bool:
        # A ciphered APDU that decrypts with our key is a frame, whatever its ciphertext looks like
        # (decrypted once here, not again to decode it). Otherwise a strong frame hidden inside means
        # this "APDU" was line noise that happened to parse.
        if frame[0] == cipher.TAG and (opened := self._open(frame)) is not None:
            self.counters["frames"] += 1
            header, plaintext = opened
            self._on_plaintext(events, header, plaintext, frame, 0)
            return True
        inner = self._strong_start_within(buf, start + 1, end)
        if inner is not None:
            self._add_noise(events, start, inner)
            return False
        self.counters["frames"] += 1
        self._on_apdu(events, frame, frame, "apdu")
        return True

    @staticmethod
    def _strong_start_within(buf: bytearray, start: int, end: int) -> int | None:
        """Offset of the first strong frame start (header checked) in buf[start:end], if any."""
        # Candidates start before `end` but their prefix may run past it.
        search = stream.STRONG_PREFIX.search
        while (match := search(buf, start, end + stream.STRONG_PREFIX_SPAN - 1)) is not None:
            candidate = match.start()
            if candidate >= end:
                return None
            if stream.is_strong_start(buf, candidate):
                return candidate
            start = candidate + 1
        return None

    # ------------------------------------------------------------------------------------ APDUs
    def _on_apdu(
        self,
        events: list[Event],
        apdu: bytes,
        raw: bytes,
        layer: Layer,
        system_title: str | None = None,
        invocation_counter: int | None = None,
        depth: int = 0,
    ) -> None:
        if apdu[:3] in stream.LLC_HEADERS:
            apdu = apdu[3:]
        if not apdu:
            events.append(self._undecoded("apdu", "empty", "no APDU after the LLC header", raw))
            return
        if depth > MAX_NESTING:
            events.append(self._undecoded("apdu", "too_deep", "APDUs nested too deeply", raw))
            return
        tag = apdu[0]
        if tag == gbt.TAG:
            self._on_gbt_block(events, apdu, raw, depth)
        elif tag == cipher.TAG:
            self._on_ciphered(events, apdu, raw, depth)
        elif tag == 0x2F:
            self._on_dsmr(events, apdu, system_title, invocation_counter)
        else:
            self._emit(
                events,
                self._interpreter.decode(
                    apdu, raw=raw, system_title=system_title, invocation_counter=invocation_counter
                ),
            )

    def _on_gbt_block(self, events: list[Event], apdu: bytes, raw: bytes, depth: int) -> None:
        try:
            added = self._gbt.add_apdu(apdu, raw)
        except gbt.GbtError as exc:
            events.append(self._undecoded("gbt", exc.code, exc.detail, raw + self._gbt.reset()))
            return
        if added is None:
            return  # a block taken, the message not complete yet
        complete, message_raw, discarded, reason = added
        if discarded:
            detail = {
                "restarted": "block sequence restarted; the unfinished message was dropped",
                "block_lost": "a block is missing; the unfinished message was dropped",
                "too_long": "reassembled message exceeds 64 KiB",
            }.get(reason or "", "message dropped")
            events.append(self._undecoded("gbt", reason or "dropped", detail, discarded))
        if complete is not None:
            self._on_apdu(events, complete, message_raw, "gbt", depth=depth + 1)

    def _on_ciphered(self, events: list[Event], apdu: bytes, raw: bytes, depth: int, clear_prefix: bytes = b"") -> None:
        """Decrypt a general-glo-ciphering APDU. `clear_prefix` is the clear ident line of a P1
        telegram whose body follows encrypted (its plaintext is the rest of the telegram)."""
        try:
            header = cipher.parse_header(apdu)
        except cipher.CipherError as exc:
            events.append(self._undecoded("cipher", exc.code, exc.detail, raw))
            return
        title = header.system_title_hex
        counter = header.invocation_counter
        if self._encryption_key is None:
            events.append(
                self._undecoded(
                    "cipher",
                    NO_KEY,
                    f"encrypted APDU (security control 0x{header.security_control:02X}), no key configured",
                    raw,
                    title,
                    counter,
                )
            )
            return

        def plausible(plaintext: bytes) -> bool:
            return _plausible_plaintext(clear_prefix + plaintext)

        try:
            plaintext = cipher.decrypt(apdu, header, self._encryption_key, self._authentication_key, plausible)
        except cipher.CipherError as exc:
            events.append(self._undecoded("cipher", exc.code, exc.detail, raw, title, counter))
            return
        self._on_plaintext(events, header, clear_prefix + plaintext, raw, depth)

    def _on_plaintext(
        self, events: list[Event], header: cipher.GloHeader, plaintext: bytes, raw: bytes, depth: int
    ) -> None:
        """A decrypted APDU: refused if its invocation counter is replayed, else decoded."""
        title = header.system_title_hex
        counter = header.invocation_counter
        if self.invocation_counters.check(title, counter) is Verdict.REPLAYED:
            detail = self.invocation_counters.detail(title, counter)
            events.append(self._undecoded("cipher", REPLAYED_COUNTER, detail, raw, title, counter))
            return
        self._on_apdu(events, plaintext, raw, "cipher", title, counter, depth + 1)

    # ------------------------------------------------------------------------------------ helpers
    def _emit(self, events: list[Event], event: Reading | UndecodedFrame) -> None:
        if isinstance(event, Reading):
            self.counters["readings"] += 1
        else:
            self.counters[f"{event.layer}.{event.error}"] += 1
        events.append(event)

    def _undecoded(
        self,
        layer: Layer,
        error: str,
        detail: str,
        raw: bytes,
        system_title: str | None = None,
        invocation_counter: int | None = None,
    ) -> UndecodedFrame:
        self.counters[f"{layer}.{error}"] += 1
        return UndecodedFrame(layer, error, detail, raw, system_title, invocation_counter)


def _plausible_plaintext(plaintext: bytes) -> bool:
    """Does decrypted data look like what meters encrypt? Used where no tag proves the key."""
    if not plaintext:
        return False
    tag = plaintext[0]
    if tag == 0x0F:
        if len(plaintext) <= PLAUSIBILITY_FULL_SCAN:
            # Short: the whole structure must check out (every tag known, lengths in bounds, no rest).
            return stream.notification_extent(plaintext, 0) == len(plaintext)
        # Long: the header and the start of the body must look like a push. Random bytes from a wrong
        # key pass with a probability below 1e-7; the full decode that follows checks the rest.
        return _NOTIFICATION_START.match(plaintext) is not None
    if tag == gbt.TAG:
        try:
            gbt.parse_block(plaintext)
        except gbt.GbtError:
            return False
        return True
    if tag == 0x2F:
        return stream.DSMR_IDENT.match(plaintext) is not None and b"!" in plaintext
    return False
