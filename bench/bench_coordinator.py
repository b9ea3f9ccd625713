"""Coordinator benchmark: kazoo against our coordinator and, where installed, Debian's
ZooKeeper 3.8, on the same machine in the same run, both with fsync on.

Measures synchronous and pipelined (async, up to 1000 in flight) create/get/set ops/s,
and the time from SIGKILL of a client to a watcher seeing its ephemeral node deleted.
Also, as the server's own capacity, get/set ops/s of a raw jute client that writes all
its requests at once (kazoo itself tops out near 5-10k ops/s on this kind of machine).
Backends alternate run by run.

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
    RawClient,
    ServerProcess,
    make_server,
    zookeeper_installed,
)

from engine.coordinator.jute import (
    OPEN_ACL_UNSAFE,
    CreateRequest,
    OpCode,
    Record,
    SetDataRequest,
    WatchRequest,
    encode_request,
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
    ("raw jute pipelined get ops/s (no kazoo)", "raw", "get"),
    ("raw jute pipelined set ops/s (no kazoo)", "raw", "set"),
]
EXPIRY = "SIGKILLed client → ephemeral deletion seen (s)"


def raw_pipelined(server: ServerProcess, op: str, count: int, base: str) -> float:
    """Server capacity without kazoo in the way: ``count`` jute requests written in one
    go on one connection by a raw client, replies read as they come."""
    client = RawClient(server.port, timeout_ms=20 * server.tick_ms)
    try:
        path = base
        client.call(OpCode.CREATE, CreateRequest(path, b"x" * 100, OPEN_ACL_UNSAFE, 0))
        record: Record = (SetDataRequest(path, b"y" * 100, -1) if op == "set"
                          else WatchRequest(path, False))
        code = OpCode.SET_DATA if op == "set" else OpCode.GET_DATA
        payload = b"".join(encode_request(1000 + i, code, record) for i in range(count))
        started = time.perf_counter()
        sender = threading.Thread(target=client.sock.sendall, args=(payload,))
        sender.start()
        for _ in range(count):
            client.read_frame()
        sender.join()
        return count / (time.perf_counter() - started)
    finally:
        client.close()


def measure_once(kind: str, server: ServerProcess, run: int, args: argparse.Namespace,
                 results: dict[str, list[float]]) -> None:
    client = _client(server)
    try:
        for name, style, op in MEASURES:
            base = f"/bench{run}/{style}-{op}"
            if style == "sync":
                value = sync_ops(client, op, args.ops, base)
            elif style == "pipelined":
                value = pipelined_ops(client, op, args.pipelined_ops, base)
            else:
                client.ensure_path(f"/bench{run}")
                value = raw_pipelined(server, op, args.pipelined_ops, base)
            results[name].append(value)
            print(f"  {kind} run {run}: {name} = {value:,.0f}", file=sys.stderr)
        latency = expiry_latency(server, client, f"/bench{run}-ephemeral")
        results[EXPIRY].append(latency)
        print(f"  {kind} run {run}: {EXPIRY} = {latency:.3f}", file=sys.stderr)
    finally:
        _close(client)


def run_all(kinds: list[str], args: argparse.Namespace) -> dict[str, dict[str, list[float]]]:
    """Start every backend, then alternate them run by run, so that a machine busy with
    other work in some stretch of time penalizes both alike."""
    results = {kind: {name: [] for name in [m[0] for m in MEASURES] + [EXPIRY]}
               for kind in kinds}
    servers = {kind: make_server(kind, Path(tempfile.mkdtemp(prefix=f"bench-{kind}-")))
               for kind in kinds}
    try:
        for server in servers.values():
            server.start()
        for run in range(args.runs):
            order = kinds if run % 2 == 0 else list(reversed(kinds))
            for kind in order:
                measure_once(kind, servers[kind], run, args, results[kind])
    finally:
        for server in servers.values():
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
    kinds = ["engine"]
    if zookeeper_installed() and not args.engine_only:
        kinds.append("zookeeper")
    results = run_all(kinds, args)
    ours, theirs = results["engine"], results.get("zookeeper")
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
