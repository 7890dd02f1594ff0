"""``python -m ccm_localkafka``: run a local Kafka broker until Ctrl-C / SIGTERM.

Prints the bootstrap address (one line on stdout, e.g. ``127.0.0.1:39123``) once the broker
answers; diagnostics go to stderr. ``--fetch-only`` just makes sure the jars are present
(CI pre-fetch) and prints their folder.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from ccm_localkafka.broker import (
    KAFKA_VERSION,
    KafkaLauncherError,
    LocalKafka,
    create_topics_sync,
    ensure_jars,
)


def _parse_topic(spec: str) -> tuple[str, int, bool]:
    """``NAME[:PARTITIONS[:compact]]`` -> (name, partitions, compacted)."""
    parts = spec.split(":")
    if not parts[0] or len(parts) > 3:
        raise argparse.ArgumentTypeError(f"bad topic spec {spec!r}")
    try:
        partitions = int(parts[1]) if len(parts) > 1 and parts[1] else 1
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad partition count in {spec!r}") from None
    compact = len(parts) == 3 and parts[2] == "compact"
    if len(parts) == 3 and not compact:
        raise argparse.ArgumentTypeError(f"third field must be 'compact' in {spec!r}")
    return parts[0], partitions, compact


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ccm_localkafka",
        description=f"Run a single-node Apache Kafka {KAFKA_VERSION} broker (KRaft) on "
        "127.0.0.1 until Ctrl-C or SIGTERM.",
    )
    add_arguments(parser)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The launcher's options (also ``ccm-tally broker``'s)."""
    parser.add_argument(
        "--fetch-only",
        action="store_true",
        help="only make sure the broker jars are present (runs Maven if needed), then exit",
    )
    parser.add_argument(
        "--lib-dir",
        type=Path,
        default=None,
        help="folder for the broker jars (default: $CCM_KAFKA_LIB or deploy/kafka/lib)",
    )
    parser.add_argument(
        "--topic",
        action="append",
        default=[],
        type=_parse_topic,
        metavar="NAME[:PARTITIONS[:compact]]",
        help="create this topic once the broker is up (repeatable)",
    )
    parser.add_argument(
        "--startup-timeout", type=float, default=60.0, help="seconds to wait for the broker"
    )
    parser.add_argument(
        "--secure",
        action="store_true",
        help="also start a SASL_SSL listener (SCRAM user, throw-away CA) and a mutual-TLS "
        "listener; writes the client settings to <dir>/tls/client.env",
    )
    parser.add_argument(
        "--keep-dir",
        action="store_true",
        help="keep the broker's temporary data and log directory on exit",
    )


def main(argv: Sequence[str] | None = None) -> int:
    return run(_build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Run the launcher with parsed :func:`add_arguments` options; the exit code."""
    try:
        if args.fetch_only:
            print(ensure_jars(args.lib_dir), flush=True)
            return 0

        stop = threading.Event()

        def _on_signal(signum: int, frame: FrameType | None) -> None:
            stop.set()

        signal.signal(signal.SIGINT, _on_signal)
        signal.signal(signal.SIGTERM, _on_signal)

        with LocalKafka(
            lib_dir=args.lib_dir,
            startup_timeout_s=args.startup_timeout,
            keep_dir=args.keep_dir,
            secure=args.secure,
        ) as kafka:
            topics: list[tuple[str, int, bool]] = args.topic
            if topics:
                create_topics_sync(
                    kafka.bootstrap_servers,
                    {name: partitions for name, partitions, _ in topics},
                    {name for name, _, compact in topics if compact},
                )
            print(kafka.bootstrap_servers, flush=True)
            if args.secure and kafka.ca is not None:
                env_file = kafka.ca.directory / "client.env"
                env_file.write_text(
                    "".join(f"{k}={v}\n" for k, v in kafka.secure_client_env().items()),
                    encoding="utf-8",
                )
                print(
                    f"SASL_SSL listener {kafka.secure_bootstrap_servers} (SCRAM-SHA-256/512, "
                    f"PLAIN), mutual-TLS listener {kafka.mtls_bootstrap_servers}, "
                    f"CA {kafka.ca_file}\n"
                    f"client settings: set -a; . {env_file}; set +a",
                    file=sys.stderr,
                    flush=True,
                )
            print(
                f"Kafka {KAFKA_VERSION} up in {kafka.startup_seconds:.1f}s (pid {kafka.pid}); "
                f"log: {kafka.log_file}; Ctrl-C to stop",
                file=sys.stderr,
                flush=True,
            )
            while not stop.wait(1.0):
                if not kafka.is_running():
                    print(
                        f"Kafka broker exited unexpectedly; see {kafka.log_file}",
                        file=sys.stderr,
                    )
                    return 1
            print("stopping Kafka broker ...", file=sys.stderr, flush=True)
        return 0
    except KafkaLauncherError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
