"""A real Kafka broker (KRaft) for tests, started with scripts/kafka, always stopped.

The oracle of the Kafka listener's tests: the same client scenario runs against the
engine's listener and against this broker, and the answers are compared. Skipped with the
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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

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
