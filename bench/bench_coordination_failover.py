"""Failover of the coordination recipes: how long after a SIGKILL the next process takes over.

    python bench/bench_coordination_failover.py [--rounds 7] [--ttl 1.0]

One daemon (one broker) in a temporary data dir. Each round, per recipe:

    lock       a process holds a Lock, another waits; the holder is SIGKILLed: the time
               from the kill until the waiter holds it
    election   a process leads an Election, another is a candidate; the leader is
               SIGKILLed: until the candidate leads (its on_won)
    registry   a process is registered in a ServiceRegistry, watched from here; it is
               SIGKILLed: until the watch is told it left
    lease      a LeaseLock of ``--ttl`` held here and renewed once, a waiter here: the
               time from the renew until the waiter holds it (the holder lives on)

Each kill comes at a random moment, 0 to 1.5 s after the other process waits (kazoo
pings the coordinator every third of the session timeout while idle, so how long
before the kill the dead process was last heard of varies from round to round). Times
are CLOCK_MONOTONIC, shared by the processes of the machine. Prints, per recipe, the
median, the lowest and the highest of the rounds, and the session timeout the
coordinator granted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_engine import Engine


def child(role: str, data_dir: str, name: str) -> None:
    """A child process: take the role, say when it holds, leads or is registered, then
    wait to be killed."""
    from engine import Election, Lock, ServiceRegistry

    def say(event: str) -> None:
        print(json.dumps({"event": event, "t": time.monotonic()}), flush=True)

    if role == "lock":
        lock = Lock(name, data_dir, f"pid-{os.getpid()}")
        lock.acquire()
        say("holds")
    elif role == "election":
        election = Election(name, data_dir, f"pid-{os.getpid()}", on_won=lambda: say("holds"))
        election.campaign(0)
    elif role == "registry":
        ServiceRegistry(name, data_dir).register({"pid": os.getpid()})
        say("holds")
    sys.stdin.read()  # until killed (or the bench goes away)


class Child:
    def __init__(self, role: str, data_dir: str, name: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--child", role, data_dir, name],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.events.put(json.loads(line))

    def wait(self, event: str, timeout: float = 30.0) -> float:
        deadline = time.monotonic() + timeout
        while True:
            got = self.events.get(timeout=max(0.01, deadline - time.monotonic()))
            if got["event"] == event:
                return float(got["t"])

    def kill(self) -> float:
        t = time.monotonic()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        return t

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def takeover(role: str, data_dir: str) -> float:
    """One round of ``role`` (lock, election): kill the holder, time the waiter."""
    from engine import Election, Lock

    name = f"bench-{uuid.uuid4().hex[:8]}"
    observer = Lock(name, data_dir) if role == "lock" else Election(name, data_dir)
    queued = observer.contenders if isinstance(observer, Lock) else observer.candidates
    first = Child(role, data_dir, name)
    second = None
    try:
        first.wait("holds")
        second = Child(role, data_dir, name)
        while len(queued()) < 2:
            time.sleep(0.01)
        time.sleep(random.uniform(0, 1.5))
        killed = first.kill()
        return second.wait("holds") - killed
    finally:
        observer.close()
        for c in (first, second):
            if c is not None:
                c.stop()


def registry_leave(data_dir: str) -> float:
    from engine import ServiceRegistry

    service = f"bench-{uuid.uuid4().hex[:8]}"
    left: queue.Queue[float] = queue.Queue()
    with ServiceRegistry(service, data_dir) as registry:
        registry.watch(lambda change: change.left and left.put(time.monotonic()))
        member = Child("registry", data_dir, service)
        try:
            member.wait("holds")
            time.sleep(random.uniform(0, 1.5))
            killed = member.kill()
            return left.get(timeout=30) - killed
        finally:
            member.stop()


def lease_end(data_dir: str, ttl: float) -> float:
    """From a renew until another holds the lease (its holder alive): ttl + overshoot."""
    from engine import LeaseLock

    name = f"bench-{uuid.uuid4().hex[:8]}"
    lease = LeaseLock(name, ttl, data_dir, "holder")
    other = LeaseLock(name, ttl, data_dir, "next")
    try:
        lease.acquire()
        time.sleep(random.uniform(0, 0.5))
        renewed = time.monotonic()
        lease.renew()
        assert other.acquire(timeout=10 * ttl)
        ended = time.monotonic() - renewed
        other.release()
        return ended
    finally:
        other.close()
        lease.close()


def granted_timeout_s(data_dir: str) -> float:
    import socket

    from engine.coordination.session import SESSION_TIMEOUT_S
    from engine.datadir import DataDir

    host, port = DataDir.resolve(data_dir).coordinator_hosts().rsplit(":", 1)
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"conf")
        text = b"".join(iter(lambda: sock.recv(4096), b"")).decode()
    conf = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    low, high = int(conf["minSessionTimeout"]), int(conf["maxSessionTimeout"])
    return max(low, min(high, round(SESSION_TIMEOUT_S * 1000))) / 1000


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--ttl", type=float, default=1.0, help="the LeaseLock's ttl_s")
    ap.add_argument("--child", nargs=3, metavar=("ROLE", "DATA_DIR", "NAME"),
                    help=argparse.SUPPRESS)  # fmt: skip
    args = ap.parse_args(argv)
    if args.child:
        child(*args.child)
        return 0

    engine = Engine()
    engine.cli("start", "--brokers", "1")
    try:
        granted = granted_timeout_s(engine.data_dir)
        runs: dict[str, list[float]] = {"lock": [], "election": [], "registry": [], "lease": []}
        for r in range(args.rounds):
            runs["lock"].append(takeover("lock", engine.data_dir))
            runs["election"].append(takeover("election", engine.data_dir))
            runs["registry"].append(registry_leave(engine.data_dir))
            runs["lease"].append(lease_end(engine.data_dir, args.ttl))
            print(f"round {r + 1}: " + "  ".join(f"{k} {v[-1]:.2f} s" for k, v in runs.items()),
                  flush=True)  # fmt: skip
    finally:
        engine.stop()
    print(f"\n{platform.node()} {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"session timeout granted {granted:g} s; lease ttl_s {args.ttl:g}; "
          f"{args.rounds} rounds")  # fmt: skip
    print(f"{'recipe':<10} {'median':>8} {'min':>8} {'max':>8}   from")
    what = {"lock": "the holder's SIGKILL to the waiter holding it",
            "election": "the leader's SIGKILL to the next leader's on_won",
            "registry": "the instance's SIGKILL to the watch telling it left",
            "lease": "the last renew to the next holder holding it (holder alive)"}
    for k, v in runs.items():
        print(f"{k:<10} {statistics.median(v):>7.2f}s {min(v):>7.2f}s {max(v):>7.2f}s   {what[k]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
