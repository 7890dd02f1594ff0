"""``ccm-tally``: one entry point, one subcommand per thing a person does.

A mistake a person can fix (a missing file, a bad option, no broker) is reported as one line
on stderr with a non-zero exit, never a traceback: commands raise :class:`CliError`, and the
argument parser reports its own errors on one line too.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tomllib
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import IO, NoReturn, cast

from pydantic import ValidationError

from ccm_core import asyncapi
from ccm_core.config import CoreConfig, load_config
from ccm_core.contracts import BillingRecordEnvelope, Outcome
from ccm_core.fhir import charge_items, latest_records, transaction_bundle
from ccm_core.ingest import LocalTally
from ccm_core.schemas import all_schemas
from ccm_core.settings import Topics
from ccm_core.tally import Output, TallyEngine, coalesce_status

from .progress import Progress, add_progress_flag, wanted

USAGE_EXIT_CODE = 2


class CliError(Exception):
    """A problem a person can fix, shown as one line (``ccm-tally CMD: error: ...``)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line (the usage is one ``--help`` away)."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_EXIT_CODE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def os_reason(exc: OSError) -> str:
    """``No such file or directory`` rather than ``[Errno 2] No such file or directory: 'x'``."""
    return exc.strerror or type(exc).__name__


def validation_line(err: ValidationError) -> str:
    """The first error of a pydantic validation, on one line: ``field: message``."""
    first = err.errors(include_url=False, include_input=False)[0]
    where = ".".join(str(p) for p in first["loc"])
    return f"{where}: {first['msg']}" if where else str(first["msg"])


def config_from_args(profiles: Path | None, practices: Path | None) -> CoreConfig:
    """Payer profiles and practice settings, or a :class:`CliError` naming the bad file."""
    for flag, path in (("--profiles", profiles), ("--practices", practices)):
        if path is not None and not path.is_file():
            state = "is a directory" if path.is_dir() else "does not exist"
            raise CliError(f"{flag} {path} {state}", USAGE_EXIT_CODE)
    try:
        return load_config(profiles, practices)
    except OSError as exc:
        raise CliError(f"cannot read a configuration file: {os_reason(exc)}") from None
    except tomllib.TOMLDecodeError as exc:
        raise CliError(f"a configuration file is not valid TOML: {exc}") from None
    except ValidationError as err:
        raise CliError(f"invalid configuration: {validation_line(err)}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise CliError(f"invalid configuration: {exc}") from None


def _config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profiles", type=Path, help="extra payer profiles (TOML)")
    parser.add_argument("--practices", type=Path, help="practice settings (TOML)")


def aware_datetime(text: str) -> datetime:
    """An ISO 8601 timestamp that must carry a UTC offset (records never lose their zone)."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 time (e.g. 2026-04-06T00:00:00Z)"
        ) from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no UTC offset (e.g. 2026-04-06T00:00Z)")
    return moment


def service_month(text: str) -> str:
    """``YYYY-MM``, two-digit month (``2026-03``, not ``2026-3``)."""
    if not re.fullmatch(r"20[0-9]{2}-(0[1-9]|1[0-2])", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a month YYYY-MM (e.g. 2026-03)")
    return text


def web_port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is outside 0..65535")
    return port


def _open_input(path: Path) -> IO[bytes]:
    try:
        return open(path, "rb")
    except OSError as exc:
        raise CliError(f"cannot read {path}: {os_reason(exc)}") from None


def cmd_replay(args: argparse.Namespace) -> int:
    engine = TallyEngine(config_from_args(args.profiles, args.practices))
    tally = LocalTally(engine)
    src = _open_input(args.events)
    try:
        out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout  # noqa: SIM115
    except OSError as exc:
        src.close()
        raise CliError(f"cannot write {args.out}: {os_reason(exc)}") from None
    counts = {"threshold": 0, "billing_record": 0, "rejected": 0, "fhir_chargeitem": 0, "status": 0}
    statuses: list[Output] = []  # --status: the last of each patient-month, written at the end

    def write(outputs: list[Output]) -> None:
        for output in outputs:
            if output.kind == "status":
                if args.status:
                    statuses.append(output)
                continue
            counts[output.kind] += 1
            out.write(output.to_json() + "\n")

    try:
        with src:
            for output in tally.feed_lines(src, name=str(args.events)):
                write([output])
        if not args.no_close:
            as_of = args.as_of or tally.latest or datetime.fromisoformat("1970-01-01T00:00:00Z")
            write(tally.close_all(as_of))
        for output in coalesce_status(statuses):
            counts["status"] += 1
            out.write(output.to_json() + "\n")
    except OSError as exc:
        if isinstance(exc, BrokenPipeError):
            raise
        raise CliError(f"replay failed on {args.events}: {os_reason(exc)}") from None
    finally:
        if out is not sys.stdout:
            out.close()
    seen = sum(tally.outcomes.values())
    parts = ", ".join(f"{o.value} {tally.outcomes[o]}" for o in Outcome)
    status_part = f", {counts['status']} status records" if args.status else ""
    print(
        f"replay: {seen} events ({parts}), {tally.closes} month-close commands; "
        f"emitted {counts['threshold']} threshold events, "
        f"{counts['billing_record']} billing records, {counts['rejected']} rejected-input records, "
        f"{counts['fhir_chargeitem']} FHIR ChargeItems{status_part}",
        file=sys.stderr,
    )
    return 0


RECORD_TYPE = "org.ccmtally.billing-record.v1"


def cmd_export_fhir(args: argparse.Namespace) -> int:
    """Billing records (JSON lines of envelopes, as replay writes them or as read from
    ``ccm.billing-record.v1``; other lines are skipped) to FHIR R4 ChargeItems of each record's
    latest revision: a transaction Bundle (PUT by id), or NDJSON (one resource a line)."""
    progress = Progress("export fhir", "lines read", enabled=wanted(args.progress))
    records = []
    skipped = 0
    with _open_input(args.records) as src:  # issue 8: one line, not a traceback
        for number, line in enumerate(src, start=1):
            progress.add()
            if not line.strip():
                continue
            if b'"org.ccmtally.billing-record.v1"' not in line:
                skipped += 1  # other outputs of a replay (thresholds, dead letters, FHIR)
                continue
            try:
                records.append(BillingRecordEnvelope.model_validate_json(line).data)
            except ValidationError as err:
                where = f"{args.records} line {number}"
                raise CliError(f"{where} is not a billing record: {validation_line(err)}") from None
    items = [item for rec, gone in latest_records(records) for item in charge_items(rec, gone)]
    progress.done(f"{len(records):,} records, {len(items):,} ChargeItems")
    try:
        out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout  # noqa: SIM115
    except OSError as exc:
        raise CliError(f"cannot write {args.out}: {os_reason(exc)}") from None
    try:
        if args.format == "ndjson":
            for item in items:
                out.write(json.dumps(item, separators=(",", ":")) + "\n")
        else:
            out.write(json.dumps(transaction_bundle(items), indent=1) + "\n")
    finally:
        if out is not sys.stdout:
            out.close()
    latest = len({r.record_id for r in records})
    print(
        f"export fhir: {len(records)} billing records ({latest} latest revisions) -> "
        f"{len(items)} ChargeItems; {skipped} other lines skipped",
        file=sys.stderr,
    )
    return 0


def cmd_schema_export(args: argparse.Namespace) -> int:
    try:
        args.dir.mkdir(parents=True, exist_ok=True)
        for name, schema in all_schemas().items():
            path = args.dir / f"{name}.schema.json"
            path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n", encoding="utf-8")
            print(path)
        target = args.asyncapi or args.dir / "asyncapi.yaml"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(asyncapi_yaml(), encoding="utf-8")
        print(target)
    except OSError as exc:
        raise CliError(f"cannot write into {args.dir}: {os_reason(exc)}") from None
    return 0


def asyncapi_yaml() -> str:
    """The AsyncAPI 3.0 document of the default settings (not the environment's: the
    committed file must not depend on who generated it)."""
    import yaml

    from ccm_core.settings import Settings

    defaults = Settings.model_construct(topics=Topics.model_construct())
    header = "# Generated by `ccm-tally schema export` (make schemas): do not edit.\n"
    return header + yaml.safe_dump(
        asyncapi.build(defaults), sort_keys=False, allow_unicode=True, width=100
    )


def cmd_console(args: argparse.Namespace) -> int:
    from typing import Any

    from ccm_console.web import run_console
    from ccm_core.settings import Settings

    overrides: dict[str, Any] = {}
    for flag, name in (
        ("bootstrap_servers", "kafka_bootstrap_servers"),
        ("host", "console_host"),
        ("port", "console_port"),
        ("refresh_seconds", "console_refresh_seconds"),
    ):
        value = getattr(args, flag, None)
        if value is not None:
            overrides[name] = value
    settings = Settings().model_copy(update=overrides)
    return run_console(settings)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ccm-tally",
        description="Complex CCM (CPT 99487/99489) time tally: stream worker, replay, tools.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    replay = sub.add_parser(
        "replay", help="run a JSONL file of input events through the core, no broker"
    )
    replay.add_argument(
        "events",
        type=Path,
        help="JSON lines: time logs, voids, enrollment events and month_close commands, "
        "applied in file order",
    )
    replay.add_argument("--out", type=Path, help="write outputs here instead of stdout")
    replay.add_argument(
        "--as-of",
        type=aware_datetime,
        help="close time written on records (default: latest recorded_at in the input)",
    )
    replay.add_argument("--no-close", action="store_true", help="do not close months at the end")
    replay.add_argument(
        "--status",
        action="store_true",
        help="also write each patient-month's final status (what the compacted status topic "
        "holds once compacted), after the other outputs",
    )
    _config_args(replay)
    replay.set_defaults(func=cmd_replay)

    schema = sub.add_parser("schema", help="JSON Schema of the wire formats")
    schema_sub = schema.add_subparsers(dest="schema_command", required=True)
    export = schema_sub.add_parser(
        "export", help="write one .schema.json per format and asyncapi.yaml into DIR"
    )
    export.add_argument("dir", type=Path)
    export.add_argument(
        "--asyncapi", type=Path, help="write the AsyncAPI document here (default DIR/asyncapi.yaml)"
    )
    export.set_defaults(func=cmd_schema_export)

    console = sub.add_parser(
        "console",
        help="the care-team worklist (web page and JSON) over the status topic; any replicas",
    )
    console.add_argument(
        "--bootstrap-servers",
        help="Kafka bootstrap servers (default: env KAFKA_BOOTSTRAP_SERVERS or 127.0.0.1:9092)",
    )
    console.add_argument("--host", help="bind address (default 127.0.0.1, CCM_CONSOLE_HOST)")
    console.add_argument("--port", type=int, help="port (default 6070, CCM_CONSOLE_PORT)")
    console.add_argument("--refresh-seconds", type=float, help="page refresh interval (default 5)")
    console.set_defaults(func=cmd_console)

    export_cmd = sub.add_parser("export", help="hand-off formats of billing records")
    export_sub = export_cmd.add_subparsers(dest="export_command", required=True)
    fhir = export_sub.add_parser(
        "fhir", help="FHIR R4 ChargeItems of each record's latest revision (JSON lines in)"
    )
    fhir.add_argument("records", type=Path, help="JSON lines of billing-record envelopes")
    fhir.add_argument("--out", type=Path, help="write here instead of stdout")
    fhir.add_argument(
        "--format",
        choices=("bundle", "ndjson"),
        default="bundle",
        help="a transaction Bundle (default) or one ChargeItem per line (FHIR bulk NDJSON)",
    )
    add_progress_flag(fhir)
    fhir.set_defaults(func=cmd_export_fhir)

    from ccm_sink.cli import add_sink_commands

    # the sink's parsers are _Parser too (one-line errors); its signature names the base class
    add_sink_commands(cast("argparse._SubParsersAction[argparse.ArgumentParser]", sub))

    try:
        from ccm_worker.cli import add_commands
    except ImportError:  # pragma: no cover - the worker is part of the distribution
        pass
    else:
        add_commands(sub, _config_args)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except CliError as err:
        print(f"{parser.prog} {args.command}: error: {err}", file=sys.stderr)
        return err.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `ccm-tally replay f | head`: the reader left, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error at exit
        return 0
    return code


if __name__ == "__main__":
    raise SystemExit(main())
