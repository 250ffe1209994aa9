"""A short, bounded fuzz run in CI: the built-in mutator for a few seconds in-process, and the
coverage-guided atheris mode for a few seconds as a subprocess when atheris is installed. The long
run is `fuzz/fuzz_decoder.py --atheris --seconds 600` (docs/reliability.md)."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "fuzz"))

import fuzz_decoder  # noqa: E402


def test_builtin_mutator_runs_without_failure() -> None:
    pool = fuzz_decoder.load_seeds(None)
    assert len(pool) >= 20  # simulator frames at least; the conformance corpus adds more when present
    runs, rate = fuzz_decoder.run_builtin(8.0, seed=1, pool=pool)
    assert runs > 1000, (runs, rate)


def test_every_seed_decodes_cleanly_with_every_key_set() -> None:
    pool = fuzz_decoder.load_seeds(None)
    for seed in pool:
        for index in range(len(fuzz_decoder.KEYS)):
            fuzz_decoder.target(bytes([index]) + seed)


@pytest.mark.skipif(importlib.util.find_spec("atheris") is None, reason="atheris is not installed (optional)")
@pytest.mark.timeout(120)
def test_atheris_coverage_guided_run_finds_no_crash(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "fuzz" / "fuzz_decoder.py"), "--atheris", "--seconds", "6",
         "--corpus", str(tmp_path / "corpus"), f"-artifact_prefix={tmp_path}/"],
        capture_output=True, text=True, timeout=100, cwd=tmp_path,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert not list(tmp_path.glob("crash-*")), output[-3000:]
    coverage = [int(n) for n in re.findall(r"cov: (\d+)", output)]
    assert coverage and max(coverage) > 500, output[-2000:]  # instrumented: edges in amsd were reached
