"""Config with watches: a service follows its settings as operators change them.

A service process watches two keys of its config, ``ConfigStore("examples/pricing")``:
``rate_limit`` and ``log_level`` (under ``/engine/coordination/config/examples/pricing``),
and applies each value as it arrives (its watch
callback runs at once with the current value, then after each change). Then two
operators raise the rate limit by 50 at the same moment, each by compare-and-set on the
version it read: one wins, the other gets VersionConflictError, reads the new value and
applies its raise on top. Neither raise is lost: the service ends at 100 + 50 + 50.
Last, an operator turns the log level to "debug".

    engine start
    python examples/config_watch.py [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import queue
import sys
import threading
import time
from typing import Any

from engine import ConfigStore, VersionConflictError


def service(data_dir: str | None, path: str, out: Any, stop: Any) -> None:
    """Follow ``rate_limit`` and ``log_level``: report each value applied."""
    with ConfigStore(path, data_dir) as config:
        for key in ("rate_limit", "log_level"):
            config.watch(key, lambda value, version, key=key: out.put((key, value, version)))
        stop.wait()


def raise_limit(data_dir: str | None, path: str, who: str, by: int, go: threading.Barrier,
                log: list[str]) -> None:  # fmt: skip
    """Read the limit, wait for the other operator, then compare-and-set it up by ``by``,
    reading again after each conflict."""
    with ConfigStore(path, data_dir) as config:
        current = config.get_versioned("rate_limit")
        assert current is not None
        go.wait()
        while True:
            try:
                version = config.compare_and_set("rate_limit", current.value + by, current.version)
                log.append(f"{who}: {current.value} -> {current.value + by} (version {version})")
                return
            except VersionConflictError as exc:
                log.append(f"{who}: conflict ({exc}); reading again")
                current = config.get_versioned("rate_limit")
                assert current is not None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args(argv)

    path = "examples/pricing"
    with ConfigStore(path, args.data_dir) as config:
        config.set("rate_limit", 100)  # where each run starts (versions go on growing)
        config.set("log_level", "info")
        ctx = mp.get_context("spawn")
        out, stop = ctx.Queue(), ctx.Event()
        proc = ctx.Process(target=service, args=(args.data_dir, path, out, stop))
        proc.start()
        applied: dict[str, Any] = {}

        def follow(until: dict[str, Any], timeout: float = 30.0) -> None:
            deadline = time.monotonic() + timeout
            while any(applied.get(k) != v for k, v in until.items()):
                try:
                    key, value, version = out.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    raise SystemExit(f"the service did not apply {until}") from None
                applied[key] = value
                print(f"service applied {key} = {value!r} (version {version})")

        try:
            follow({"rate_limit": 100, "log_level": "info"})
            log: list[str] = []
            go = threading.Barrier(2)
            operators = [
                threading.Thread(target=raise_limit, args=(args.data_dir, path, who, 50, go, log))
                for who in ("operator-a", "operator-b")
            ]
            for t in operators:
                t.start()
            for t in operators:
                t.join(30)
            for line in log:
                print(line)
            follow({"rate_limit": 200})
            config.set("log_level", "debug")
            follow({"log_level": "debug"})
        finally:
            stop.set()
            proc.join(15)
            if proc.is_alive():
                proc.kill()
        conflicts = sum("conflict" in line for line in log)
        ok = config.get("rate_limit") == 200 and conflicts == 1
        print(f"rate_limit {config.get('rate_limit')} (both raises kept), conflicts {conflicts}")
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
