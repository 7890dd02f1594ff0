"""``python -m ccm_localkafka.devsecrets DIR``: the secret files of the secure compose stack.

``docker-compose.secure.yml`` mounts these files as secrets (``make compose-secrets`` writes
them to ``deploy/secrets/dev/``, which git ignores):

- ``ca.crt`` (and ``ca.key``): a throw-away CA; every client trusts ``ca.crt``
- ``kafka-broker.p12`` with ``kafka-broker.properties`` (``keystore.password=...``, read by the
  broker's FileConfigProvider): the broker's key and certificate for ``kafka`` and
  ``localhost``
- ``<principal>.password`` for each Kafka principal (SCRAM-SHA-512 users created at start)
- ``web-token``: the bearer token for the workers' patient-data endpoints

For a laptop or CI only: a real deployment takes its certificates from the organisation's CA
and its passwords from its secret store. Existing files are kept (``--force`` replaces them).
Files are world-readable (0644) because compose bind-mounts them with their host permissions
into containers that run as other users; the CA key stays 0600.
"""

from __future__ import annotations

import argparse
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path

from ccm_localkafka.tls import TlsError, make_ca

PRINCIPALS = ("ccm-worker", "ehr-producer", "billing-reader")
"""Kafka users of the secure compose stack (README "Security": what each may do)."""

FILES = (
    "ca.crt",
    "kafka-broker.p12",
    "kafka-broker.properties",
    *(f"{p}.password" for p in PRINCIPALS),
    "web-token",
)
"""The files the compose stack mounts."""


def make_dev_secrets(directory: Path, force: bool = False) -> list[Path]:
    """Write the secret files into ``directory``; return the files written now."""
    directory.mkdir(parents=True, exist_ok=True)
    if not force and all((directory / name).is_file() for name in FILES):
        return []
    written: list[Path] = []
    ca = make_ca(directory / "ca-work", name="ccm-dev-ca")
    broker = ca.issue("kafka-broker", hosts=("kafka", "localhost", "127.0.0.1"))
    keystore_password = secrets.token_urlsafe(24)
    keystore = broker.pkcs12(keystore_password)

    def put(name: str, data: bytes, mode: int = 0o644) -> None:
        path = directory / name
        path.write_bytes(data)
        path.chmod(mode)
        written.append(path)

    put("ca.crt", ca.cert.read_bytes())
    put("ca.key", ca.key.read_bytes(), 0o600)
    put("kafka-broker.p12", keystore.read_bytes())
    put("kafka-broker.properties", f"keystore.password={keystore_password}\n".encode())
    for principal in PRINCIPALS:
        put(f"{principal}.password", (secrets.token_urlsafe(24) + "\n").encode())
    put("web-token", (secrets.token_urlsafe(32) + "\n").encode())
    for leftover in sorted((directory / "ca-work").iterdir()):
        leftover.unlink()
    (directory / "ca-work").rmdir()
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ccm_localkafka.devsecrets",
        description="Throw-away CA, broker keystore, Kafka passwords and web token for "
        "docker-compose.secure.yml.",
    )
    parser.add_argument("directory", type=Path, help="where to write (deploy/secrets/dev)")
    parser.add_argument("--force", action="store_true", help="replace existing files")
    args = parser.parse_args(argv)
    try:
        written = make_dev_secrets(args.directory, args.force)
    except TlsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if written:
        print(f"wrote {len(written)} files to {args.directory}", file=sys.stderr)
    else:
        print(f"{args.directory}: secrets already there (--force replaces them)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
