"""The engine as a library logs under ``engine.*`` and prints nothing unless the
application configures logging (client processes against a real daemon)."""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from pathlib import Path

from engine_harness import Daemon, wait_for

from engine import Admin

# A client process: a Producer, a plain Consumer and a group member, all open while
# the daemon stops; it exits when its standard input closes. With "logging" as its
# last argument, the application configures logging as applications do.
CLIENT = """
import logging, sys
from engine import Consumer, Producer, TopicPartition

data_dir, topic, group, mode = sys.argv[1:]
if mode == "logging":
    logging.basicConfig(level=logging.INFO)
producer = Producer(data_dir)
producer.send(topic, b"x", partition=0).get(timeout=10)
reader = Consumer(data_dir=data_dir, auto_offset_reset="earliest")
reader.assign([TopicPartition(topic, 0)])
assert reader.poll(timeout=10)
member = Consumer(topic, data_dir=data_dir, group_id=group)
while not member.assignment():
    member.poll(timeout=0.2)
print("ready", flush=True)
sys.stdin.read()
"""

LOG_LINE = re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL):([^:]+):", re.MULTILINE)


def test_a_client_process_prints_nothing_when_the_daemon_stops_unless_logging_is_configured(
    daemon: Daemon, tmp_path: Path
) -> None:
    topic = f"quiet-{uuid.uuid4().hex[:6]}"
    with Admin(daemon.data_dir) as admin:
        admin.create_topic(topic, partitions=1)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    errs = {mode: tmp_path / f"{mode}.err" for mode in ("quiet", "logging")}
    try:
        for mode, err in errs.items():
            with err.open("wb") as stderr:
                procs[mode] = subprocess.Popen(
                    [sys.executable, "-c", CLIENT, str(daemon.data_dir), topic, f"g-{mode}", mode],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=stderr,
                    env=daemon.env,
                )
        for mode, proc in procs.items():
            assert proc.stdout is not None
            assert proc.stdout.readline() == b"ready\n", errs[mode].read_text()
        daemon.stop()
        # Both clients keep trying to reconnect; the one that logs shows the attempts.
        wait_for(
            lambda: errs["logging"].read_text().count("engine.kazoo:Connection dropped") >= 10,
            timeout=30,
            what="ten reconnect attempts logged by the client that configured logging",
        )
        for proc in procs.values():
            assert proc.stdin is not None
            proc.stdin.close()
        for proc in procs.values():
            proc.wait(timeout=30)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
    assert errs["quiet"].read_text() == ""
    logged = errs["logging"].read_text()
    names = {name for _, name in LOG_LINE.findall(logged)}
    assert "engine.kazoo" in names
    assert all(name == "engine" or name.startswith("engine.") for name in names), names
