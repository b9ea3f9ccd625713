"""A real Kafka broker (KRaft) for tests, started with scripts/kafka, always stopped.

The oracle of the Kafka listener's tests: the same client scenario runs against the
engine's listener and against this broker (each a :class:`Target`), and the answers are
compared. Skipped with the
reason where Java 17+ or Kafka's jars cannot be had (scripts/kafka assemble fetches them
with Maven once, scripts/servers does it ahead); in CI (CI=true) that is a failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient, NewTopic
from engine_harness import Daemon, wait_for
from test_kafka_listener import Raw, kafka_settings

from engine import Admin
from engine.kafka import schemas

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "kafka"
#: What `scripts/kafka start` waits for its nodes at most (the JVMs start in ~10 s).
START_WAIT_S = 120.0
#: A cold assembly downloads ~45 MB of jars through Maven.
ASSEMBLE_WAIT_S = 600.0


class Kafka:
    """A running Kafka started from DIR: the settings of DIR/kafka.json (the shape of
    `engine status --json`'s "kafka" object, plus version and nodes)."""

    def __init__(self, dir: Path) -> None:
        self.dir = dir
        self.settings: dict[str, Any] = json.loads((dir / "kafka.json").read_text())

    @property
    def bootstrap_servers(self) -> str:
        return str(self.settings["bootstrap_servers"])

    @property
    def version(self) -> str:
        return str(self.settings["version"])

    def librdkafka_config(self, **extra: Any) -> dict[str, Any]:
        """confluent-kafka's settings to reach this broker (SASL SCRAM-SHA-256)."""
        k = self.settings
        return {
            "bootstrap.servers": k["bootstrap_servers"],
            "security.protocol": k["security_protocol"],
            "sasl.mechanism": k["sasl_mechanism"],
            "sasl.username": k["sasl_username"],
            "sasl.password": k["sasl_password"],
        } | extra

    def admin_client(self) -> AdminClient:
        return AdminClient(self.librdkafka_config())

    def print_logs(self, lines: int = 60) -> None:
        """The last lines of each node's log (shown with a failure)."""
        for node in self.settings["nodes"]:
            log = Path(node["dir"]) / "server.log"
            if log.exists():
                tail = log.read_text(errors="replace").splitlines()[-lines:]
                print(f"----- kafka node {node['node_id']} server.log (last {len(tail)}) -----")
                print("\n".join(tail))


def _run_script(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout
    )


def kafka_unavailable() -> str | None:
    """Why no real Kafka can run here (no Java 17+, no jars and no Maven), else None.
    Assembles the jars when they are not cached yet."""
    if not os.environ.get("JAVA_HOME") and shutil.which("java") is None:
        return "no Java (17 or later) for a real Kafka: scripts/servers installs it"
    try:
        proc = _run_script("assemble", timeout=ASSEMBLE_WAIT_S)
    except subprocess.TimeoutExpired:
        return f"scripts/kafka assemble took more than {ASSEMBLE_WAIT_S:.0f} s"
    if proc.returncode != 0:
        return proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "assemble failed"
    return None


def require_kafka() -> None:
    """Skipped with the reason where a real Kafka cannot run, except in CI: a failure."""
    reason = kafka_unavailable()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI runs the real-Kafka tests", pytrace=False)
    pytest.skip(reason)


@contextlib.contextmanager
def running_kafka(tmp_dir: Path, nodes: int = 1) -> Iterator[Kafka]:
    """NODES combined broker+controller nodes started from TMP_DIR, ready (every broker
    registered) when this yields, and stopped afterwards, also on failure."""
    try:
        proc = _run_script(
            "start", "--dir", str(tmp_dir), "--nodes", str(nodes), "--wait", str(START_WAIT_S),
            timeout=START_WAIT_S + 60,
        )  # fmt: skip
        if proc.returncode != 0:
            raise AssertionError(f"scripts/kafka start exited {proc.returncode}: {proc.stderr}")
        kafka = Kafka(tmp_dir)
        try:
            yield kafka
        except BaseException:
            kafka.print_logs()
            raise
    finally:
        _run_script("stop", "--dir", str(tmp_dir), timeout=60)


# -- the two sides of a comparison -----------------------------------------------------------

#: Every oracle topic's config on both sides (the engine's ring must hold two batches of
#: max.message.bytes; Kafka has no ring).
TOPIC_CONFIG: dict[str, int] = {"max.message.bytes": 500_000}
ENGINE_ONLY_CONFIG: dict[str, int] = {"ring.bytes": 1 << 20}


@dataclass
class Target:
    """One side of an oracle comparison: the engine's Kafka listener ("engine") or a real
    Kafka ("kafka"), reached with the same settings (SASL_PLAINTEXT) by the same clients."""

    name: str
    #: bootstrap_servers, security_protocol, sasl_mechanism, sasl_username, sasl_password.
    settings: dict[str, Any]
    _create: Callable[[str, int, dict[str, int]], None]

    def __str__(self) -> str:
        return self.name

    @property
    def bootstrap_servers(self) -> str:
        return str(self.settings["bootstrap_servers"])

    def librdkafka_config(self, **extra: Any) -> dict[str, Any]:
        k = self.settings
        return {
            "bootstrap.servers": k["bootstrap_servers"],
            "security.protocol": k["security_protocol"],
            "sasl.mechanism": k["sasl_mechanism"],
            "sasl.username": k["sasl_username"],
            "sasl.password": k["sasl_password"],
        } | extra

    def admin_client(self) -> AdminClient:
        return AdminClient(self.librdkafka_config())

    def create_topic(self, partitions: int = 1, config: dict[str, int] | None = None) -> str:
        """A new topic (TOPIC_CONFIG, then CONFIG), returned once its leader answers
        ListOffsets for each partition (Kafka's broker shows a new topic in Metadata a
        moment before its partitions take requests)."""
        name = f"o-{uuid.uuid4().hex[:10]}"
        self._create(name, partitions, TOPIC_CONFIG | (config or {}))
        asked = [
            {"partition_index": p, "current_leader_epoch": -1, "timestamp": -1}
            for p in range(partitions)
        ]
        with self.raw() as conn:

            def led() -> bool:
                answer = conn.request(schemas.LIST_OFFSETS, 7, {
                    "replica_id": -1, "isolation_level": 0,
                    "topics": [{"name": name, "partitions": asked}],
                })  # fmt: skip
                assert answer is not None
                return all(p["error_code"] == 0 for p in answer["topics"][0]["partitions"])

            wait_for(led, timeout=30, interval=0.05, what=f"a leader for each partition of {name}")
        return name

    @contextlib.contextmanager
    def raw(self, authenticate: bool = True) -> Iterator[Raw]:
        """A bare protocol connection to the first bootstrap server, SASL PLAIN done
        (every oracle target has one broker, so it leads every partition)."""
        conn = Raw(self.bootstrap_servers)
        try:
            if authenticate:
                shake = conn.request(schemas.SASL_HANDSHAKE, 1, {"mechanism": "PLAIN"})
                assert shake is not None and shake["error_code"] == 0, shake
                user, password = self.settings["sasl_username"], self.settings["sasl_password"]
                token = b"\0" + user.encode() + b"\0" + password.encode()
                answer = conn.request(schemas.SASL_AUTHENTICATE, 2, {"auth_bytes": token})
                assert answer is not None and answer["error_code"] == 0, answer
            yield conn
        finally:
            conn.close()


def engine_target(d: Daemon) -> Target:
    def create(name: str, partitions: int, config: dict[str, int]) -> None:
        with Admin(d.data_dir) as admin:
            admin.create_topic(
                name, partitions=partitions, replication=1, config=ENGINE_ONLY_CONFIG | config
            )

    return Target("engine", kafka_settings(d), create)


def kafka_target(k: Kafka) -> Target:
    def create(name: str, partitions: int, config: dict[str, int]) -> None:
        topic = NewTopic(name, partitions, 1, config={key: str(v) for key, v in config.items()})
        admin = k.admin_client()  # kept until the futures are done (its end cancels them)
        for future in admin.create_topics([topic]).values():
            future.result(30)

    return Target("kafka", dict(k.settings), create)
