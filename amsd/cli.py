"""Command line entry point. Imports only what the chosen command needs, so that start-up stays fast."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from amsd import __version__

DEFAULT_CONFIG = "/etc/amsd/amsd.toml"

# Exit codes (DESIGN.md section 6).
EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="amsd",
        description="Smart meter HAN/P1 reader: decode DLMS/COSEM and DSMR and publish to MQTT.",
    )
    parser.add_argument("--version", action="version", version=f"amsd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    # --- run -------------------------------------------------------------------------------------
    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("-c", "--config", default=DEFAULT_CONFIG, help=f"TOML config (default {DEFAULT_CONFIG})")
    # Internal: the validated config, handed from the first process image to the lean one (daemon.py).
    run.add_argument("--config-fd", type=int, default=None, help=argparse.SUPPRESS)

    # --- decode ----------------------------------------------------------------------------------
    decode = sub.add_parser(
        "decode",
        help="decode captured frames (hex, amsreader debug dumps, binary captures, stdin)",
        description="Decode HDLC, M-Bus, bare DLMS APDUs or DSMR telegrams from a capture.",
    )
    decode.add_argument("input", nargs="?", default="-", help="file to read (default: stdin)")
    decode.add_argument("--key", metavar="HEX", help="encryption key (GUEK), 32 hex characters")
    decode.add_argument("--auth-key", metavar="HEX", help="authentication key (GAK), 32 hex characters")
    decode.add_argument("--json", action="store_true", help="one JSON object per event")
    decode.add_argument(
        "--profile",
        default="auto",
        help="meter profile for lists without scalers (e.g. kamstrup-se); default auto",
    )
    decode.add_argument(
        "--format",
        choices=("auto", "hex", "binary"),
        default="auto",
        help="how to read the input (default: auto-detect)",
    )

    # --- simulate --------------------------------------------------------------------------------
    simulate = sub.add_parser("simulate", help="simulate a meter on a pty or TCP port")
    simulate.add_argument("--profile", default="aidon-no", help="meter profile (see --list-profiles)")
    simulate.add_argument("--list-profiles", action="store_true", help="list meter profiles and exit")
    simulate.add_argument("--tcp", metavar="[HOST:]PORT", help="serve on a TCP port instead of a pty")
    simulate.add_argument("--key", metavar="HEX", help="encryption key ('off' = plaintext)")
    simulate.add_argument("--auth-key", metavar="HEX", help="authenticate with this key (GCM tag)")
    simulate.add_argument("--speed", type=float, default=1.0, help="time factor (10 = ten times faster)")
    simulate.add_argument("--frames", type=int, default=0, help="stop after this many frames (0 = forever)")
    simulate.add_argument("--noise", type=float, default=0.0, help="probability of corrupting a frame")
    simulate.add_argument("--drop-every", type=int, default=0, help="drop the line every N frames")
    simulate.add_argument("--no-pacing", action="store_true", help="send frames at once, not at baud rate")
    simulate.add_argument("--report", metavar="FILE", help="write a JSON report of frames sent")
    simulate.add_argument("--link", metavar="PATH", help="keep a symlink to the pty slave at PATH")
    simulate.add_argument("--wait-client", action="store_true", help="TCP: send once a client connects")
    simulate.add_argument("--seed", type=int, default=None, help="seed for reproducible values/noise")
    simulate.add_argument(
        "--replay", metavar="FILE", help="replay an `amsd capture` file at its original timing (--speed applies)"
    )

    # --- demo ------------------------------------------------------------------------------------
    demo = sub.add_parser("demo", help="simulated meter through the whole pipeline, no hardware needed")
    demo.add_argument("--profile", default="aidon-no", help="simulated meter profile")
    demo.add_argument("--broker", metavar="HOST[:PORT]", help="MQTT broker (default: try localhost:1883)")
    demo.add_argument("--duration", type=float, default=20.0, help="seconds to run (0 = until Ctrl-C)")
    demo.add_argument("--speed", type=float, default=5.0, help="simulator time factor")

    # --- detect / capture ------------------------------------------------------------------------
    detect = sub.add_parser(
        "detect",
        help="find baud rate, parity and format of a meter port",
        description="Try 2400 8E1, 2400 8N1, 115200 8N1, 9600 7E1, 9600 8N1, 38400 8N1 and 115200 7E1 "
        "in turn; print the first that yields valid frames, the meter, and a [[meters]] block.",
    )
    detect.add_argument("port", help="device path, socket://host:port or rfc2217://host:port")
    detect.add_argument(
        "--seconds", "--timeout", type=float, default=12.0, help="listening time per line setting (default 12)"
    )
    capture = sub.add_parser("capture", help="record raw bytes from a port for a bug report")
    capture.add_argument("port", help="device path, socket://host:port or rfc2217://host:port")
    capture.add_argument(
        "-o", "--output", required=True, help="file to write (timed hex lines; see docs/first-setup.md)"
    )
    capture.add_argument("--baudrate", type=int, default=2400)
    capture.add_argument("--parity", choices=("N", "E", "O"), default="N")
    capture.add_argument("--bytesize", type=int, choices=(7, 8), default=8)
    capture.add_argument("--stopbits", type=int, choices=(1, 2), default=1)
    capture.add_argument("--seconds", type=float, default=60.0, help="how long to record (default 60)")

    # --- check-config ----------------------------------------------------------------------------
    check = sub.add_parser("check-config", help="validate the config and print it with secrets masked")
    check.add_argument("-c", "--config", default=DEFAULT_CONFIG, help=f"TOML file (default {DEFAULT_CONFIG})")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    command: str | None = args.command
    if command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        if command == "decode":
            from amsd.decodecli import decode_command

            return decode_command(args)
        if command == "run":
            from amsd.daemon import run_command

            return run_command(args)
        if command == "simulate":
            from amsd.sim.simulate import simulate_command

            return simulate_command(args)
        if command == "demo":
            from amsd.demo import demo_command

            return demo_command(args)
        if command == "check-config":
            from amsd.config import check_config_command

            return check_config_command(args)
        if command == "detect":
            from amsd.tools import detect_command

            return detect_command(args)
        if command == "capture":
            from amsd.tools import capture_command

            return capture_command(args)
    except KeyboardInterrupt:
        return 130
    parser.error(f"unknown command {command}")
    return EXIT_USAGE  # pragma: no cover
