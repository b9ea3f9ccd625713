"""A broker's counters for the metrics: written to a small file the daemon reads.

The brokers are separate processes; the daemon's metrics (engine.metrics) gather at
scrape time. What only a broker knows, the work of its drain and replication threads,
it writes every WRITE_EVERY_S to ``run/broker-<id>.stats.json`` in the data dir::

    {"version": 1, "pid": 1234, "time": 1733570000.1,
     "drain_passes": 812, "drain_seconds": 0.41, "drain_cpu_seconds": 0.52,
     "replication_passes": 97, "replication_cpu_seconds": 0.20, "replicas": 6}

Every count covers the broker process's life (Prometheus counters: they start at 0
when the broker starts). A replica keeps its own counts (each written by one of its
threads, see engine.replica.Replica); a replica stopped since the last write leaves
the counts it had then to the broker's total, so the total never goes back.

The file is replaced by a rename (readers never see half of it), mode 0600, not
fsynced: it says nothing that must survive a crash. Its cost is mostly the threads' CPU
times, one /proc read per thread: 5.6 ms a second for 300 threads (100 replicas) on
the 2-core VM. Who calls: the broker's main
thread starts and stops the writer; the writer runs in its own daemon thread.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.replica import Replica

log = logging.getLogger("engine.broker_stats")

WRITE_EVERY_S = 1.0
VERSION = 1
_COUNTS = (
    "drain_passes",
    "drain_seconds",
    "drain_cpu_seconds",
    "replication_passes",
    "replication_cpu_seconds",
)


def stats_path(run_dir: Path, broker_id: int) -> Path:
    return run_dir / f"broker-{broker_id}.stats.json"


def _counts_of(replica: Replica) -> dict[str, float]:
    cpu = replica.thread_cpu_seconds()
    return {
        "drain_passes": replica.drain_passes,
        "drain_seconds": replica.drain_seconds,
        "drain_cpu_seconds": cpu.get("drain", 0.0),
        "replication_passes": replica.replication_passes,
        "replication_cpu_seconds": cpu.get("replicate", 0.0) + cpu.get("fetch", 0.0),
    }


class BrokerStats:
    """The broker's totals, from its live replicas and those it stopped."""

    def __init__(self, path: Path, replicas: Callable[[], list[Replica]]) -> None:
        self.path = path
        self._replicas = replicas
        self._retired = dict.fromkeys(_COUNTS, 0.0)
        self._last: dict[int, tuple[Replica, dict[str, float]]] = {}  # by id(replica)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def snapshot(self) -> dict[str, Any]:
        """The totals now (one thread at a time: the writer's)."""
        live = self._replicas()
        now = {id(r): (r, _counts_of(r)) for r in live}
        for key, (_, counts) in self._last.items():
            if key not in now:  # stopped since: its counts as last seen stay in the total
                for name in _COUNTS:
                    self._retired[name] += counts[name]
        self._last = now
        totals = dict(self._retired)
        for _, counts in now.values():
            for name in _COUNTS:
                totals[name] += counts[name]
        head = {"version": VERSION, "pid": os.getpid(), "time": time.time()}
        return head | {"replicas": len(live)} | totals

    def write(self) -> None:
        data = json.dumps(self.snapshot(), sort_keys=True).encode()
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="broker-stats", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(WRITE_EVERY_S):
            try:
                self.write()
            except Exception:  # metrics must never take the broker down
                log.exception("writing %s", self.path)

    def stop(self) -> None:
        """Stop writing and remove the file (a stopped broker has no counts)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with contextlib.suppress(OSError):
            self.path.unlink()


def read_stats(path: Path) -> dict[str, Any] | None:
    """A broker's stats file; None when there is none (not started yet, or stopped)."""
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("version") == VERSION else None
