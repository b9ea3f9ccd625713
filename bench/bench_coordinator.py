"""Coordinator benchmark: kazoo against our coordinator and, where installed, Debian's
ZooKeeper 3.8, on the same machine in the same run, both with fsync on.

Measures synchronous and pipelined (async, up to 1000 in flight) create/get/set ops/s,
and the time from SIGKILL of a client to a watcher seeing its ephemeral node deleted.

    python bench/bench_coordinator.py [--runs 3] [--ops 2000] [--pipelined-ops 20000]
    pytest bench/bench_coordinator.py --benchmark-only

The script prints a markdown table: the median of the runs for each backend and the
ratio ours / ZooKeeper (above 1 means we are faster; for the expiry latency lower is
better, so the ratio is ZooKeeper / ours there too).
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "coordinator"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pytest
from kazoo.client import KazooClient
from zkharness import (
    ROOT,
    ServerProcess,
    make_server,
    zookeeper_installed,
)

SESSION_TIMEOUT_S = 2.0  # for the expiry measurement; the tick is 200 ms
IN_FLIGHT = 1000

_EPHEMERAL_OWNER = """
import sys, time
from kazoo.client import KazooClient
zk = KazooClient(hosts=sys.argv[1], timeout=float(sys.argv[3]))
zk.start()
zk.create(sys.argv[2], b"", ephemeral=True)
print("ready", flush=True)
time.sleep(600)
"""


def _client(server: ServerProcess, timeout: float = 10.0) -> KazooClient:
    client = KazooClient(hosts=server.hosts, timeout=timeout)
    client.start(timeout=30)
    return client


def _close(client: KazooClient) -> None:
    client.stop()
    client.close()


def sync_ops(client: KazooClient, op: str, count: int, base: str) -> float:
    """ops/s for ``count`` synchronous create/get/set calls on distinct nodes."""
    client.ensure_path(base)
    if op != "create":
        for i in range(count):
            client.create_async(f"{base}/n{i}", b"x" * 100)
        client.sync(base)
    started = time.perf_counter()
    if op == "create":
        for i in range(count):
            client.create(f"{base}/n{i}", b"x" * 100)
    elif op == "get":
        for i in range(count):
            client.get(f"{base}/n{i}")
    else:
        for i in range(count):
            client.set(f"{base}/n{i}", b"y" * 100)
    return count / (time.perf_counter() - started)


def pipelined_ops(client: KazooClient, op: str, count: int, base: str) -> float:
    """ops/s for ``count`` async calls with at most IN_FLIGHT outstanding."""
    client.ensure_path(base)
    nodes = min(count, 2000)
    if op != "create":
        for i in range(nodes):
            client.create_async(f"{base}/n{i}", b"x" * 100)
        client.sync(base)
    slots = threading.Semaphore(IN_FLIGHT)
    done = threading.Event()
    remaining = [count]
    lock = threading.Lock()

    def finished(_result: Any) -> None:
        slots.release()
        with lock:
            remaining[0] -= 1
            if remaining[0] == 0:
                done.set()

    started = time.perf_counter()
    for i in range(count):
        slots.acquire()
        if op == "create":
            result = client.create_async(f"{base}/n{i}", b"x" * 100)
        elif op == "get":
            result = client.get_async(f"{base}/n{i % nodes}")
        else:
            result = client.set_async(f"{base}/n{i % nodes}", b"y" * 100)
        result.rawlink(finished)
    if not done.wait(300):
        raise TimeoutError("pipelined requests did not all complete")
    return count / (time.perf_counter() - started)


def expiry_latency(server: ServerProcess, watcher: KazooClient, path: str) -> float:
    """Seconds from SIGKILL of a client to a watcher seeing its ephemeral node deleted."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    owner = subprocess.Popen(
        [sys.executable, "-c", _EPHEMERAL_OWNER, server.hosts, path, str(SESSION_TIMEOUT_S)],
        stdout=subprocess.PIPE, env=env)
    try:
        assert owner.stdout is not None
        ready, _, _ = select.select([owner.stdout], [], [], 30)
        assert ready and owner.stdout.readline().strip() == b"ready"
        deleted = threading.Event()
        seen_at: list[float] = []

        def on_event(_event: Any) -> None:
            seen_at.append(time.perf_counter())
            deleted.set()

        assert watcher.exists(path, watch=on_event) is not None
        killed_at = time.perf_counter()
        owner.send_signal(signal.SIGKILL)
        if not deleted.wait(SESSION_TIMEOUT_S * 5 + 10):
            raise TimeoutError("the ephemeral node was never deleted")
        return seen_at[0] - killed_at
    finally:
        if owner.poll() is None:
            owner.kill()
        owner.wait(10)
        if owner.stdout is not None:
            owner.stdout.close()


# ---------------------------------------------------------------------------- script

MEASURES = [
    ("sync create ops/s", "sync", "create"),
    ("sync get ops/s", "sync", "get"),
    ("sync set ops/s", "sync", "set"),
    ("pipelined create ops/s", "pipelined", "create"),
    ("pipelined get ops/s", "pipelined", "get"),
    ("pipelined set ops/s", "pipelined", "set"),
]
EXPIRY = "SIGKILLed client → ephemeral deletion seen (s)"


def run_backend(kind: str, runs: int, ops: int, pipelined: int) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {name: [] for name, _, _ in MEASURES}
    results[EXPIRY] = []
    server = make_server(kind, Path(tempfile.mkdtemp(prefix=f"bench-{kind}-")))
    server.start()
    try:
        for run in range(runs):
            client = _client(server)
            try:
                for name, style, op in MEASURES:
                    base = f"/bench{run}/{style}-{op}"
                    if style == "sync":
                        value = sync_ops(client, op, ops, base)
                    else:
                        value = pipelined_ops(client, op, pipelined, base)
                    results[name].append(value)
                    print(f"  {kind} run {run}: {name} = {value:,.0f}", file=sys.stderr)
                latency = expiry_latency(server, client, f"/bench{run}-ephemeral")
                results[EXPIRY].append(latency)
                print(f"  {kind} run {run}: {EXPIRY} = {latency:.3f}", file=sys.stderr)
            finally:
                _close(client)
    finally:
        server.stop()
    return results


def table(ours: dict[str, list[float]], theirs: dict[str, list[float]] | None,
          runs: int) -> str:
    lines = [f"| measure (median of {runs}) | engine coordinator | ZooKeeper 3.8 | ratio |",
             "|---|---:|---:|---:|"]
    for name in [m[0] for m in MEASURES] + [EXPIRY]:
        mine = statistics.median(ours[name])
        fmt = "{:.3f}" if name == EXPIRY else "{:,.0f}"
        if theirs is None:
            lines.append(f"| {name} | {fmt.format(mine)} | not installed | - |")
            continue
        other = statistics.median(theirs[name])
        ratio = other / mine if name == EXPIRY else mine / other
        lines.append(f"| {name} | {fmt.format(mine)} | {fmt.format(other)} | {ratio:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--ops", type=int, default=2000, help="ops per synchronous measure")
    parser.add_argument("--pipelined-ops", type=int, default=20000,
                        help="ops per pipelined measure")
    parser.add_argument("--engine-only", action="store_true")
    args = parser.parse_args(argv)
    ours = run_backend("engine", args.runs, args.ops, args.pipelined_ops)
    theirs = None
    if zookeeper_installed() and not args.engine_only:
        theirs = run_backend("zookeeper", args.runs, args.ops, args.pipelined_ops)
    print(table(ours, theirs, args.runs))
    return 0


# ---------------------------------------------------------------------------- pytest


def _kinds() -> list[Any]:
    return ["engine", pytest.param("zookeeper", marks=pytest.mark.skipif(
        not zookeeper_installed(), reason="Debian's zookeeper package is not installed"))]


@pytest.fixture(scope="module", params=_kinds())
def bench_server(request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    server = make_server(request.param, Path(tempfile.mkdtemp(prefix="bench-")))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def bench_client(bench_server: ServerProcess) -> Iterator[KazooClient]:
    client = _client(bench_server)
    try:
        yield client
    finally:
        _close(client)


_rounds = iter(range(1_000_000))


def _bench(benchmark: Any, work: Callable[[str], float]) -> None:
    rates: list[float] = []
    benchmark.pedantic(lambda: rates.append(work(f"/pb{next(_rounds)}")), rounds=3,
                       iterations=1)
    benchmark.extra_info["ops_per_s_median"] = statistics.median(rates)


@pytest.mark.parametrize("op", ["create", "get", "set"])
def test_sync_ops(benchmark: Any, bench_client: KazooClient, op: str) -> None:
    _bench(benchmark, lambda base: sync_ops(bench_client, op, 500, base))


@pytest.mark.parametrize("op", ["create", "get", "set"])
def test_pipelined_ops(benchmark: Any, bench_client: KazooClient, op: str) -> None:
    _bench(benchmark, lambda base: pipelined_ops(bench_client, op, 5000, base))


def test_ephemeral_expiry_latency(benchmark: Any, bench_server: ServerProcess,
                                  bench_client: KazooClient) -> None:
    latencies: list[float] = []
    benchmark.pedantic(lambda: latencies.append(expiry_latency(
        bench_server, bench_client, f"/eph{next(_rounds)}")), rounds=2, iterations=1)
    benchmark.extra_info["seconds_median"] = statistics.median(latencies)
    # the target: within the session timeout plus a tick (plus scheduling slack)
    assert statistics.median(latencies) < SESSION_TIMEOUT_S + 0.2 + 1.0


if __name__ == "__main__":
    sys.exit(main())
