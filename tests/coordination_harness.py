"""Helpers of the coordination tests: child processes that hold locks, lead, register
(coordination_procs.py), and the session timeout a coordinator grants."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from engine_harness import Daemon

from engine.coordination.session import SESSION_TIMEOUT_S

sys.path.insert(0, str(Path(__file__).parent / "coordinator"))
from zkharness import four_letter_word

PROCS = str(Path(__file__).parent / "coordination_procs.py")
ROOT = str(Path(__file__).resolve().parents[1])


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def granted_session_timeout_s(daemon: Daemon) -> float:
    """The session timeout the daemon's coordinator grants the recipes: their request
    clamped into its [minSessionTimeout, maxSessionTimeout] (its ``conf``)."""
    port = int(daemon.runtime()["coordinator"].rsplit(":", 1)[1])
    conf = dict(
        line.split("=", 1) for line in four_letter_word(port, b"conf").splitlines() if "=" in line
    )
    low, high = int(conf["minSessionTimeout"]), int(conf["maxSessionTimeout"])
    return max(low, min(high, round(SESSION_TIMEOUT_S * 1000))) / 1000


class Child:
    """A coordination_procs.py process: its JSON events in a queue, commands on stdin."""

    def __init__(self, *args: str) -> None:
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.proc = subprocess.Popen(
            [sys.executable, PROCS, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
        )
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.events.put(json.loads(line))
        self.events.put({"event": "exited", "t": time.monotonic()})

    def expect(self, event: str, timeout: float = 20.0) -> dict[str, Any]:
        """The next event, which must be ``event``."""
        try:
            got = self.events.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no {event!r} within {timeout} s") from None
        if got["event"] != event:
            stderr = self.proc.stderr.read() if got["event"] == "exited" else ""  # type: ignore[union-attr]
            raise AssertionError(f"expected {event!r}, got {got}: {stderr}")
        return got

    def no_event(self) -> bool:
        return self.events.empty()

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def kill(self) -> float:
        """SIGKILL it; the moment of the kill (time.monotonic())."""
        t = time.monotonic()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        return t

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


@contextlib.contextmanager
def children() -> Iterator[list[Child]]:
    """Children started in the block are killed when it ends, also by a failure."""
    started: list[Child] = []
    try:
        yield started
    finally:
        for child in started:
            child.stop()
