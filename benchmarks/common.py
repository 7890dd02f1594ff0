"""Shared helpers of the stream benchmarks: broker, isolated deployments, worker processes.

- :func:`broker` yields a bootstrap address: ``KAFKA_BOOTSTRAP_SERVERS`` if set, else a local
  single-node Kafka (``ccm_localkafka.LocalKafka``) started for the run and stopped after it.
- :class:`Deployment` is one isolated set of topics + app id (consumer group, changelog), so
  several measurements share one broker without seeing each other's data.
- :class:`Worker` runs ``python -m ccm_cli.main worker`` as a real child process configured by
  environment variables (as the demo and the integration tests do), and reads its RSS.
- :class:`OffsetWatch` samples a group's committed offsets with long-lived clients (cheap).
- :func:`synthetic_month` builds small time-log payloads fast (1-3 logs per patient-month),
  for the benchmarks that need many patient-months rather than a realistic log mix.
- :class:`Profiler` samples a worker with py-spy (if installed) and sums the top costs.

Not a test harness: nothing here asserts; the scripts print what they measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import platform
import random
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from ccm_core.settings import Settings, Topics
from ccm_simulator.producer import ProduceStats, produce
from ccm_worker import ops, process

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------ reporting


def header(title: str) -> None:
    """Print what ran where: the title, machine, Python, cores, load, command and date."""
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # retries after topic creation
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count() or 0
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    print(f"== {title}")
    print(
        f"machine: {platform.platform()} {platform.machine()}, "
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"nproc {usable}, load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    print(f"command: {shlex.join([Path(sys.executable).name, *sys.argv])}")
    print(f"date:    {datetime.now(UTC).isoformat(timespec='seconds')}")
    sys.stdout.flush()


def say(text: str) -> None:
    """Progress on stderr (figures go to stdout)."""
    print(f"  .. {text}", file=sys.stderr, flush=True)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of ``values``; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def verdict(ok: bool) -> str:
    return "MET" if ok else "MISSED"


# ------------------------------------------------------------------------------ broker


BROKER_PID: list[int] = []  # the local broker's JVM, for CPU accounting (empty if external)


@contextlib.contextmanager
def broker() -> Iterator[str]:
    """A real Kafka broker for the run: ``KAFKA_BOOTSTRAP_SERVERS`` or a local one."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    if external:
        print(f"broker:  external Kafka at {external}")
        yield external
        return
    from ccm_localkafka import KAFKA_VERSION, LocalKafka

    with LocalKafka() as kafka:
        if kafka.pid is not None:
            BROKER_PID[:] = [kafka.pid]
        print(
            f"broker:  local Apache Kafka {KAFKA_VERSION} (KRaft, single node) at "
            f"{kafka.bootstrap_servers}, started in {kafka.startup_seconds:.1f}s"
        )
        sys.stdout.flush()
        yield kafka.bootstrap_servers


# ------------------------------------------------------------------------------ deployments


@dataclass
class Deployment:
    """One isolated deployment: its own app id and topics (the input may be shared)."""

    bootstrap: str
    partitions: int = 8
    name: str = field(default_factory=lambda: f"b{uuid.uuid4().hex[:8]}")
    timelog: str | None = None  # share another deployment's input topic
    log_level: str = "INFO"

    @property
    def app_id(self) -> str:
        return f"ccm-bench-{self.name}"

    @property
    def topics(self) -> Topics:
        return Topics.prefixed(self.name, timelog=self.timelog)

    @property
    def settings(self) -> Settings:
        return Settings(
            kafka_bootstrap_servers=self.bootstrap,
            app_id=self.app_id,
            partitions=self.partitions,
            topics=self.topics,
            session_timeout_seconds=10.0,
            close_tick_seconds=3600.0,  # closes only when the benchmark asks
            log_level=self.log_level,
        )

    def input_partitions(self) -> list[TopicPartition]:
        t = self.topics
        return [
            TopicPartition(topic, p)
            for topic in (t.timelog, t.month_close)
            for p in range(self.partitions)
        ]

    def output_partitions(self) -> list[TopicPartition]:
        t = self.topics
        return [
            TopicPartition(topic, p)
            for topic in (t.threshold, t.billing_record, t.dlq)
            for p in range(self.partitions)
        ]

    def create_topics(self) -> None:
        """The worker's topics, created explicitly (as ``ccm-tally topics`` does)."""
        from ccm_worker.topics import ensure_topics

        ensure_topics(self.settings)


# ------------------------------------------------------------------------------ workers


class Worker(process.WorkerProcess):
    """``ccm-tally worker`` as a child process of the benchmark (the service's own runner),
    with the process figures the benchmarks print."""

    def __init__(self, deployment: Deployment, workdir: Path, label: str = "worker") -> None:
        super().__init__(deployment.settings, workdir, label)
        self.deployment = deployment

    def spawn(self) -> Worker:
        super().spawn()
        return self

    def start(self, timeout: float = 120.0) -> Worker:
        super().start(timeout)
        return self

    def wait_ready(self, timeout: float = 120.0, poll: float = 0.05) -> float:
        return super().wait_ready(timeout, poll)

    def cpu(self) -> float:
        """CPU seconds the worker process used so far."""
        return cpu_seconds(self.pid)

    def rss_bytes(self) -> int:
        """Resident set size (VmRSS of /proc/PID/status)."""
        return rss_bytes(self.pid)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def broker_cpu() -> float | None:
    return cpu_seconds(BROKER_PID[0]) if BROKER_PID else None


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


@contextlib.contextmanager
def workdir(prefix: str) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield Path(tmp)


@contextlib.contextmanager
def running(*workers: Worker) -> Iterator[tuple[Worker, ...]]:
    """Stop (gracefully) every worker on the way out, whatever happened."""
    try:
        yield workers
    finally:
        for w in workers:
            w.stop(30)


# ------------------------------------------------------------------------------ kafka I/O


async def produce_all(bootstrap: str, topic: str, events: Sequence[Any]) -> ProduceStats:
    """The simulator's fast batched producer (acks=all, idempotent), as fast as possible."""
    stats = await produce(bootstrap, topic, events, None, progress_every=len(events) + 1)
    if stats.failed:
        raise RuntimeError(f"{stats.failed} events not delivered: {stats.errors}")
    return stats


class OffsetWatch:
    """Long-lived admin + consumer clients to read end and committed offsets cheaply."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        self.admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)

    async def __aenter__(self) -> OffsetWatch:
        await self.consumer.start()
        await self.admin.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.admin.close()
        await self.consumer.stop()

    async def ends(self, tps: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        return dict(await self.consumer.end_offsets(list(tps)))

    async def end_total(self, tps: Iterable[TopicPartition]) -> int:
        return sum((await self.ends(tps)).values())

    async def committed(self, group: str, tps: Iterable[TopicPartition]) -> int:
        """Sum of the group's committed offsets over ``tps`` (0 until the group exists)."""
        try:
            offsets = await self.admin.list_consumer_group_offsets(group)
        except KafkaError:  # e.g. no group coordinator yet on a fresh broker
            return 0
        total = 0
        for tp in tps:
            meta = offsets.get(tp)
            if meta is not None and meta.offset > 0:
                total += meta.offset
        return total

    async def wait_committed(
        self,
        group: str,
        tps: Sequence[TopicPartition],
        target: int,
        timeout: float = 600.0,
        interval: float = 0.1,
        samples: list[tuple[float, int]] | None = None,
        alive: Any = None,
    ) -> float:
        """Poll until the group's committed offsets sum to ``target``; return that time."""
        deadline = time.monotonic() + timeout
        while True:
            done = await self.committed(group, tps)
            now = time.monotonic()
            if samples is not None:
                samples.append((now, done))
            if done >= target:
                return now
            if now > deadline:
                raise TimeoutError(f"group {group}: {done}/{target} committed after {timeout}s")
            if alive is not None and not alive():
                raise RuntimeError(f"group {group}: worker died at {done}/{target} committed")
            await asyncio.sleep(interval)


def steady_rate(samples: Sequence[tuple[float, int]], total: int) -> float:
    """Committed events/s between 10% and 90% of ``total`` (start-up and tail excluded)."""
    lo = next(((t, n) for t, n in samples if n >= 0.1 * total), None)
    hi = next(((t, n) for t, n in samples if n >= 0.9 * total), None)
    if lo is None or hi is None or hi[0] <= lo[0]:
        return float("nan")
    return (hi[1] - lo[1]) / (hi[0] - lo[0])


async def read_values(
    bootstrap: str, tps: Sequence[TopicPartition], timeout: float = 300.0
) -> dict[str, list[bytes]]:
    """Every value of ``tps`` up to their current end, per topic (raw bytes)."""
    return await ops.read_raw(bootstrap, tps, timeout)


# ------------------------------------------------------------------------------ payloads


class Payload(NamedTuple):
    key: str
    value: bytes


PRACTICES = ("practice-001", "practice-002", "practice-003")
PAYERS = ("cms", "bcbsm", "priority_health", "medicaid")


def time_log(
    event_id: str,
    patient_id: str,
    practice_id: str,
    payer: str,
    start: datetime,
    minutes: int,
    recorded_at: datetime,
) -> bytes:
    """One valid ``time_logged`` payload (an RN's care coordination: counts for every payer)."""
    return json.dumps(
        {
            "event_type": "time_logged",
            "schema_version": 1,
            "event_id": event_id,
            "patient_id": patient_id,
            "practice_id": practice_id,
            "payer": payer,
            "staff_id": "bench-st-1",
            "role": "rn",
            "credentials": "RN",
            "licensed": True,
            "activity": "care_plan",
            "start": start.isoformat().replace("+00:00", "Z"),
            "minutes": minutes,
            "recorded_at": recorded_at.isoformat().replace("+00:00", "Z"),
        },
        separators=(",", ":"),
    ).encode()


def synthetic_month(
    patients: int,
    month: str = "2026-03",
    logs: tuple[int, int] = (1, 3),
    prefix: str = "bp",
    seed: int = 1,
) -> list[Payload]:
    """``patients`` patient-months of one month, ``logs`` (min, max) logs of 10-45 min each.

    Patient ``{prefix}-pt-0000000`` gets exactly one 30-minute CMS log at 09:00 UTC on the
    month's 2nd day (the recovery benchmark adds minutes to it). Logs of a patient never overlap
    (one per working day), so every minute counts.
    """
    rng = random.Random(seed)
    year, mon = (int(x) for x in month.split("-"))
    out: list[Payload] = []
    seq = 0
    for i in range(patients):
        pid = f"{prefix}-pt-{i:07d}"
        practice = PRACTICES[i % len(PRACTICES)]
        payer = PAYERS[i % len(PAYERS)] if i else "cms"
        count = rng.randint(*logs) if i else 1
        for day in range(2, 2 + count):
            minutes = rng.randint(10, 45) if i else 30
            start = datetime(year, mon, day, 9, rng.randint(0, 59) if i else 0, tzinfo=UTC)
            recorded = datetime(year, mon, day, 18, 0, tzinfo=UTC)
            event_id = f"{prefix}-e-{seq:08d}"
            value = time_log(event_id, pid, practice, payer, start, minutes, recorded)
            out.append(Payload(pid, value))
            seq += 1
    rng.shuffle(out)  # arrival order mixes patients (a patient's own logs may reorder: harmless)
    return out


def replay(payloads: Iterable[Any]) -> tuple[Any, Counter[str]]:
    """The core alone over the same payloads (``LocalTally``) and its outputs by kind."""
    from ccm_core.ingest import LocalTally, Source

    tally = LocalTally()
    kinds: Counter[str] = Counter()
    for offset, p in enumerate(payloads):
        for o in tally.feed(p.value, Source("bench", 0, offset)).outputs:
            kinds[o.kind] += 1
    return tally, kinds


def patient_months(tally: Any) -> int:
    return sum(len(ledger.months) for ledger in tally.ledgers.values())


# ------------------------------------------------------------------------------ profiling


class Profiler:
    """``py-spy record`` attached to a process (``--format raw``: collapsed stacks)."""

    def __init__(self, pid: int, out: Path, rate: int = 100) -> None:
        self.pid = pid
        self.out = out
        self.rate = rate
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.seconds = 0.0

    @staticmethod
    def available() -> str | None:
        found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        return found if Path(found).exists() else None

    def start(self) -> bool:
        exe = self.available()
        if exe is None:
            print("profile: py-spy not installed (pip install py-spy); skipped")
            return False
        self.proc = subprocess.Popen(
            [
                exe,
                "record",
                "--pid",
                str(self.pid),
                "--rate",
                str(self.rate),
                "--format",
                "raw",
                "--output",
                str(self.out),
                "--nonblocking",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.started_at = time.monotonic()
        return True

    def failed(self) -> str | None:
        """py-spy's error if it exited already (e.g. could not attach)."""
        if self.proc is None or self.proc.poll() is None:
            return None
        return (self.proc.stderr.read() if self.proc.stderr else b"").decode(errors="replace")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.seconds = time.monotonic() - self.started_at
            self.proc.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _frame_name(frame: str) -> str:
    # py-spy raw frames: "function (path/to/module.py:123)"; drop the line number
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path = where.rsplit(":", 1)[0]
    for marker in ("site-packages/", "/shared/", "/services/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{name} ({path})"


def summarize_profile(
    path: Path, top: int = 15, seconds: float = 0.0, rate: int = 100
) -> list[str]:
    """Top functions by own and by inclusive samples (py-spy drops idle samples by default)."""
    if not path.exists():
        return ["profile: no output written"]
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_name(f) for f in stack.split(";") if f]
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        total += count
        if not frames:
            continue
        own[frames[-1]] += count
        for name in set(frames):
            incl[name] += count
    if not total:
        return ["profile: no samples"]
    busy = f", ~{100 * total / (seconds * rate):.0f}% of wall time on CPU" if seconds else ""
    lines = [f"profile: {total} non-idle samples at {rate} Hz over {seconds:.1f}s{busy}"]
    lines.append("  top own time (function (module), % of non-idle samples):")
    lines += [f"    {100 * n / total:5.1f}%  {name}" for name, n in own.most_common(top)]
    lines.append("  top inclusive time (function (module), % of non-idle samples):")
    lines += [f"    {100 * n / total:5.1f}%  {name}" for name, n in incl.most_common(top + 15)]
    return lines
