"""`tls = true` verifies the broker's certificate (issue 4): against a Mosquitto with a certificate from
a private CA, amsd refuses the connection without `ca_file`, connects with it, and refuses a
certificate issued for another host even when the CA is trusted. The CA and certificates are made
here with `cryptography`; the broker has a plain listener for the test's own subscriber and a TLS one
for amsd."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from amsd.sim.simulate import serve_tcp
from tests.e2e.faults_common import WAIT, AmsdProcess, eventually, timed_listener
from tests.mosquitto import MOSQUITTO, SKIP_REASON, Broker, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(MOSQUITTO is None, reason=SKIP_REASON)]


@dataclass
class Pki:
    ca_file: Path
    cert_file: Path
    key_file: Path
    wrong_host_cert: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_pki(directory: Path) -> Pki:
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("amsd test CA"))
        .issuer_name(_name("amsd test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())

    def server_cert(names: list[x509.GeneralName]) -> x509.Certificate:
        return (
            x509.CertificateBuilder()
            .subject_name(_name("broker"))
            .issuer_name(ca.subject)
            .public_key(server_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )

    pem = serialization.Encoding.PEM
    pki = Pki(directory / "ca.pem", directory / "server.pem", directory / "server.key", directory / "other-host.pem")
    pki.ca_file.write_bytes(ca.public_bytes(pem))
    good = server_cert([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")])
    pki.cert_file.write_bytes(good.public_bytes(pem))
    pki.wrong_host_cert.write_bytes(server_cert([x509.DNSName("broker.example.org")]).public_bytes(pem))
    pki.key_file.write_bytes(
        server_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    pki.key_file.chmod(0o600)
    return pki


@dataclass
class TlsBroker:
    plain: Broker  # carries host/port of the plain listener for the test subscriber
    tls_port: int
    process: subprocess.Popen[bytes]


def start_tls_broker(directory: Path, pki: Pki, cert_file: Path) -> TlsBroker:
    assert MOSQUITTO is not None
    directory.mkdir(parents=True, exist_ok=True)
    plain = Broker(directory)
    tls_port = free_port()
    config = directory / "mosquitto-tls.conf"
    config.write_text(
        "\n".join(
            [
                "per_listener_settings false",
                "allow_anonymous true",
                "persistence false",
                "user root" if os.geteuid() == 0 else "",
                f"listener {plain.port} 127.0.0.1",
                f"listener {tls_port} 127.0.0.1",
                f"cafile {pki.ca_file}",
                f"certfile {cert_file}",
                f"keyfile {pki.key_file}",
                "",
            ]
        )
    )
    log = (directory / "mosquitto-tls.log").open("ab")
    process = subprocess.Popen([MOSQUITTO, "-c", str(config)], stdout=log, stderr=subprocess.STDOUT)
    log.close()
    return TlsBroker(plain, tls_port, process)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path)


@pytest.fixture
def tls_broker(tmp_path: Path, pki: Pki) -> Iterator[TlsBroker]:
    running = start_tls_broker(tmp_path / "broker", pki, pki.cert_file)
    yield running
    running.process.terminate()
    running.process.wait(10)


def config_text(port: int, meter_port: str, tls: str) -> str:
    return (
        f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\nclient_id = "amsd-tls-{port}"\n{tls}'
        '[homeassistant]\nenabled = false\n[log]\nlevel = "info"\nformat = "json"\n'
        f'[[meters]]\nname = "m"\nport = "{meter_port}"\n'
    )


async def wait_listening(broker: TlsBroker) -> None:
    async def connectable() -> None:
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", broker.tls_port)
            except OSError:
                await asyncio.sleep(0.02)
                continue
            writer.close()
            return

    await asyncio.wait_for(connectable(), WAIT)


def outbox_line(tmp_path: Path) -> str:
    return f'[outbox]\npath = "{tmp_path / "outbox.sqlite3"}"\n'


async def test_tls_true_without_ca_file_refuses_a_private_ca_and_connects_with_it(
    tmp_path: Path, pki: Pki, tls_broker: TlsBroker
) -> None:
    await wait_listening(tls_broker)
    sim = await serve_tcp("kamstrup-no", speed=100, pacing=False, seed=71)
    try:
        async with timed_listener(tls_broker.plain, "amsd/#") as sub:
            # 1. System CAs only: the broker's certificate is not trusted, amsd does not connect.
            untrusted = tmp_path / "untrusted.toml"
            untrusted.write_text(
                config_text(tls_broker.tls_port, sim.address, "tls = true\n").replace(
                    "[homeassistant]", outbox_line(tmp_path) + "[homeassistant]"
                )
            )
            async with AmsdProcess(untrusted, tmp_path, "amsd-untrusted") as amsd:
                await eventually(lambda: "mqtt unavailable" in amsd.output())
                await eventually(
                    lambda: "CERTIFICATE_VERIFY_FAILED" in amsd.output() or "certificate verify failed" in amsd.output()
                )
                assert await amsd.stop() == 0
            assert not sub.on("amsd/status") and not sub.on("amsd/m/state")

            # 2. With the CA: connected, readings flow.
            trusted = tmp_path / "trusted.toml"
            trusted.write_text(
                config_text(tls_broker.tls_port, sim.address, f'[mqtt.tls]\nca_file = "{pki.ca_file}"\n').replace(
                    "[homeassistant]", outbox_line(tmp_path) + "[homeassistant]"
                )
            )
            async with AmsdProcess(trusted, tmp_path, "amsd-trusted") as amsd:
                await sub.until(lambda: b"online" in sub.on("amsd/status") and len(sub.on("amsd/m/state")) >= 2)
                assert await amsd.stop() == 0
            assert "mqtt unavailable" not in amsd.output()
    finally:
        await asyncio.wait_for(sim.stop(), WAIT)


async def test_certificate_for_another_host_is_refused_even_with_the_ca(tmp_path: Path, pki: Pki) -> None:
    broker = start_tls_broker(tmp_path / "broker", pki, pki.wrong_host_cert)
    try:
        await wait_listening(broker)
        sim = await serve_tcp("kamstrup-no", speed=100, pacing=False, seed=72)
        try:
            config = tmp_path / "amsd.toml"
            config.write_text(
                config_text(broker.tls_port, sim.address, f'[mqtt.tls]\nca_file = "{pki.ca_file}"\n').replace(
                    "[homeassistant]", outbox_line(tmp_path) + "[homeassistant]"
                )
            )
            async with timed_listener(broker.plain, "amsd/#") as sub, AmsdProcess(config, tmp_path) as amsd:
                await eventually(lambda: "mqtt unavailable" in amsd.output())
                await eventually(lambda: "IP address mismatch" in amsd.output() or "hostname" in amsd.output().lower())
                assert await amsd.stop() == 0
            assert not sub.on("amsd/status")
        finally:
            await asyncio.wait_for(sim.stop(), WAIT)
    finally:
        broker.process.terminate()
        broker.process.wait(10)
