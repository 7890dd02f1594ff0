"""A real, single-node Apache Kafka broker (KRaft) for tests and the local demo.

The broker's jars come from Maven Central through the pinned ``deploy/kafka/pom.xml``
(:func:`ensure_jars`); :class:`LocalKafka` runs them with the machine's Java 17 on free ports
bound to 127.0.0.1, in a throw-away directory, and waits until the broker answers a Kafka
metadata request before handing out :attr:`LocalKafka.bootstrap_servers`.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import concurrent.futures
import contextlib
import ctypes
import ctypes.util
import fcntl
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Collection, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, TypeVar

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code

from ccm_localkafka.tls import CertificateAuthority, make_ca

__all__ = [
    "KAFKA_VERSION",
    "SCALA_BINARY_VERSION",
    "KafkaLauncherError",
    "LocalKafka",
    "SaslUser",
    "create_topics",
    "create_topics_sync",
    "ensure_jars",
]

KAFKA_VERSION = "3.9.1"
"""The one pinned Apache Kafka version (must match ``kafka.version`` in deploy/kafka/pom.xml)."""
SCALA_BINARY_VERSION = "2.13"

LIB_ENV = "CCM_KAFKA_LIB"
"""Environment variable naming a folder with the broker jars (filled by Maven if incomplete)."""

_DEPLOY_DIR = Path(__file__).resolve().parent.parent
POM_PATH = _DEPLOY_DIR / "kafka" / "pom.xml"
DEFAULT_LIB_DIR = _DEPLOY_DIR / "kafka" / "lib"

# Jars that must be present for the broker and the storage tool to run.
_REQUIRED_JARS = (
    f"kafka_{SCALA_BINARY_VERSION}-{KAFKA_VERSION}.jar",
    f"kafka-clients-{KAFKA_VERSION}.jar",
    f"kafka-server-{KAFKA_VERSION}.jar",
    f"kafka-server-common-{KAFKA_VERSION}.jar",
    f"kafka-storage-{KAFKA_VERSION}.jar",
    f"kafka-raft-{KAFKA_VERSION}.jar",
    f"kafka-metadata-{KAFKA_VERSION}.jar",
    f"kafka-group-coordinator-{KAFKA_VERSION}.jar",
    f"kafka-transaction-coordinator-{KAFKA_VERSION}.jar",
)
_REQUIRED_JAR_PATTERNS = ("scala-library-*.jar", "slf4j-reload4j-*.jar", "reload4j-*.jar")
# Jars of which exactly one version may be on the class path.
_SINGLE_VERSION_PREFIXES = (f"kafka_{SCALA_BINARY_VERSION}-", "kafka-clients-", "kafka-server-")

_T = TypeVar("_T")


class KafkaLauncherError(RuntimeError):
    """The broker's jars could not be fetched, or the broker did not start or answer."""


# --------------------------------------------------------------------------------------------
# Jars
# --------------------------------------------------------------------------------------------


def _missing_jars(lib_dir: Path) -> list[str]:
    if not lib_dir.is_dir():
        return [*_REQUIRED_JARS, *_REQUIRED_JAR_PATTERNS]
    missing = [name for name in _REQUIRED_JARS if not (lib_dir / name).is_file()]
    missing += [pat for pat in _REQUIRED_JAR_PATTERNS if not any(lib_dir.glob(pat))]
    return missing


def _check_single_versions(lib_dir: Path) -> None:
    """Refuse a lib folder that mixes Kafka versions (e.g. left over from a version bump)."""
    for prefix in _SINGLE_VERSION_PREFIXES:
        versions = {
            p.name
            for p in lib_dir.glob(f"{prefix}*.jar")
            if re.fullmatch(re.escape(prefix) + r"\d[\w.\-]*\.jar", p.name)
        }
        if len(versions) > 1:
            raise KafkaLauncherError(
                f"{lib_dir} holds several versions of the same Kafka jar ({sorted(versions)}); "
                f"delete the folder and run ensure_jars() again (pinned: {KAFKA_VERSION})"
            )


def _resolve_lib_dir(cache_dir: Path | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir).expanduser().resolve()
    env = os.environ.get(LIB_ENV, "").strip()
    if env:
        return Path(env).expanduser().resolve()
    return DEFAULT_LIB_DIR


def ensure_jars(cache_dir: Path | None = None) -> Path:
    """Make sure the broker's jars are in a folder and return that folder.

    The folder is ``cache_dir`` if given, else ``$CCM_KAFKA_LIB`` if set, else
    ``deploy/kafka/lib``. If every needed jar is already there this only looks at the file
    system (no Maven, no JVM); otherwise it runs
    ``mvn -q -B -f deploy/kafka/pom.xml dependency:copy-dependencies -DoutputDirectory=<folder>``
    under a file lock, so concurrent callers (e.g. pytest-xdist workers) fetch only once.
    """
    lib_dir = _resolve_lib_dir(cache_dir)
    if not _missing_jars(lib_dir):
        _check_single_versions(lib_dir)
        return lib_dir

    if not POM_PATH.is_file():
        raise KafkaLauncherError(
            f"Kafka jars missing in {lib_dir} and no pom.xml at {POM_PATH} to fetch them; "
            f"point {LIB_ENV} at a folder holding the Kafka {KAFKA_VERSION} broker jars"
        )
    mvn = shutil.which("mvn")
    if mvn is None:
        raise KafkaLauncherError(
            "Maven ('mvn') is not on PATH, so the Kafka broker jars cannot be fetched; "
            "run .ci/install-system.sh (installs maven and openjdk-17-jre-headless), "
            f"or point {LIB_ENV} at a folder holding the Kafka {KAFKA_VERSION} jars"
        )

    lib_dir.mkdir(parents=True, exist_ok=True)
    lock_path = lib_dir / ".fetch.lock"  # inside lib/ (git-ignored); java's lib/* skips non-jars
    with lock_path.open("a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            if _missing_jars(lib_dir):  # somebody else may have fetched while we waited
                cmd = [
                    mvn,
                    "-q",
                    "-B",
                    "-f",
                    str(POM_PATH),
                    "dependency:copy-dependencies",
                    f"-DoutputDirectory={lib_dir}",
                ]
                proc = subprocess.run(
                    cmd, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL
                )
                if proc.returncode != 0:
                    raise KafkaLauncherError(
                        f"Maven failed to fetch the Kafka jars (exit {proc.returncode}): "
                        f"{' '.join(cmd)}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
                    )
                still_missing = _missing_jars(lib_dir)
                if still_missing:
                    raise KafkaLauncherError(
                        f"Maven ran but {lib_dir} still lacks: {', '.join(still_missing)}"
                    )
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
    _check_single_versions(lib_dir)
    return lib_dir


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _run_coro_sync(factory: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    """Run a coroutine to completion from sync code, even if the caller has a running loop."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _free_ports(n: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < n:
        port = _free_port()
        if port not in ports:
            ports.append(port)
    return ports


def _random_cluster_id() -> str:
    """A Kafka ``Uuid`` string (URL-safe base64 of 16 random bytes), as StorageTool makes them."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode("ascii").rstrip("=")
        if not cid.startswith("-"):  # Kafka avoids ids that look like a CLI flag
            return cid


def _tail(path: Path, max_bytes: int = 6000) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return f"<no {path.name}>"


_WORK_DIR_PREFIX = "ccm-kafka-"
_OWNER_FILE = "launcher.pid"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sweep_stale_work_dirs() -> None:
    """Remove work dirs left by launchers that were killed (SIGKILL skips our clean-up)."""
    for path in Path(tempfile.gettempdir()).glob(f"{_WORK_DIR_PREFIX}*"):
        owner = path / _OWNER_FILE
        try:
            pid = int(owner.read_text(encoding="ascii").strip())
        except (OSError, ValueError):
            continue  # not ours, a kept dir (keep_dir=True drops the file), or just being made
        if _pid_alive(pid):
            continue
        try:  # a broker still logging belongs to someone (e.g. another PID namespace)
            if time.time() - (path / "logs" / "server.log").stat().st_mtime < 300:
                continue
        except OSError:
            pass
        shutil.rmtree(path, ignore_errors=True)


def _error_lines(log_file: Path, limit: int = 20) -> str:
    """The broker log's ERROR/FATAL lines (with their stack-trace lines), at most ``limit``."""
    picked: list[str] = []
    in_error = False
    try:
        with log_file.open(encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("["):
                    in_error = " ERROR " in line or " FATAL " in line
                if in_error:
                    picked.append(line.rstrip("\n"))
                    if len(picked) >= limit:
                        break
    except OSError:
        return f"<no {log_file.name}>"
    return "\n".join(picked)


def _run_with_timeout(
    cmd: list[str], out: IO[bytes], *, timeout_s: float
) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
            timeout=timeout_s,
        )
    except subprocess.TimeoutExpired:
        raise KafkaLauncherError(f"timed out after {timeout_s:.0f}s: {' '.join(cmd)}") from None


def _die_with_parent() -> None:
    """preexec_fn: ask Linux to SIGTERM the child when the launching thread/process dies."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return
    libc = ctypes.CDLL(libc_name, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)


# --------------------------------------------------------------------------------------------
# Topics
# --------------------------------------------------------------------------------------------


async def create_topics(
    bootstrap_servers: str,
    topics: Mapping[str, int],
    compacted: Collection[str] = frozenset(),
    *,
    replication_factor: int = 1,
    configs: Mapping[str, Mapping[str, str]] | None = None,
    timeout_s: float = 30.0,
    client_options: Mapping[str, Any] | None = None,
) -> list[str]:
    """Create ``topics`` ({name: partitions}); return the names that were newly created.

    Idempotent: a topic that already exists is left as it is (whatever its partition count).
    Names in ``compacted`` get ``cleanup.policy=compact``; ``configs`` adds per-topic configs.
    Returns once every requested topic is visible in the broker's metadata with a leader for
    each partition, so producers and consumers can use them at once. ``client_options`` go to
    the admin client as they are (TLS and SASL: ``security_protocol``, ``ssl_context`` ...).
    """
    unknown = set(compacted) - set(topics)
    if unknown:
        raise ValueError(f"compacted names not in topics: {sorted(unknown)}")
    if not topics:
        return []
    new_topics = []
    for name, partitions in topics.items():
        topic_configs: dict[str, str] = {}
        if name in compacted:
            topic_configs["cleanup.policy"] = "compact"
        if configs and name in configs:
            topic_configs.update(configs[name])
        new_topics.append(
            NewTopic(
                name=name,
                num_partitions=partitions,
                replication_factor=replication_factor,
                topic_configs=topic_configs,
            )
        )

    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap_servers,
        client_id="ccm-localkafka-admin",
        request_timeout_ms=int(timeout_s * 1000),
        **dict(client_options or {}),
    )
    created: list[str] = []
    try:
        await admin.start()
        response = await admin.create_topics(new_topics, timeout_ms=int(timeout_s * 1000))
        errors: list[str] = []
        for entry in response.topic_errors:
            name, code = str(entry[0]), int(entry[1])
            message = str(entry[2]) if len(entry) > 2 and entry[2] else ""
            if code == 0:
                created.append(name)
            elif code != TopicAlreadyExistsError.errno:
                errors.append(f"{name}: {for_code(code).__name__} {message}".rstrip())
        if errors:
            raise KafkaLauncherError("could not create topics: " + "; ".join(errors))

        deadline = time.monotonic() + timeout_s
        wanted = set(topics)
        while True:
            described = await admin.describe_topics(list(wanted))
            ready = {
                str(t["topic"])
                for t in described
                if t["error_code"] == 0
                and t["partitions"]
                and all(p["leader"] >= 0 for p in t["partitions"])
            }
            if ready >= wanted:
                break
            if time.monotonic() > deadline:
                raise KafkaLauncherError(
                    f"topics created but not ready after {timeout_s}s: {sorted(wanted - ready)}"
                )
            await asyncio.sleep(0.05)
    finally:
        await admin.close()
    return created


def create_topics_sync(
    bootstrap_servers: str,
    topics: Mapping[str, int],
    compacted: Collection[str] = frozenset(),
    *,
    replication_factor: int = 1,
    configs: Mapping[str, Mapping[str, str]] | None = None,
    timeout_s: float = 30.0,
    client_options: Mapping[str, Any] | None = None,
) -> list[str]:
    """Blocking form of :func:`create_topics` (safe to call with or without a running loop)."""
    return _run_coro_sync(
        lambda: create_topics(
            bootstrap_servers,
            topics,
            compacted,
            replication_factor=replication_factor,
            configs=configs,
            timeout_s=timeout_s,
            client_options=client_options,
        )
    )


# --------------------------------------------------------------------------------------------
# Broker
# --------------------------------------------------------------------------------------------

_LOG4J_PROPERTIES = """\
log4j.rootLogger=INFO, file
log4j.appender.file=org.apache.log4j.FileAppender
log4j.appender.file.File={log_file}
log4j.appender.file.Append=true
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka=INFO
log4j.logger.org.apache.kafka=INFO
log4j.logger.kafka.request.logger=WARN
log4j.logger.kafka.network.RequestChannel$=WARN
log4j.logger.kafka.controller=INFO
log4j.logger.state.change.logger=WARN
log4j.logger.kafka.log.LogCleaner=INFO
log4j.logger.kafka.authorizer.logger=WARN
"""


SASL_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN")
"""Mechanisms the SASL_SSL listener accepts (SCRAM users are created at storage format)."""


@dataclass(frozen=True)
class SaslUser:
    """A SASL user of the secure listener (SCRAM-SHA-256, SCRAM-SHA-512 and PLAIN)."""

    username: str
    password: str = field(repr=False)


class LocalKafka:
    """A single-node KRaft Apache Kafka broker on 127.0.0.1, started and stopped by Python.

    Use as a context manager (``with LocalKafka() as kafka: kafka.bootstrap_servers``) or call
    :meth:`start` / :meth:`stop`. Everything the broker writes (data, metadata log, its own
    logs in ``logs/server.log``) lives in a temporary directory that :meth:`stop` removes
    (unless ``keep_dir``). Topics are not auto-created: create them with :func:`create_topics`.

    ``secure=True`` adds, beside the plaintext listener, a **SASL_SSL** listener
    (:attr:`secure_bootstrap_servers`; SCRAM-SHA-256/512 and PLAIN, users ``sasl_users`` or
    one random user, SCRAM credentials created at storage format) and an **SSL** listener
    that requires a client certificate (:attr:`mtls_bootstrap_servers`). A throw-away CA made
    at start signs the broker's certificate (:attr:`ca`; clients trust :attr:`ca_file`, and
    ``ca.issue(name)`` makes client certificates for mutual TLS).

    For wire checks it also has a second SASL_SSL listener, the *tap*, that advertises a port
    nobody listens on yet (:attr:`tap_port`): a test runs a recording TCP relay there to
    :attr:`tap_target_port`, and since the broker tells clients to come back to the advertised
    port, every byte of every connection of such a client passes the relay.
    """

    def __init__(
        self,
        *,
        lib_dir: Path | None = None,
        startup_timeout_s: float = 60.0,
        heap: str = "512m",
        extra_properties: Mapping[str, str] | None = None,
        keep_dir: bool = False,
        java: str | None = None,
        secure: bool = False,
        sasl_users: Collection[SaslUser] | None = None,
    ) -> None:
        self._lib_dir_arg = lib_dir
        self.secure = secure
        self.sasl_users: tuple[SaslUser, ...] = tuple(
            sasl_users or (SaslUser("ccm", secrets.token_urlsafe(24)),)
        )
        for user in self.sasl_users:
            if not re.fullmatch(r"[A-Za-z0-9_.\-]+", user.username) or not re.fullmatch(
                r"[A-Za-z0-9_.\-]+", user.password
            ):
                raise ValueError("SASL user names and passwords: letters, digits, _ . - only")
        self.secure_port: int | None = None
        self.mtls_port: int | None = None
        self.tap_port: int | None = None
        """Advertised port of the tap listener (free: for a relay to listen on)."""
        self.tap_target_port: int | None = None
        """Where the tap listener really listens (the relay forwards there)."""
        self.ca: CertificateAuthority | None = None
        self._keystore: Path | None = None
        self._keystore_password = ""
        self.startup_timeout_s = startup_timeout_s
        self.heap = heap
        self.extra_properties: dict[str, str] = dict(extra_properties or {})
        self.keep_dir = keep_dir
        self._java = java
        self.work_dir: Path | None = None
        self.broker_port: int | None = None
        self.controller_port: int | None = None
        self.cluster_id: str | None = None
        self.startup_seconds: float | None = None
        """Wall time of :meth:`start` (jar check, storage format, JVM start, first answer)."""
        self._proc: subprocess.Popen[bytes] | None = None

    # -- public properties ----------------------------------------------------------------

    @property
    def bootstrap_servers(self) -> str:
        if self.broker_port is None or self._proc is None:
            raise KafkaLauncherError("LocalKafka is not running; call start() first")
        return f"127.0.0.1:{self.broker_port}"

    @property
    def secure_bootstrap_servers(self) -> str:
        """The SASL_SSL listener ("127.0.0.1:port"); needs ``secure=True``."""
        if self.secure_port is None or self._proc is None:
            raise KafkaLauncherError("no SASL_SSL listener: start LocalKafka(secure=True)")
        return f"127.0.0.1:{self.secure_port}"

    @property
    def mtls_bootstrap_servers(self) -> str:
        """The SSL listener that requires a client certificate; needs ``secure=True``."""
        if self.mtls_port is None or self._proc is None:
            raise KafkaLauncherError("no mutual-TLS listener: start LocalKafka(secure=True)")
        return f"127.0.0.1:{self.mtls_port}"

    def secure_client_env(self) -> dict[str, str]:
        """``CCM_*`` variables that make a ccm-tally client use the SASL_SSL listener as the
        first SASL user (SCRAM-SHA-512, password in a file, the throw-away CA)."""
        assert self.ca is not None
        return {
            "KAFKA_BOOTSTRAP_SERVERS": self.secure_bootstrap_servers,
            "CCM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "CCM_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "CCM_KAFKA_SASL_USERNAME": self.sasl_users[0].username,
            "CCM_KAFKA_SASL_PASSWORD_FILE": str(self.ca.directory / "sasl-password"),
            "CCM_KAFKA_SSL_CAFILE": str(self.ca.cert),
        }

    @property
    def ca_file(self) -> Path:
        """The throw-away CA (PEM) that signed the broker's certificate."""
        if self.ca is None:
            raise KafkaLauncherError("no CA: start LocalKafka(secure=True)")
        return self.ca.cert

    @property
    def log_file(self) -> Path | None:
        return None if self.work_dir is None else self.work_dir / "logs" / "server.log"

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- lifecycle --------------------------------------------------------------------------

    def __enter__(self) -> LocalKafka:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> LocalKafka:
        """Start the broker and block until it answers; raise :class:`KafkaLauncherError`."""
        if self._proc is not None:
            raise KafkaLauncherError("LocalKafka already started")
        t0 = time.monotonic()
        java = self._java or shutil.which("java")
        if java is None:
            raise KafkaLauncherError(
                "Java is not on PATH; run .ci/install-system.sh (openjdk-17-jre-headless)"
            )
        lib_dir = ensure_jars(self._lib_dir_arg)
        classpath = str(lib_dir / "*")
        _sweep_stale_work_dirs()

        attempts = 3  # a free port can be taken by someone else between probe and bind
        for attempt in range(1, attempts + 1):
            self.work_dir = Path(tempfile.mkdtemp(prefix=_WORK_DIR_PREFIX))
            if not self.keep_dir:
                (self.work_dir / _OWNER_FILE).write_text(f"{os.getpid()}\n", encoding="ascii")
            try:
                self._start_once(java, classpath)
            except _PortClashError:
                self._kill()
                self._remove_work_dir()
                if attempt == attempts:
                    raise KafkaLauncherError("broker could not bind its ports") from None
                continue
            except BaseException:
                self._kill()
                if not self.keep_dir:
                    self._remove_work_dir()
                raise
            break
        atexit.register(self.stop)  # never leave a JVM behind if the caller forgets stop()
        self.startup_seconds = time.monotonic() - t0
        return self

    def _start_once(self, java: str, classpath: str) -> None:
        assert self.work_dir is not None
        deadline = time.monotonic() + self.startup_timeout_s  # jar fetching not counted
        work = self.work_dir
        data_dir = work / "data"
        logs_dir = work / "logs"
        logs_dir.mkdir()
        ports = _free_ports(6 if self.secure else 2)
        self.broker_port, self.controller_port = ports[0], ports[1]
        self.cluster_id = _random_cluster_id()
        scram_args: list[str] = []
        if self.secure:
            self.secure_port, self.mtls_port = ports[2], ports[3]
            self.tap_target_port, self.tap_port = ports[4], ports[5]
            self._make_tls(work / "tls")
            for user in self.sasl_users:
                for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-512"):
                    scram_args += [
                        "--add-scram",
                        f"{mechanism}=[name={user.username},password={user.password}]",
                    ]

        props_file = work / "server.properties"
        props_file.write_text(self._server_properties(data_dir), encoding="utf-8")
        log4j_file = work / "log4j.properties"
        log4j_file.write_text(
            _LOG4J_PROPERTIES.format(log_file=logs_dir / "server.log"), encoding="utf-8"
        )
        common_jvm = [
            "-Djava.awt.headless=true",
            f"-Dlog4j.configuration=file:{log4j_file}",
            f"-Dkafka.logs.dir={logs_dir}",
        ]

        fmt_log = logs_dir / "format.log"
        with fmt_log.open("wb") as out:
            fmt = _run_with_timeout(
                [
                    java,
                    "-Xmx256m",
                    "-XX:+UseSerialGC",
                    "-XX:TieredStopAtLevel=1",
                    *common_jvm,
                    "-cp",
                    classpath,
                    "kafka.tools.StorageTool",
                    "format",
                    "-t",
                    self.cluster_id,
                    "-c",
                    str(props_file),
                    *scram_args,
                ],
                out,
                timeout_s=self.startup_timeout_s,
            )
        if fmt.returncode != 0:
            raise KafkaLauncherError(
                f"kafka.tools.StorageTool format failed (exit {fmt.returncode}):\n" + _tail(fmt_log)
            )

        stdout_log = logs_dir / "stdout.log"
        with stdout_log.open("wb") as out:
            self._proc = subprocess.Popen(
                [
                    java,
                    f"-Xms{self.heap}",
                    f"-Xmx{self.heap}",
                    "-XX:+UseG1GC",
                    "-XX:MaxGCPauseMillis=20",
                    "-XX:InitiatingHeapOccupancyPercent=35",
                    "-XX:+ExplicitGCInvokesConcurrent",
                    *common_jvm,
                    "-cp",
                    classpath,
                    "kafka.Kafka",
                    str(props_file),
                ],
                cwd=work,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C in a terminal reaches us, not the JVM
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - prctl only, no locks taken
            )
        self._wait_until_ready(deadline)

    def _server_properties(self, data_dir: Path) -> str:
        bp, cp = self.broker_port, self.controller_port
        props: dict[str, str] = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{cp}",
            "listeners": f"PLAINTEXT://127.0.0.1:{bp},CONTROLLER://127.0.0.1:{cp}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{bp}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(data_dir),
            # Topics are created explicitly (see design.md), never by a producer's typo.
            "auto.create.topics.enable": "false",
            "num.partitions": "1",
            "default.replication.factor": "1",
            "min.insync.replicas": "1",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "10",
            "group.initial.rebalance.delay.ms": "0",
            # Compacted changelogs: keep the cleaner on, with small segments so it has work.
            "log.cleaner.enable": "true",
            "log.cleaner.backoff.ms": "1000",
            "log.cleaner.dedupe.buffer.size": str(32 * 1024 * 1024),
            "log.segment.bytes": str(1024 * 1024),
            "log.retention.check.interval.ms": "60000",
            "num.network.threads": "3",
            "num.io.threads": "4",
            "num.recovery.threads.per.data.dir": "1",
            "delete.topic.enable": "true",
        }
        if self.secure:
            props.update(self._secure_properties())
        props.update(self.extra_properties)
        return "".join(f"{k}={v}\n" for k, v in props.items())

    def _make_tls(self, tls_dir: Path) -> None:
        """A throw-away CA and the broker's certificate (PKCS#12 keystore, random password)."""
        self.ca = make_ca(tls_dir)
        password_file = tls_dir / "sasl-password"
        password_file.write_text(self.sasl_users[0].password + "\n", encoding="utf-8")
        password_file.chmod(0o600)
        broker = self.ca.issue("broker", hosts=("127.0.0.1", "localhost"))
        self._keystore_password = secrets.token_urlsafe(16)
        self._keystore = broker.pkcs12(self._keystore_password)

    def _secure_properties(self) -> dict[str, str]:
        """The SASL_SSL and mutual-TLS listeners (the plaintext one stays for the rest)."""
        assert self.ca is not None
        bp, cp, sp, mp = self.broker_port, self.controller_port, self.secure_port, self.mtls_port
        tp, ta = self.tap_target_port, self.tap_port
        scram = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        plain_users = " ".join(f'user_{u.username}="{u.password}"' for u in self.sasl_users)
        plain = f"org.apache.kafka.common.security.plain.PlainLoginModule required {plain_users};"
        props = {
            "listeners": f"PLAINTEXT://127.0.0.1:{bp},CONTROLLER://127.0.0.1:{cp},"
            f"SECURE://127.0.0.1:{sp},MTLS://127.0.0.1:{mp},TAP://127.0.0.1:{tp}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{bp},SECURE://127.0.0.1:{sp},"
            f"MTLS://127.0.0.1:{mp},TAP://127.0.0.1:{ta}",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,"
            "SECURE:SASL_SSL,MTLS:SSL,TAP:SASL_SSL",
            "listener.name.secure.sasl.enabled.mechanisms": ",".join(SASL_MECHANISMS),
            "listener.name.secure.scram-sha-256.sasl.jaas.config": scram,
            "listener.name.secure.scram-sha-512.sasl.jaas.config": scram,
            "listener.name.secure.plain.sasl.jaas.config": plain,
            "listener.name.tap.sasl.enabled.mechanisms": ",".join(SASL_MECHANISMS),
            "listener.name.tap.scram-sha-256.sasl.jaas.config": scram,
            "listener.name.tap.scram-sha-512.sasl.jaas.config": scram,
            "listener.name.tap.plain.sasl.jaas.config": plain,
            "listener.name.mtls.ssl.client.auth": "required",
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(self.ca.cert),
        }
        for listener in ("secure", "mtls", "tap"):
            props |= {
                f"listener.name.{listener}.ssl.keystore.type": "PKCS12",
                f"listener.name.{listener}.ssl.keystore.location": str(self._keystore),
                f"listener.name.{listener}.ssl.keystore.password": self._keystore_password,
                f"listener.name.{listener}.ssl.key.password": self._keystore_password,
                f"listener.name.{listener}.ssl.enabled.protocols": "TLSv1.3,TLSv1.2",
            }
        return props

    def _wait_until_ready(self, deadline: float) -> None:
        assert self._proc is not None and self.log_file is not None
        last_error = "no attempt yet"
        while True:
            if self._proc.poll() is not None:
                errors = _error_lines(self.log_file)
                if "Address already in use" in errors or "BindException" in errors:
                    raise _PortClashError(errors)
                raise KafkaLauncherError(
                    f"Kafka broker exited with code {self._proc.returncode} during start-up.\n"
                    f"--- ERROR lines of {self.log_file} ---\n{errors}\n"
                    f"--- {self.log_file} (tail) ---\n{_tail(self.log_file, 3000)}\n"
                    f"--- stdout/stderr ---\n{_tail(self.log_file.with_name('stdout.log'))}"
                )
            if time.monotonic() > deadline:
                raise KafkaLauncherError(
                    f"Kafka broker did not answer within {self.startup_timeout_s:.0f}s "
                    f"(last error: {last_error}).\n--- {self.log_file} (tail) ---\n"
                    + _tail(self.log_file)
                )
            if self._port_open():
                try:
                    info = _run_coro_sync(self._describe_cluster)
                except Exception as exc:  # any failure means "not yet"; retried until deadline
                    last_error = f"{type(exc).__name__}: {exc}"
                else:
                    brokers = info.get("brokers") or []
                    if info.get("cluster_id") not in (None, self.cluster_id):
                        raise KafkaLauncherError(
                            f"port {self.broker_port} answers for another cluster "
                            f"({info.get('cluster_id')}), not ours ({self.cluster_id})"
                        )
                    if brokers and int(info.get("controller_id", -1)) >= 0:
                        return
                    last_error = f"metadata not ready yet: {info}"
            time.sleep(0.1)

    def _port_open(self) -> bool:
        assert self.broker_port is not None
        try:
            with socket.create_connection(("127.0.0.1", self.broker_port), timeout=0.5):
                return True
        except OSError:
            return False

    async def _describe_cluster(self) -> dict[str, Any]:
        admin = AIOKafkaAdminClient(
            bootstrap_servers=f"127.0.0.1:{self.broker_port}",
            client_id="ccm-localkafka-probe",
            request_timeout_ms=5000,
        )
        try:
            await admin.start()
            info: dict[str, Any] = await admin.describe_cluster()
            return info
        finally:
            await admin.close()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop the broker (SIGTERM, then SIGKILL after ``timeout_s``) and remove its directory.

        Safe to call more than once, and after a failed :meth:`start`.
        """
        atexit.unregister(self.stop)
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self._kill()
        self._proc = None
        if not self.keep_dir:
            self._remove_work_dir()

    def _kill(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        self._proc = None

    def _remove_work_dir(self) -> None:
        if self.work_dir is not None:
            shutil.rmtree(self.work_dir, ignore_errors=True)
            self.work_dir = None

    def __repr__(self) -> str:
        state = f"running at {self.bootstrap_servers}" if self.is_running() else "stopped"
        return f"<LocalKafka {KAFKA_VERSION} {state}>"


class _PortClashError(KafkaLauncherError):
    """The broker lost the race for a port we had probed as free; retried with new ports."""
