"""`amsd` as a subprocess, and a scripted TCP line, for the CLI end-to-end tests."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

LineScript = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def run_amsd(*args: str, timeout: float = 30.0) -> tuple[int, str, str]:
    """`python -m amsd ARGS` from the repository; returns (exit code, stdout, stderr)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "amsd", *args, cwd=REPO, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@contextlib.asynccontextmanager
async def scripted_line(script: LineScript) -> AsyncIterator[str]:
    """A loopback TCP line whose clients `script` serves; yields its `socket://` address."""
    server = await asyncio.start_server(script, "127.0.0.1", 0)
    try:
        yield f"socket://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        await server.wait_closed()
