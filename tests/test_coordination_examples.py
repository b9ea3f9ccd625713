"""The coordination examples run against a daemon and report what they promise."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from engine_harness import Daemon

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(daemon: Daemon, name: str, *args: str, timeout: float = 120) -> str:
    """Run examples/<name> in a process group of its own (it starts processes), killed
    whole should it not end in time; its standard output, once it exited 0."""
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLES / name), "--data-dir", str(daemon.data_dir), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=daemon.env,
        start_new_session=True,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 0, f"{name} exited {proc.returncode}:\n{out}\n{err}"
    return out


def test_leader_election_example_fails_over_after_each_kill(shared_daemon: Daemon) -> None:
    out = run_example(shared_daemon, "leader_election.py", "--candidates", "2", "--kills", "2")
    kills = re.findall(r"kill \d: candidate-\d+ SIGKILLed; candidate-\d+ \(pid \d+\) led "
                       r"([\d.]+) s later", out)  # fmt: skip
    assert len(kills) == 2, out
    assert "failover: median" in out


def test_lease_lock_example_hands_the_lease_over_when_its_holder_hangs(
    shared_daemon: Daemon,
) -> None:
    out = run_example(shared_daemon, "lease_lock.py", "--ttl", "1")
    assert "worker-1  LeaseExpiredError" in out
    assert out.rstrip().endswith("OK"), out


def test_config_watch_example_keeps_both_raises(shared_daemon: Daemon) -> None:
    out = run_example(shared_daemon, "config_watch.py")
    assert "service applied rate_limit = 200" in out
    assert out.rstrip().endswith("OK"), out
