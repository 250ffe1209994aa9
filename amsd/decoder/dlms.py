"""Turn a plaintext DLMS APDU into a `Reading` (or an `UndecodedFrame`): the application layer.

Body shapes (FIELD-NOTES "DLMS data-notification and A-XDR"; corpus README "Conventions"):

1. Capture-object descriptor array first (Swiss VSE push lists, L+G/Iskra push setups): element 0 is
   the push-object list `[{class, OBIS, attribute, data index}, ...]` and element i is the value of
   descriptor i (descriptor 0 being the push setup's object list itself, class 40 attribute 2), or,
   without that self-reference, element i + 1 is the value of descriptor i. Counts must agree.
2. Kaifa `KFM_001` positional lists (NO): a structure whose first element is the list id `KFM_...`
   and whose length gives the layout (9/14 one-phase, 13/18 three-phase, 12/17 three-phase without
   L2 voltage as sent by the 3-wire MA304T3), or list 1: a structure holding one unsigned number.
3. Everything else with OBIS codes: walked generically. An element is an OBIS code (6-byte octet
   string) followed by its value and, if present, a `{scaler, unit}` structure; or a structure
   `{OBIS, value[, {scaler, unit}]}`; arrays and structures of these nest (Aidon, AT/PL Kaifa,
   Sagemcom, Kamstrup, Swedish Kaifa, L+G "no push list"). A leading unpaired string is the list
   id (Kamstrup), a leading unpaired 12-byte octet string the message time (Sagemcom, L+G).

Anything else (OBIS-less proprietary structures) is reported as `unknown_list`, never guessed.
Values use the frame's scaler/unit when present, else the family table of `amsd.decoder.profiles`,
else they are published raw without a unit.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from datetime import date, datetime
from functools import partial
from itertools import repeat
from operator import call, itemgetter, mul, truediv
from typing import Any, Final, cast

from amsd.decoder.apdu import DATA_NOTIFICATION, ApduError, parse_data_notification
from amsd.decoder.axdr import (
    BitString,
    Date,
    DateTime,
    Enum,
    Time,
    cosem_date,
    cosem_datetime,
    cosem_time,
    float32,
)
from amsd.decoder.events import Reading, Scalar, UndecodedFrame, Value, ValueData
from amsd.decoder.obis import UNITS, Quantity, is_clock, obis_bytes, obis_str, quantity
from amsd.decoder.profiles import (
    ISKRA_FAMILY,
    KAIFA_FAMILY,
    KAMSTRUP_FAMILY,
    MANUFACTURERS,
    MAX_PLAUSIBLE_VOLTS,
    SWISS_FAMILY,
    Table,
    family_from_flag,
    get_profile,
    infer_swiss_scales,
)

# Value((value, unit)) without NamedTuple's generated __new__ (a lambda call per value on the hot path).
_new_value: Callable[[tuple[Scalar, str | None]], Value] = partial(tuple.__new__, Value)

# (OBIS code, A-XDR value, {scaler, unit} or None, container holding the value, index in it)
Entry = tuple[bytes, object, object, object, int]
Located = tuple[object, object, int]  # (value, container, index) of an element before any OBIS code

_POW10: Final = tuple(10**k for k in range(24))
_POW10F: Final = tuple(float(10**k) for k in range(24))
_LIST_ID: Final = (0, 2, 129)  # C.D.E of the list version identifier (x-x:0.2.129.255)


def _ob(text: str) -> bytes:
    return obis_bytes(text)


# Kaifa KFM_001 positional layouts by structure length (FIELD-NOTES "Kaifa NO").
_KAIFA_HEAD: Final = (None, _ob("0-0:96.1.0.255"), _ob("0-0:96.1.7.255"))
_KAIFA_POWER: Final = tuple(_ob(f"1-0:{c}.7.0.255") for c in (1, 2, 3, 4))
_KAIFA_LIST3: Final = (_ob("0-0:1.0.0.255"), *(_ob(f"1-0:{c}.8.0.255") for c in (1, 2, 3, 4)))
_I1, _I2, _I3 = (_ob(f"1-0:{c}.7.0.255") for c in (31, 51, 71))
_U1, _U2, _U3 = (_ob(f"1-0:{c}.7.0.255") for c in (32, 52, 72))
_KAIFA_3P: Final = (*_KAIFA_HEAD, *_KAIFA_POWER, _I1, _I2, _I3, _U1, _U2, _U3)
_KAIFA_3P_NO_U2: Final = (*_KAIFA_HEAD, *_KAIFA_POWER, _I1, _I2, _I3, _U1, _U3)
_KAIFA_1P: Final = (*_KAIFA_HEAD, *_KAIFA_POWER, _I1, _U1)
_KAIFA_LAYOUTS: Final[dict[int, tuple[bytes | None, ...]]] = {
    len(layout): layout for base in (_KAIFA_3P, _KAIFA_3P_NO_U2, _KAIFA_1P) for layout in (base, (*base, *_KAIFA_LIST3))
}
_KAIFA_LIST1: Final = _KAIFA_POWER[0]

_LIST_PREFIXES: Final = (
    ("KFM_", "Kaifa", KAIFA_FAMILY),
    ("Kamstrup", "Kamstrup", KAMSTRUP_FAMILY),
    ("AIDON", "Aidon", None),
)


class DlmsInterpreter:
    """Interpret data-notifications of one meter. Keeps what earlier lists said about the meter.

    `profile` names the scaling choices that cannot be read from the frame (`amsd.decoder.profiles`);
    an unknown name raises ValueError.

    Speed: meters repeat the same few lists, byte for byte except for the numbers and clocks. After
    a list is interpreted the slow, general way, a `_Template` remembers every other byte literally
    (as a regular expression) and where the numbers are (as one struct format). A frame that matches
    a template in full is therefore the same list, and only its numbers need reading: same result,
    a fraction of the cost.
    """

    def __init__(self, profile: str = "auto") -> None:
        self._profile = get_profile(profile)
        # Lists without ids (Kaifa and Aidon list 1) borrow them from the last list that had them.
        self._meter_id: str | None = None
        self._model: str | None = None
        self._manufacturer: str | None = None
        self._templates: list[_Template] = []
        self._misses = 0  # frames in a row that matched no template

    def decode(
        self,
        apdu: bytes,
        *,
        raw: bytes,
        system_title: str | None = None,
        invocation_counter: int | None = None,
    ) -> Reading | UndecodedFrame:
        """Never raises: every failure becomes an `UndecodedFrame` in layer "apdu"."""
        try:
            for template in self._templates:
                if template.system_title == system_title and template.pattern.fullmatch(apdu):
                    self._misses = 0
                    result = template.apply(apdu)
                    break
            else:
                self._misses += 1
                # Something that never repeats (a changing string) must not pay for templates.
                build = self._misses <= 4 or self._misses % 256 == 0
                result = self._interpret(apdu, system_title, build)
            return self._finish(result, raw, system_title, invocation_counter)
        except ApduError as exc:
            return UndecodedFrame("apdu", exc.code, exc.detail, raw, system_title, invocation_counter)
        except Exception as exc:  # a bug must cost one frame, not the daemon
            return UndecodedFrame(
                "apdu",
                "internal_error",
                f"{type(exc).__name__} while interpreting the APDU",
                raw,
                system_title,
                invocation_counter,
            )

    # ------------------------------------------------------------------------------------------
    def _finish(self, result: _Result, raw: bytes, system_title: str | None, invocation_counter: int | None) -> Reading:
        values, meter_id, model, list_name, manufacturer, clock = result
        if meter_id is not None:
            self._meter_id, self._model = meter_id, model
            self._manufacturer = manufacturer
        elif self._meter_id is not None and manufacturer in (None, self._manufacturer):
            meter_id, model, manufacturer = self._meter_id, model or self._model, self._manufacturer
        # Positional (Reading's field order): keyword arguments cost more, once per frame.
        return Reading(
            values, meter_id, clock, model, list_name, manufacturer, "dlms", system_title, invocation_counter, None, raw
        )

    def _interpret(self, apdu: bytes, system_title: str | None, build_template: bool) -> _Result:
        if not apdu or apdu[0] != DATA_NOTIFICATION:
            tag = f"0x{apdu[0]:02X}" if apdu else "empty"
            raise ApduError("unsupported_apdu", f"APDU {tag} is not a data-notification")
        offsets: dict[int, list[int]] | None = {} if build_template else None
        note = parse_data_notification(apdu, offsets)
        body = note.body
        entries: list[Entry] = []
        leading: list[Located] = []
        family: str | None = None
        list_name: str | None = None
        descriptors = _descriptors(body)
        if descriptors is not None:
            assert isinstance(body, tuple)
            if len(descriptors) == len(body) and descriptors[0][0] == 40 and descriptors[0][2] == 2:
                first = 0  # the push setup's object list is itself the first captured value
            elif len(descriptors) == len(body) - 1:
                first = 1
            else:
                raise ApduError("unknown_list", f"{len(descriptors)} capture objects but {len(body)} values")
            _pair_descriptors(descriptors, body, first, entries)
            family = SWISS_FAMILY
            list_name = "push-object-list"
        elif (layout := _kaifa_layout(body)) is not None:
            assert isinstance(body, tuple)
            entries.extend(
                (code, value, None, body, index)
                for index, (code, value) in enumerate(zip(layout, body, strict=True))
                if code
            )
            family = KAIFA_FAMILY
            list_name = _text(body[0]) if len(body) > 1 else "KFM_001 list 1"
        else:
            _walk(body, entries, leading, None, 0)
            if not entries:
                count = len(body) if isinstance(body, list | tuple) else 1
                raise ApduError("unknown_list", f"{count} values without OBIS codes; layout unknown")

        # Identity: list id, logical device name and ids among the string values.
        manufacturer: str | None = None
        meter_id: str | None = None
        meter_rank = 99
        model: str | None = None
        ldn_flag: str | None = None
        if leading and list_name is None:
            head = leading[0][0]
            if isinstance(head, str) or (type(head) is bytes and len(head) != 12 and _printable(head)):
                list_name = _text(head)
        # Kamstrup's x-x:96.1.1 is the meter type; elsewhere it is a serial number.
        kamstrup = family == KAMSTRUP_FAMILY or (list_name or "").startswith("Kamstrup")
        for code, value, *_ in entries:
            if not isinstance(value, str | bytes):
                continue
            if code[0] == 0 and code[1] != 0:
                continue  # B > 0 with A = 0: an M-Bus channel (gas, water meter), not this meter
            c, d, e = code[2], code[3], code[4]
            if (c, d, e) == _LIST_ID:
                list_name = _text(value)
            elif c == 96 and d == 1:
                if e == 7 or (e == 1 and kamstrup):
                    model = _text(value)
                elif e in (0, 1) and e < meter_rank:
                    meter_id, meter_rank = _text(value), e
            elif c == 0 and d == 0 and e == 5 and meter_rank > 0:
                meter_id, meter_rank = _text(value), 0
            elif c == 42 and d == 0 and e == 0:
                text = _text(value)
                ldn_flag = _flag(text)
                if meter_rank > 2:
                    meter_id, meter_rank = text, 2
        aidon = False
        if list_name is not None:
            for prefix, name, list_family in _LIST_PREFIXES:
                if list_name.startswith(prefix):
                    manufacturer = name
                    family = family or list_family
                    aidon = name == "Aidon"
                    break
        title_flag = _flag_from_title(system_title)
        flag = title_flag or ldn_flag or (_flag_from_meter_id(meter_id) if meter_id else None)
        if flag is not None:
            flag_family = family_from_flag(flag)
            if family is None or (family == SWISS_FAMILY and flag_family is not None):
                family = flag_family
            manufacturer = manufacturer or MANUFACTURERS.get(flag, flag)
        table = self._profile.table(family)
        evidence = True
        inferred_from: Table | None = None  # the table before `_infer_scales`, if it ran
        if table is not None and family in (SWISS_FAMILY, ISKRA_FAMILY) and self._profile.name == "auto":
            inferred_from = table
            table, evidence = _infer_scales(entries, table)

        values: dict[str, Value] = {}
        plan: list[_Step] = []
        clock: datetime | None = None
        for code, value, scaler_unit, container, index in entries:
            key = obis_str(code)
            kind = type(value)
            if kind is int or kind is float:
                unit, exponent = _scale(code, scaler_unit, table)
                values[key] = Value(_apply(value, exponent), unit)  # type: ignore[arg-type]
                plan.append((key, _NUMBER, container, index, unit, exponent, None if scaler_unit else code))
            elif isinstance(value, bytes) and (
                kind is DateTime or (kind is bytes and len(value) == 12 and is_clock(code))
            ):
                naive = aidon and _zero_deviation(value)
                stamp = cosem_datetime(bytes(value), naive=naive)
                values[key] = _stamp_value(stamp, bytes(value))
                if clock is None and stamp is not None and is_clock(code):
                    clock = stamp
                plan.append((key, _CLOCK if is_clock(code) else _STAMP, container, index, None, naive, None))
            else:
                values[key] = Value(_plain(value))
                plan.append((key, _CONSTANT, values[key], 0, None, 0, None))
        # A date-time before the first OBIS code is the message time (Sagemcom, L+G no push list).
        fallback: tuple[int, int] | None = None
        for item, container, index in leading:
            if isinstance(item, bytes) and (type(item) is DateTime or (type(item) is bytes and len(item) == 12)):
                if clock is None:
                    clock = cosem_datetime(bytes(item))
                if offsets is not None:
                    fallback = _locate(offsets, container, index, 0)
                    if fallback is None:
                        return _no_template(values, meter_id, model, list_name, manufacturer, clock)
                break
        if clock is None and fallback is None and note.timestamp_raw is not None:
            naive = aidon and _zero_deviation(note.timestamp_raw)
            clock = cosem_datetime(note.timestamp_raw, naive=naive)
        result: _Result = (values, meter_id, model, list_name, manufacturer, clock)
        if offsets is not None and len(values) == len(plan):
            # Without evidence for the scaling the template decides again on every frame it matches,
            # from that frame's numbers, until one frame has the evidence (see `_Template.apply`).
            inference = None
            if inferred_from is not None and not evidence:
                inference = (inferred_from, [e[0] for e in entries if _is_inference_input(*e[:3])])
            template = _Template.build(apdu, offsets, plan, result, fallback, aidon, system_title, inference)
            if template is not None:
                self._templates.insert(0, template)
                del self._templates[_MAX_TEMPLATES:]
        return result


_Result = tuple[dict[str, Value], str | None, str | None, str | None, str | None, datetime | None]
# (key, kind, container or constant Value, index, unit, exponent or naive flag,
#  OBIS code if the number is scaled by the family table, else None)
_Step = tuple[str, int, object, int, str | None, int, bytes | None]
_NUMBER, _CLOCK, _STAMP, _CONSTANT = range(4)
_MAX_TEMPLATES: Final = 6
# Fixed-width A-XDR types that may vary between frames of one list -> struct code.
_SLOT_FORMATS: Final[dict[int, str]] = {
    5: "i",
    6: "I",
    15: "b",
    16: "h",
    17: "B",
    18: "H",
    20: "q",
    21: "Q",
    23: "f",
    24: "d",
}
# (table before inference, OBIS codes that `_infer_scales` reads) for lists decided frame by frame.
_Inference = tuple[Table, list[bytes]]
# Per number of a template: (operators, operands, units), so that op(raw, operand) == _apply(raw, exp).
_Scaling = tuple[tuple[Callable[[Any, Any], Any], ...], tuple[int | float, ...], tuple[str | None, ...]]


def _scaling_op(exponent: int) -> tuple[Callable[[Any, Any], Any], int | float]:
    """(operator, operand) with operator(raw, operand) == _apply(raw, exponent) for every raw number.

    Multiplying by 1 keeps an int an int and a float the same float, so exponent 0 needs no branch.
    """
    if exponent >= 0:
        return mul, _POW10[exponent] if exponent < 24 else 10.0**exponent
    return (truediv, _POW10F[-exponent]) if -exponent < 23 else (mul, 10.0**exponent)


def _locate(offsets: dict[int, list[int]], container: object, index: int, size: int) -> tuple[int, int] | None:
    starts = offsets.get(id(container)) if container is not None else offsets.get(0)
    if starts is None or index >= len(starts):
        return None
    return starts[index], size


def _getter(slots: list[int]) -> Callable[[tuple[Any, ...]], tuple[Any, ...]]:
    """A function picking `slots` out of a tuple, always as a tuple (itemgetter of one returns the item)."""
    if len(slots) >= 2:
        return itemgetter(*slots)
    if slots:
        only = slots[0]
        return lambda fields: (fields[only],)
    return lambda fields: ()


class _Template:
    """One list's frame with its varying fields as wildcards (see DlmsInterpreter).

    Applying it reads every varying field with one struct unpack, scales all numbers with C-level
    `map`s (no Python loop per number), and fills a copy of a dict that already holds the keys in
    the reading's order and the constant values.
    """

    __slots__ = (
        "fallback",
        "float32_mask",
        "inference",
        "inference_roles",
        "meta",
        "naive_header",
        "no_evidence_scalings",
        "number_codes",
        "number_keys",
        "numbers",
        "pattern",
        "quantities",
        "scaling",
        "scalings",
        "skeleton",
        "stamps",
        "system_title",
        "unpack",
        "volt_scale",
    )

    def __init__(
        self,
        pattern: re.Pattern[bytes],
        unpack: Callable[[bytes], tuple[Any, ...]],
        skeleton: dict[str, Value | None],
        numbers: list[int],
        number_steps: list[tuple[str, str | None, int, bytes | None, bool]],
        stamps: list[tuple[str, int, bool, bool]],
        meta: tuple[str | None, str | None, str | None, str | None],
        fallback: int,
        naive_header: bool,
        system_title: str | None,
        inference: tuple[Table, list[tuple[bytes, int]]] | None,
    ) -> None:
        self.pattern = pattern
        self.unpack = unpack
        self.skeleton = skeleton
        self.numbers = _getter(numbers)
        self.number_keys = tuple(key for key, *_ in number_steps)
        # OBIS code of each number the family table scales (None: the frame's own scaler/unit).
        self.number_codes = tuple(code for *_, code, _float32 in number_steps)
        float32_mask = tuple(is_float32 for *_, is_float32 in number_steps)
        self.float32_mask = float32_mask if any(float32_mask) else None
        ops = tuple(_scaling_op(exponent) for _key, _unit, exponent, _code, _float32 in number_steps)
        self.scaling: _Scaling = (
            tuple(op for op, _ in ops),
            tuple(operand for _, operand in ops),
            tuple(unit for _key, unit, *_ in number_steps),
        )
        # The quantities the family table scales here, and the scaling per choice of their scales.
        self.quantities = tuple({kind: None for code in self.number_codes if code and (kind := quantity(code))})
        self.scalings: dict[tuple[object, ...], _Scaling] = {}
        self.stamps = stamps
        self.meta = meta
        self.fallback = fallback
        self.naive_header = naive_header
        self.system_title = system_title
        self.inference = inference
        # (slot, role, index) of every inference input, as `_infer_scales` would classify it.
        # Frames without power or current cannot decide the current scale: for them the inference only
        # checks the voltages (see `infer_swiss_scales`), so their scaling is kept per outcome of that.
        self.no_evidence_scalings: dict[bool, _Scaling] = {}
        self.volt_scale = 10.0 ** inference[0].get(Quantity.VOLTAGE, ("V", 0))[1] if inference else 1.0
        self.inference_roles = tuple(
            (slot, *_inference_role(code[2])) for code, slot in (inference[1] if inference else ())
        )

    @classmethod
    def build(
        cls,
        apdu: bytes,
        offsets: dict[int, list[int]],
        plan: list[_Step],
        result: _Result,
        fallback: tuple[int, int] | None,
        aidon: bool,
        system_title: str | None,
        inference: _Inference | None = None,
    ) -> _Template | None:
        fields: list[tuple[int, int, str]] = [(1, 4, "x")]  # the invoke-id changes every frame
        marker = apdu[5]
        header_at = 7 if marker == 0x09 and apdu[6] == 12 else 6 if marker in (0x0C, 0x19) else 0
        if header_at:
            fields.append((header_at, 12, "s"))
        if fallback is not None:
            start, _ = fallback
            fields.append((start + (2 if apdu[start] == 0x09 else 1), 12, "s"))
        for _key, kind, container, index, _unit, _extra, _code in plan:
            if kind == _CONSTANT:
                continue
            place = _locate(offsets, container, index, 0)
            if place is None:
                return None
            start = place[0]
            tag = apdu[start]
            if kind == _NUMBER:
                code = _SLOT_FORMATS.get(tag)
                if code is None:
                    return None
                fields.append((start + 1, struct.calcsize(">" + code), code))
            elif tag == 0x09 and apdu[start + 1] == 12:
                fields.append((start + 2, 12, "s"))
            elif tag == 0x19:
                fields.append((start + 1, 12, "s"))
            else:
                return None
        fields.sort()
        pattern = []
        layout = [">"]
        position = 0
        order: dict[int, int] = {}  # field start -> index in the unpacked tuple
        count = 0
        for start, size, code in fields:
            if start < position:
                return None  # overlapping fields: not a shape we understand
            pattern.append(re.escape(apdu[position:start]))
            pattern.append(b".{%d}" % size)
            if start > position:
                layout.append(f"{start - position}x")
            if code == "x":
                layout.append(f"{size}x")
            else:
                layout.append(f"{size}s" if code == "s" else code)
                order[start] = count
                count += 1
            position = start + size
        pattern.append(re.escape(apdu[position:]))
        unpacker = struct.Struct("".join(layout))
        if unpacker.size > len(apdu):
            return None
        skeleton: dict[str, Value | None] = {}
        numbers: list[int] = []
        number_steps: list[tuple[str, str | None, int, bytes | None, bool]] = []
        stamps: list[tuple[str, int, bool, bool]] = []
        inputs: list[tuple[bytes, int]] = []
        for key, kind, container, index, unit, extra, table_code in plan:
            if kind == _CONSTANT:
                skeleton[key] = cast(Value, container)
                continue
            skeleton[key] = None  # filled by every `apply`
            place = _locate(offsets, container, index, 0)
            assert place is not None
            start = place[0]
            slot = order[start + 1 if apdu[start] != 0x09 else start + 2]
            if kind == _NUMBER:
                numbers.append(slot)
                number_steps.append((key, unit, extra, table_code, apdu[start] == 0x17))
                if inference is not None and table_code in inference[1]:
                    inputs.append((table_code, slot))
            else:
                stamps.append((key, slot, bool(extra), kind == _CLOCK))
        header_slot = order.get(header_at, -1) if header_at else -1
        fallback_slot = -1
        if fallback is not None:
            start = fallback[0]
            fallback_slot = order[start + (2 if apdu[start] == 0x09 else 1)]
        values, meter_id, model, list_name, manufacturer, _clock = result
        del values
        return cls(
            re.compile(b"".join(pattern), re.DOTALL),
            unpacker.unpack_from,
            skeleton,
            numbers,
            number_steps,
            stamps,
            (meter_id, model, list_name, manufacturer),
            fallback_slot if fallback_slot >= 0 else header_slot,
            aidon and fallback_slot < 0,
            system_title,
            # Without inputs the inference decides the same on every frame: as it did on this one.
            (inference[0], inputs) if inference is not None and inputs else None,
        )

    def apply(self, apdu: bytes) -> _Result:
        fields = self.unpack(apdu)
        numbers = self.numbers(fields)
        if self.float32_mask is not None:
            numbers = tuple(
                float32(raw) if is_float32 else raw for raw, is_float32 in zip(numbers, self.float32_mask, strict=True)
            )
        operators, operands, units = self.scaling if self.inference is None else self._infer(fields)
        values: dict[str, Value] = self.skeleton.copy()  # type: ignore[assignment]  # (no cast() call)
        values.update(
            zip(
                self.number_keys,
                # tuple.__new__(Value, (value, unit)) per number, called by map directly (no partial).
                map(tuple.__new__, repeat(Value), zip(map(call, operators, numbers, operands), units, strict=True)),
                strict=True,
            )
        )
        clock: datetime | None = None
        for key, slot, naive, is_clock_step in self.stamps:
            stamp_raw = fields[slot]
            stamp = cosem_datetime(stamp_raw, naive=naive and _zero_deviation(stamp_raw))
            values[key] = _stamp_value(stamp, stamp_raw)
            if clock is None and is_clock_step and stamp is not None:
                clock = stamp
        if clock is None and self.fallback >= 0:
            stamp_raw = fields[self.fallback]
            clock = cosem_datetime(stamp_raw, naive=self.naive_header and _zero_deviation(stamp_raw))
        meter_id, model, list_name, manufacturer = self.meta
        return values, meter_id, model, list_name, manufacturer, clock

    def _infer(self, fields: tuple[Any, ...]) -> _Scaling:
        """The scaling `_interpret` would choose for this frame's numbers (Swiss scale inference).

        Once a frame holds the evidence, its decision is kept, as a template built from that frame
        would keep it.
        """
        assert self.inference is not None
        # `_infer_scales` over this frame's numbers, with each input's role looked up once per
        # template instead of once per frame (this runs for every frame until the evidence comes).
        voltages = [0, 0, 0]
        currents = [0, 0, 0]
        power = 0
        for slot, role, index in self.inference_roles:
            value = fields[slot]
            if type(value) is not int:
                continue
            if role == _VOLTAGE:
                voltages[index] = value
            elif role == _CURRENT:
                currents[index] = value
            else:
                power += index * value  # index: +1 import, -1 export
        no_evidence = not power or not any(currents)
        if no_evidence:
            # (the voltage check of `infer_swiss_scales`, the same float expression)
            high_voltage = max(voltages) * self.volt_scale > MAX_PLAUSIBLE_VOLTS
            known = self.no_evidence_scalings.get(high_voltage)
            if known is not None:
                return known
        table, evidence = infer_swiss_scales(self.inference[0], voltages, currents, power)
        # `_scale(code, None, table)` depends on the table only through the code's quantity.
        chosen = tuple(map(table.get, self.quantities))
        scaling = self.scalings.get(chosen)
        if scaling is None:
            operators, operands, units = self.scaling
            new_operators, new_operands, new_units = [], [], []
            for code, operator, operand, unit in zip(self.number_codes, operators, operands, units, strict=True):
                if code is not None:
                    unit, exponent = _scale(code, None, table)
                    operator, operand = _scaling_op(exponent)
                new_operators.append(operator)
                new_operands.append(operand)
                new_units.append(unit)
            scaling = (tuple(new_operators), tuple(new_operands), tuple(new_units))
            if len(self.scalings) < 16:
                self.scalings[chosen] = scaling
        if evidence:
            self.scaling, self.inference = scaling, None
        elif no_evidence:
            self.no_evidence_scalings[high_voltage] = scaling
        return scaling


# ---------------------------------------------------------------------------------------- shapes
def _no_template(
    values: dict[str, Value],
    meter_id: str | None,
    model: str | None,
    list_name: str | None,
    manufacturer: str | None,
    clock: datetime | None,
) -> _Result:
    return values, meter_id, model, list_name, manufacturer, clock


def _is_obis(value: object) -> bool:
    return type(value) is bytes and len(value) == 6


def _is_scaler_unit(value: object) -> bool:
    return type(value) is tuple and len(value) == 2 and type(value[0]) is int and type(value[1]) is Enum


def _walk(node: object, entries: list[Entry], leading: list[Located], container: object, index: int) -> None:
    """Collect (OBIS, value, scaler-unit, container, index) from flat sequences and structures."""
    if not isinstance(node, list | tuple):
        leading.append((node, container, index))
        return
    items = node
    size = len(items)
    i = 0
    while i < size:
        item = items[i]
        if type(item) is bytes and len(item) == 6 and i + 1 < size:
            value = items[i + 1]
            if i + 2 < size and _is_scaler_unit(items[i + 2]):
                entries.append((item, value, items[i + 2], items, i + 1))
                i += 3
            else:
                entries.append((item, value, None, items, i + 1))
                i += 2
            continue
        if type(item) is tuple and 2 <= len(item) <= 3 and type(item[0]) is bytes and len(item[0]) == 6:
            if len(item) == 2:
                entries.append((item[0], item[1], None, item, 1))
                i += 1
                continue
            if _is_scaler_unit(item[2]):
                entries.append((item[0], item[1], item[2], item, 1))
                i += 1
                continue
        if isinstance(item, list | tuple):
            _walk(item, entries, leading, items, i)
        elif not entries:
            leading.append((item, items, i))
        i += 1


def _descriptors(body: object) -> list[tuple[int, bytes, int, int]] | None:
    """The capture-object list if `body` starts with one (shape 1 of the module docstring)."""
    if type(body) is not tuple or len(body) < 2:
        return None
    first = body[0]
    if type(first) is not list or not first:
        return None
    for item in first:
        if (
            type(item) is not tuple
            or len(item) != 4
            or type(item[0]) is not int
            or not _is_obis(item[1])
            or type(item[2]) is not int
        ):
            return None
    return first


def _pair_descriptors(
    descriptors: list[tuple[int, bytes, int, int]],
    body: tuple[object, ...],
    first: int,
    entries: list[Entry],
) -> None:
    pushed = body[first:]
    # Registers may push their scaler_unit (attribute 3) next to the value: use it if they do.
    scaler_units = {
        code: value
        for (_cls, code, attr, _idx), value in zip(descriptors, pushed, strict=True)
        if attr == 3 and _is_scaler_unit(value)
    }
    for index, ((cls, code, attr, _idx), value) in enumerate(zip(descriptors, pushed, strict=True)):
        if attr != 2 or cls == 40:  # push setup: its own object list and name
            continue
        entries.append((code, value, scaler_units.get(code), body, index + first))


def _kaifa_layout(body: object) -> tuple[bytes | None, ...] | None:
    if type(body) is not tuple:
        return None
    if len(body) == 1:
        only = body[0]
        return (_KAIFA_LIST1,) if type(only) is int else None
    layout = _KAIFA_LAYOUTS.get(len(body))
    if layout is None:
        return None
    list_id = body[0]
    if isinstance(list_id, bytes | str) and _text(list_id).startswith("KFM_"):
        return layout
    return None


# ---------------------------------------------------------------------------------------- values
_PHASE_VOLTAGES: Final = {32: 0, 52: 1, 72: 2}
_PHASE_CURRENTS: Final = {31: 0, 51: 1, 71: 2}


_INFERENCE_C: Final = frozenset((*_PHASE_VOLTAGES, *_PHASE_CURRENTS, 1, 2))


def _is_inference_input(code: bytes, value: object, scaler_unit: object) -> bool:
    """Whether `_infer_scales` reads this entry (a raw phase voltage or current, or active power)."""
    return scaler_unit is None and type(value) is int and code[0] == 1 and code[3] == 7 and code[2] in _INFERENCE_C


_VOLTAGE, _CURRENT, _POWER = range(3)


def _inference_role(c: int) -> tuple[int, int]:
    """(role, index) of an inference input with OBIS group C (see `_infer_scales`)."""
    if c in _PHASE_VOLTAGES:
        return _VOLTAGE, _PHASE_VOLTAGES[c]
    if c in _PHASE_CURRENTS:
        return _CURRENT, _PHASE_CURRENTS[c]
    return _POWER, 1 if c == 1 else -1


def _infer_scales(entries: list[Entry], table: Table) -> tuple[Table, bool]:
    """Collect raw phase voltages, currents and active power for `infer_swiss_scales`."""
    voltages = [0, 0, 0]
    currents = [0, 0, 0]
    power = 0
    for code, value, scaler_unit, _container, _index in entries:
        if scaler_unit is not None or type(value) is not int or code[0] != 1 or code[3] != 7:
            continue  # (as `_is_inference_input`, written out so that the type checker sees the int)
        c = code[2]
        if c in _PHASE_VOLTAGES:
            voltages[_PHASE_VOLTAGES[c]] = value
        elif c in _PHASE_CURRENTS:
            currents[_PHASE_CURRENTS[c]] = value
        elif c == 1:
            power += value
        elif c == 2:
            power -= value
    return infer_swiss_scales(table, voltages, currents, power)


def _scale(code: bytes, scaler_unit: object, table: Table | None) -> tuple[str | None, int]:
    """(canonical unit, power of ten) for a number: the frame's scaler/unit, else the family table."""
    if scaler_unit is not None:
        scaler, unit_enum = cast(tuple[int, int], scaler_unit)
        unit, extra = UNITS.get(unit_enum, (None, 0))
        return unit, scaler + extra
    if table is not None:
        kind = quantity(code)
        if kind is not None:
            scale = table.get(kind)
            if scale is not None:
                return scale
    return None, 0


def _stamp_value(stamp: datetime | None, raw: bytes) -> Value:
    return _new_value((_iso(stamp, raw) if stamp is not None else raw.hex().upper(), None))


# `datetime.isoformat` formats through printf (~3 us); a reading has one or two stamps. The same
# text from cached pieces: the date changes once a day, the offset twice a year.
_CLOCK_PARTS: Final = tuple(f"{i:02d}:" for i in range(60))
_SECONDS: Final = tuple(f"{i:02d}" for i in range(60))
_DATE_TEXT: dict[bytes, str] = {}  # COSEM year, month, day bytes -> "YYYY-MM-DDT"
_OFFSET_TEXT: dict[object, str] = {}  # tzinfo -> "+HH:MM"
_MAX_CACHED: Final = 64


def _iso(stamp: datetime, raw: bytes) -> str:
    """`stamp.isoformat()` for the datetime `cosem_datetime` made from the 12 bytes `raw`."""
    date_text = _DATE_TEXT.get(raw[:4])
    if date_text is None:
        if len(_DATE_TEXT) >= _MAX_CACHED:
            _DATE_TEXT.clear()
        date_text = _DATE_TEXT[raw[:4]] = f"{stamp.year:04d}-{stamp.month:02d}-{stamp.day:02d}T"
    text = date_text + _CLOCK_PARTS[stamp.hour] + _CLOCK_PARTS[stamp.minute] + _SECONDS[stamp.second]
    if stamp.microsecond:
        text += f".{stamp.microsecond:06d}"
    tz = stamp.tzinfo
    if tz is not None:
        offset = _OFFSET_TEXT.get(tz)
        if offset is None:
            if len(_OFFSET_TEXT) >= _MAX_CACHED:
                _OFFSET_TEXT.clear()
            offset = _OFFSET_TEXT[tz] = stamp.replace(microsecond=0).isoformat()[19:]
        text += offset
    return text


def _apply(raw: int | float, exponent: int) -> int | float:
    """raw x 10^exponent as the nearest float to the exact decimal (no 85823.28000000001)."""
    if exponent == 0:
        return raw
    if exponent > 0:
        return raw * _POW10[exponent] if exponent < 24 else raw * 10.0**exponent
    # Division by an exactly representable power of ten is correctly rounded.
    return raw / _POW10F[-exponent] if -exponent < 23 else raw * 10.0**exponent


def _printable(value: bytes) -> bool:
    return value.isascii() and value.decode("ascii").isprintable()


def _text(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        if value.isascii():
            text = value.decode("ascii")
            if text.isprintable():
                return text
        return value.hex().upper()
    return str(value)


def _plain(value: object) -> ValueData:
    """A non-numeric A-XDR value as JSON-ready data (module docstring of axdr for the types)."""
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, DateTime):
        stamp = cosem_datetime(bytes(value))
        return stamp.isoformat() if stamp else value.hex().upper()
    if isinstance(value, Date):
        day: date | None = cosem_date(bytes(value))
        return day.isoformat() if day else value.hex().upper()
    if isinstance(value, Time):
        return cosem_time(bytes(value)) or value.hex().upper()
    if isinstance(value, bytes):
        return _text(value)
    if isinstance(value, BitString):
        return str(value)
    if isinstance(value, list | tuple):
        return [_scalar(item) for item in value]
    return str(value)


def _scalar(value: object) -> Scalar:
    plain = _plain(value)
    if isinstance(plain, list):
        return str(plain)
    return plain


def _zero_deviation(raw: bytes) -> bool:
    return raw[9:11] == b"\x00\x00"


def _flag(text: str) -> str | None:
    head = text[:3]
    return head if len(head) == 3 and head.isalpha() and head.isupper() else None


def _flag_from_title(system_title: str | None) -> str | None:
    if not system_title or len(system_title) < 6:
        return None
    try:
        head = bytes.fromhex(system_title[:6]).decode("ascii")
    except ValueError:
        return None
    return _flag(head)


def _flag_from_meter_id(meter_id: str) -> str | None:
    """DIN 43863-5 meter numbers: a digit, then the 3-letter FLAG id (`1KFM0200182517`)."""
    if len(meter_id) >= 4 and meter_id[0].isdigit():
        return _flag(meter_id[1:4])
    return None
