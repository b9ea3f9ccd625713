"""Delivery semantics, as the examples implement them, with the consumer SIGKILLed at the
worst moment: at-most-once loses but never repeats; at-least-once repeats but never loses."""

from __future__ import annotations

import signal
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from engine_harness import Daemon

from engine import Admin, Producer

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
RECORDS = 120


@pytest.fixture
def topic(shared_daemon: Daemon) -> Iterator[str]:
    name = f"d-{uuid.uuid4().hex[:8]}"
    with Admin(shared_daemon.data_dir) as admin:
        admin.create_topic(name, partitions=3)
        with Producer(shared_daemon.data_dir) as p:
            for i in range(RECORDS):
                p.send(name, b"%d" % i, key=b"k%d" % (i % 7))
        yield name
        admin.delete_topic(name)


def run_example(
    daemon: Daemon, script: str, topic: str, out: Path, crash_after: int | None
) -> int:
    args = [sys.executable, str(EXAMPLES / script), topic, "--out", str(out)]
    args += ["--data-dir", str(daemon.data_dir), "--group", f"{script}-{topic}", "--idle", "5"]
    if crash_after is not None:
        args += ["--crash-after-polls", str(crash_after)]
    return subprocess.run(args, capture_output=True, timeout=90, env=daemon.env).returncode


def handled(out: Path) -> Counter[int]:
    return Counter(int(line.split()[2]) for line in out.read_text().splitlines())


@pytest.mark.parametrize("crashes", [[2, 3]])
def test_at_most_once_loses_records_of_the_killed_poll_and_never_repeats(
    shared_daemon: Daemon, topic: str, tmp_path: Path, crashes: list[int]
) -> None:
    out = tmp_path / "handled.txt"
    for n in crashes:
        assert run_example(shared_daemon, "at_most_once.py", topic, out, n) == -signal.SIGKILL
    assert run_example(shared_daemon, "at_most_once.py", topic, out, None) == 0
    seen = handled(out)
    assert max(seen.values()) == 1, "a record was handled twice"
    lost = set(range(RECORDS)) - set(seen)
    # exactly the records of each killed poll (committed, never handled): 1..10 each
    assert len(crashes) <= len(lost) <= 10 * len(crashes)


@pytest.mark.parametrize("crashes", [[2, 3]])
def test_at_least_once_repeats_records_of_the_killed_poll_and_never_loses(
    shared_daemon: Daemon, topic: str, tmp_path: Path, crashes: list[int]
) -> None:
    out = tmp_path / "handled.txt"
    for n in crashes:
        assert run_example(shared_daemon, "at_least_once.py", topic, out, n) == -signal.SIGKILL
    assert run_example(shared_daemon, "at_least_once.py", topic, out, None) == 0
    seen = handled(out)
    assert set(seen) == set(range(RECORDS)), "a record was lost"
    repeated = [v for v, n in seen.items() if n > 1]
    # exactly the records of each killed poll (handled, never committed): 1..10 each
    assert len(crashes) <= len(repeated) <= 10 * len(crashes)
    assert max(seen.values()) <= 1 + len(crashes)
