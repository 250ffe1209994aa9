"""A real Mosquitto broker for tests, on a free loopback port, started and stopped by the test."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd")
SKIP_REASON = "mosquitto is not installed (bash scripts/test.sh installs it: apt-get install mosquitto)"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Broker:
    """`mosquitto -c <generated config>`; `users` enables password authentication, `acl` an ACL file."""

    def __init__(
        self,
        workdir: Path,
        *,
        port: int | None = None,
        users: dict[str, str] | None = None,
        persistence: bool = False,
        acl: str | None = None,
    ) -> None:
        if MOSQUITTO is None:
            raise RuntimeError(SKIP_REASON)
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.users = users
        # With persistence, a SIGTERM'd broker saves sessions and queued QoS 1 messages and restores them on
        # start: a subscriber with clean_session=False then misses nothing across a broker restart.
        self.persistence = persistence
        self.acl = acl  # the text of a mosquitto ACL file
        self.process: subprocess.Popen[bytes] | None = None
        self.log = workdir / f"mosquitto-{self.port}.log"

    def _config(self) -> Path:
        # Mosquitto queues at most 1,000 messages for a subscriber that falls behind and then drops the
        # rest silently: a test subscriber reading a burst must not lose messages that way.
        lines = [f"listener {self.port} 127.0.0.1", "user root" if os.geteuid() == 0 else "", "max_queued_messages 0"]
        if self.persistence:
            lines += ["persistence true", f"persistence_location {self.workdir}/"]
        else:
            lines.append("persistence false")
        if self.users:
            if MOSQUITTO_PASSWD is None:
                raise RuntimeError("mosquitto_passwd is not installed")
            password_file = self.workdir / f"passwd-{self.port}"
            password_file.write_text("")
            for user, password in self.users.items():
                subprocess.run([MOSQUITTO_PASSWD, "-b", str(password_file), user, password], check=True)
            password_file.chmod(0o600)
            lines += ["allow_anonymous false", f"password_file {password_file}"]
        else:
            lines.append("allow_anonymous true")
        if self.acl is not None:
            acl_file = self.workdir / f"acl-{self.port}"
            acl_file.write_text(self.acl)
            lines.append(f"acl_file {acl_file}")
        path = self.workdir / f"mosquitto-{self.port}.conf"
        path.write_text("\n".join(lines) + "\n")
        return path

    def start(self, timeout: float = 10.0) -> Broker:
        assert MOSQUITTO is not None
        config = self._config()
        with self.log.open("ab") as log:
            self.process = subprocess.Popen([MOSQUITTO, "-c", str(config)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.log.read_text(errors='replace')[-500:]}")
            with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), timeout=0.2):
                return self
            time.sleep(0.02)
        raise RuntimeError("mosquitto did not start listening in time")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
