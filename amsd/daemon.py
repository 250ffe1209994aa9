"""`amsd run`: one reader per meter, one pipeline per meter, one publisher; systemd integration."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from amsd import sdnotify
from amsd.log import get_logger

if TYPE_CHECKING:
    from amsd.accounting import MeterAccounting
    from amsd.pipeline import MeterPipeline
    from amsd.publish import MessageSink, OutMessage, PublisherSettings
    from amsd.reader import LineReader
    from amsd.runconfig import MeterSettings, RunConfig

log = get_logger("amsd.daemon")

DIAGNOSTICS_INTERVAL_S = 60.0
OUTBOX_CHECK_S = 1.0  # how soon retained diagnostics show a drained outbox
STOP_TIMEOUT_S = 8.0  # SIGTERM must end the process within 10 s


def run_command(args: argparse.Namespace) -> int:
    from amsd.log import configure_logging
    from amsd.runconfig import ConfigError, config_from_handover, validate_for_run

    try:
        if args.config_fd is not None:
            # The re-executed image: no amsd.config, so no pydantic (see _exec_lean).
            config = config_from_handover(_read_handover(args.config_fd))
        else:
            from amsd.config import load_config

            config = load_config(args.config).for_run()
        validate_for_run(config)
    except (ConfigError, OSError) as exc:
        print(f"amsd: config error: {exc}", file=sys.stderr)
        return 2
    if args.config_fd is None:
        _exec_lean(config)  # returns only where re-executing is off or impossible
    configure_logging(config.log.level, config.log.format)
    try:
        return asyncio.run(Daemon(config).run())
    except KeyboardInterrupt:
        return 0


HANDOVER_NAME = "amsd-config"


def _read_handover(fd: int) -> bytes:
    """The configuration from the memory file `_exec_lean` made; any other descriptor is refused."""
    from amsd.runconfig import ConfigError

    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        target = ""
    if not target.startswith(f"/memfd:{HANDOVER_NAME}"):
        raise ConfigError("--config-fd is internal to amsd run (it takes only the memory file amsd made)")
    with os.fdopen(fd, "rb") as handover:
        return handover.read()


def _exec_lean(config: RunConfig) -> None:
    """Continue `amsd run` in a fresh process image that never imports pydantic.

    Loading the configuration (pydantic-settings with its sources, about 9 MB resident, and pydantic
    itself, about 7 MB) is needed once, but its memory would stay for the daemon's lifetime. The
    validated configuration, as the plain dataclasses of `amsd.runconfig`, goes into an anonymous
    memory file (it holds the keys: never a named file), and the same command line is executed again
    with `--config-fd`: same PID (systemd's main process, sd_notify), same interpreter and arguments.
    The new image takes the configuration as validated, never imports `amsd.config` or pydantic, and
    accepts only such a memory file. `AMSD_NO_REEXEC=1` turns this off (profilers, debuggers)."""
    from amsd.runconfig import handover_bytes

    if os.environ.get("AMSD_NO_REEXEC") == "1" or not hasattr(os, "memfd_create"):
        return
    try:
        fd = os.memfd_create(HANDOVER_NAME, 0)
        os.write(fd, handover_bytes(config))
        os.lseek(fd, 0, os.SEEK_SET)
        os.set_inheritable(fd, True)
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, [*sys.orig_argv, "--config-fd", str(fd)])
    except OSError as exc:
        # Not fatal: this process has everything it needs, at the cost of more memory.
        print(f"amsd: warning: could not re-execute without the config loader ({exc.strerror})", file=sys.stderr)


def publisher_settings(config: RunConfig) -> PublisherSettings:
    from amsd.publish import PublisherSettings

    mqtt = config.mqtt
    tls = mqtt.tls
    return PublisherSettings(
        host=mqtt.host,
        port=mqtt.port,
        username=mqtt.username,
        password=mqtt.password.get_secret_value() if mqtt.password is not None else None,
        client_id=mqtt.client_id,
        topic_prefix=mqtt.topic_prefix,
        qos=mqtt.qos,
        protocol=mqtt.protocol,
        keepalive=mqtt.keepalive,
        tls=tls is not None,
        tls_ca_file=str(tls.ca_file) if tls and tls.ca_file else None,
        tls_cert_file=str(tls.cert_file) if tls and tls.cert_file else None,
        tls_key_file=str(tls.key_file) if tls and tls.key_file else None,
        tls_insecure=bool(tls and tls.insecure),
        discovery_prefix=config.homeassistant.discovery_prefix if config.homeassistant.enabled else None,
    )


class Daemon:
    """Owns the tasks of `amsd run`; `run()` returns the exit code."""

    def __init__(
        self,
        config: RunConfig,
        *,
        publisher: MessageSink | None = None,
        observer: Callable[[OutMessage], None] | None = None,
    ) -> None:
        """`observer` sees every message the meters produce before it is queued (`amsd demo` prints)."""
        from amsd.decoder import Decoder
        from amsd.outbox import Outbox
        from amsd.pipeline import MeterOptions, MeterPipeline
        from amsd.publish import Publisher

        self.config = config
        if publisher is None:
            publisher = Publisher(
                publisher_settings(config),
                Outbox(config.outbox.path, config.outbox.max_messages),
                on_connect=self._on_connect,
            )
        self.publisher: MessageSink = publisher
        self._observer = observer
        self.pipelines: list[MeterPipeline] = []
        self.readers: list[LineReader] = []
        self._stop = asyncio.Event()
        self._reported_outbox_depth = 0  # in the last diagnostics sent
        discovery = config.homeassistant.discovery_prefix if config.homeassistant.enabled else None
        for meter in config.meters:
            decoder = Decoder(
                meter.encryption_key.get_secret_value() if meter.encryption_key else None,
                meter.authentication_key.get_secret_value() if meter.authentication_key else None,
                profile=meter.profile,
            )
            options = MeterOptions(
                name=meter.name,
                topic_prefix=config.mqtt.topic_prefix,
                publish_raw=meter.publish_raw,
                payload_format=config.mqtt.payload_format,
                retain_values=config.mqtt.retain_values,
                discovery_prefix=discovery,
            )
            pipeline = MeterPipeline(options, decoder, self.submit, accounting=self._accounting(meter.name))
            pipeline.on_change = self._make_change_hook(pipeline)
            self.pipelines.append(pipeline)
            self.readers.append(self._reader(meter, pipeline))

    def _accounting(self, meter_name: str) -> MeterAccounting | None:
        """The meter's accounting when `[accounting]` is on for it (state restored from its file)."""
        settings = self.config.accounting
        if not settings.enabled or (settings.meters is not None and meter_name not in settings.meters):
            return None
        from amsd.accounting import AccountingSettings, MeterAccounting, state_path

        directory = settings.state_dir or self.config.outbox.path.parent
        return MeterAccounting(
            AccountingSettings(
                timezone=settings.timezone,
                peak_hours=settings.peak_hours,
                thresholds_kwh=settings.thresholds_kwh,
                publish_interval_s=settings.publish_interval_s,
            ),
            state_path(directory, meter_name),
            f"{self.config.mqtt.topic_prefix}/{meter_name}/accounting",
        )

    def _reader(self, meter: MeterSettings, pipeline: MeterPipeline) -> LineReader:
        from amsd.tools import meter_line_reader  # baudrate/parity "auto": detection, memory, re-detection

        return meter_line_reader(meter, pipeline, self.config.outbox.path.parent)

    def _make_change_hook(self, pipeline: MeterPipeline) -> Callable[[], None]:
        def changed() -> None:
            self.submit(self._diagnostics(pipeline, self.publisher.stats()))

        return changed

    def _on_connect(self) -> Iterator[OutMessage]:
        """Retained state to (re)send on every connection: availability, diagnostics, discovery."""
        stats = self.publisher.stats()
        for pipeline in self.pipelines:
            if pipeline.available is not None:
                yield pipeline.availability_message()
            yield self._diagnostics(pipeline, stats)
            message = pipeline.discovery_message()
            if message is not None:
                yield message

    def _diagnostics(self, pipeline: MeterPipeline, stats: dict[str, Any]) -> OutMessage:
        self._reported_outbox_depth = int(stats.get("outbox_depth", 0))
        from amsd import payloads
        from amsd.publish import OutMessage

        body = pipeline.diagnostics(stats)
        # Asyncio tasks of the whole daemon: a leak (one per reconnect, per frame) shows as growth here
        # long before memory does; bench/soak.py records it.
        with contextlib.suppress(RuntimeError):  # no running loop (called from a test without one)
            body["tasks"] = len(asyncio.all_tasks())
        return OutMessage(pipeline.topics["diagnostics"], payloads.dumps(body), retain=True)

    def submit(self, message: OutMessage) -> None:
        if self._observer is not None:
            self._observer(message)
        self.publisher.submit(message)

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_stop)
        self.publisher.start()
        for reader in self.readers:
            reader.start()
        meters = ", ".join(f"{m.name}={m.port}" for m in self.config.meters)
        log.info("amsd running", meters=meters, broker=f"{self.config.mqtt.host}:{self.config.mqtt.port}")
        sdnotify.ready()
        sdnotify.status(f"reading {len(self.readers)} meter(s)")
        ticker = asyncio.create_task(self._periodic(), name="amsd-periodic")
        await self._stop.wait()
        log.info("stopping")
        sdnotify.stopping()
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
        await asyncio.gather(*(reader.stop() for reader in self.readers), return_exceptions=True)
        for pipeline in self.pipelines:
            pipeline.flush()
            if pipeline.accounting is not None:
                pipeline.accounting.save()  # the open hour's power estimate survives the restart
        await self.publisher.stop(timeout=STOP_TIMEOUT_S - 2)
        log.info("stopped")
        return 0

    async def _periodic(self) -> None:
        """Diagnostics every 60 s and when the outbox has drained; the systemd watchdog ping."""
        watchdog = sdnotify.watchdog_interval()
        tick = min(watchdog or DIAGNOSTICS_INTERVAL_S, DIAGNOSTICS_INTERVAL_S, OUTBOX_CHECK_S)
        elapsed = 0.0
        while True:
            await asyncio.sleep(tick)
            elapsed += tick
            if watchdog is not None:
                sdnotify.watchdog()
            stats = self.publisher.stats()
            # The diagnostics sent on reconnect carry the backlog of that moment; once it is delivered
            # that is a change of state, or the retained depth would stay stale for up to a minute.
            drained = self._reported_outbox_depth > 0 and not stats.get("outbox_depth", 0)
            if elapsed >= DIAGNOSTICS_INTERVAL_S or drained:
                elapsed = 0.0
                for pipeline in self.pipelines:
                    self.submit(self._diagnostics(pipeline, stats))
