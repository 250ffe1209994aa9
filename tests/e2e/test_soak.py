"""Short soak in CI (issue 4, scenario 8): 5,000 frames from three simulated meters (HDLC, HDLC with
list variants, M-Bus + AES-CTR) through `amsd run` and Mosquitto. Every frame is accounted for and
RSS, open fds and asyncio tasks stay flat. The full 100,000-frame run is `python -m bench.soak`
(docs/reliability.md)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bench.soak import run_soak
from tests.mosquitto import MOSQUITTO, SKIP_REASON

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(MOSQUITTO is None, reason=SKIP_REASON),
    pytest.mark.skipif(shutil.which("mosquitto_sub") is None, reason="mosquitto_sub is not installed"),
]


@pytest.mark.timeout(90)
async def test_short_soak_accounts_for_every_frame_and_stays_flat(tmp_path: Path) -> None:
    result = await run_soak(
        tmp_path, frames=5000, meters=3, rate=100.0, interval=2.0, rss_slack_mib=6.0, log=lambda _: None
    )
    assert result.frames_sent >= 5000
    assert result.accounted, (result.problems, result.per_meter)
    assert result.flat, (result.problems, result.samples)
    # No noise on these lines: every frame is a reading, and every reading reached the subscriber.
    for name, row in result.per_meter.items():
        assert row["frames_ok"] == row["frames_sent"] == row["readings_received"], (name, row)
    assert all(s.tasks is not None for s in result.samples[1:]), result.samples
