"""The benchmark scripts still run (tiny modes). No timing is asserted: benchmarks are measured by
hand and recorded in docs/benchmarks.md, never by tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _corpus() -> Path | None:
    env = os.environ.get("AMSD_CONFORMANCE_DIR")
    path = Path(env) if env else REPO.parent / "shared" / "conformance"
    return path if (path / "cases").is_dir() else None


needs_corpus = pytest.mark.skipif(_corpus() is None, reason="conformance corpus not found (../shared/conformance)")
needs_mosquitto = pytest.mark.skipif(
    not (Path("/usr/sbin/mosquitto").exists() or shutil.which("mosquitto")), reason="mosquitto not installed"
)


def _run(*args: str, timeout: float = 90.0) -> str:
    result = subprocess.run(
        [sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode in (0, 1), f"{args} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@needs_corpus
def test_peers_amsd_only_runs_without_installing_anything() -> None:
    # --amsd-only never creates the peer venv or calls pip; exit 0/1 (1 = a ratio missed) both fine.
    out = _run("bench.peers", "--amsd-only", "--quick")
    assert "Aidon list 3" in out
    assert "DSMR in GCM (built)" in out
    assert "values not found" not in out
    assert " us " in out


@needs_corpus
def test_decode_runs() -> None:
    out = _run("bench.decode", "--repeat", "20", "--only", "kaifa")
    assert "us" in out


def test_decode_stream_runs() -> None:
    out = _run("bench.decode", "--stream", "--frames", "10", "--passes", "1")
    assert "us" in out


@pytest.mark.e2e
@needs_mosquitto
def test_pipeline_runs() -> None:
    out = _run("bench.pipeline", "--meters", "2", "--seconds", "1", "--frames", "5")
    assert "readings/s" in out
