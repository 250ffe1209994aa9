"""GCM invocation counter tracking: flag replayed or decreasing counters, per system title.

A meter increments its invocation counter for every ciphered APDU, and the counter is part of the GCM
IV: an equal counter under the same key means a replayed frame (or a second meter sharing the system
title), a smaller one means a replay of an older frame.

Policy (sans-IO, no clock):
- Only frames that decrypted (tag verified, or plaintext plausible) are tracked, so that line noise or
  a wrong key can never move the baseline.
- The first counter seen for a system title is the baseline. A larger counter is accepted; gaps are
  normal (frames lost on the line, lists not listened to).
- An equal or smaller counter is flagged: the caller reports the frame as `UndecodedFrame(layer
  "cipher", error "replayed_counter")` instead of a reading.
- A meter whose counter really went backwards (meter reset, replaced, re-keyed with the same system
  title) must not be locked out forever: `rebaseline_after` consecutive flagged frames whose counters
  increase among themselves are taken as the new sequence; the last of them is accepted and counted in
  `rebaselines`. Any accepted frame in between (the genuine meter still talking) resets that run, so a
  replay interleaved with the live meter never becomes the baseline; whoever can suppress every
  genuine frame on the line controls the reading anyway.
- At most `max_titles` system titles are remembered (least recently seen forgotten first), so a noisy
  or hostile line cannot grow memory.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from enum import Enum
from typing import Final

REPLAYED_COUNTER: Final = "replayed_counter"
DEFAULT_REBASELINE_AFTER: Final = 3
DEFAULT_MAX_TITLES: Final = 64


class Verdict(Enum):
    ACCEPTED = "accepted"
    REPLAYED = "replayed"  # equal to or below the last accepted counter
    REBASELINED = "rebaselined"  # accepted as the start of a new, lower sequence


@dataclass(slots=True)
class _TitleState:
    last: int  # highest accepted counter
    run_last: int | None = None  # last counter of the current run of flagged, increasing counters
    run_length: int = 0


class InvocationCounterTracker:
    """Remembers the last accepted invocation counter per system title."""

    def __init__(self, rebaseline_after: int = DEFAULT_REBASELINE_AFTER, max_titles: int = DEFAULT_MAX_TITLES) -> None:
        if rebaseline_after < 1:
            raise ValueError("rebaseline_after must be at least 1")
        if max_titles < 1:
            raise ValueError("max_titles must be at least 1")
        self.rebaseline_after = rebaseline_after
        self.max_titles = max_titles
        self._titles: OrderedDict[str, _TitleState] = OrderedDict()
        self.replayed = 0
        self.rebaselines = 0

    def last(self, system_title: str) -> int | None:
        """The last accepted counter for `system_title`, if it is known."""
        state = self._titles.get(system_title)
        return None if state is None else state.last

    def check(self, system_title: str, counter: int) -> Verdict:
        """Record a decrypted frame's counter and say whether to accept it."""
        titles = self._titles
        state = titles.get(system_title)
        if state is None:
            titles[system_title] = _TitleState(counter)
            if len(titles) > self.max_titles:
                titles.popitem(last=False)
            return Verdict.ACCEPTED
        titles.move_to_end(system_title)
        if counter > state.last:
            state.last = counter
            state.run_last, state.run_length = None, 0
            return Verdict.ACCEPTED
        # Replayed or decreasing. Consecutive such frames that increase among themselves may be a
        # meter that restarted its count.
        if state.run_last is not None and counter > state.run_last:
            state.run_length += 1
        else:
            state.run_length = 1
        state.run_last = counter
        if state.run_length >= self.rebaseline_after:
            state.last = counter
            state.run_last, state.run_length = None, 0
            self.rebaselines += 1
            return Verdict.REBASELINED
        self.replayed += 1
        return Verdict.REPLAYED

    def detail(self, system_title: str, counter: int) -> str:
        """Human-readable reason for a flagged frame (no key material: counters are sent in clear)."""
        last = self.last(system_title)
        relation = "repeats" if counter == last else "is below"
        return (
            f"invocation counter {counter} {relation} the last accepted {last} for system title {system_title}: "
            f"replayed frame (a meter that restarted its count is accepted after {self.rebaseline_after} "
            "consecutive increasing frames)"
        )
