"""Child processes for the coordination tests: ``python coordination_procs.py ROLE ...``.

Each prints one JSON line per event on standard output, ``{"event": ..., "t": ...}``
with ``t`` from time.monotonic() (CLOCK_MONOTONIC: the same clock in every process of
the machine, so the test can subtract it from its own), and takes commands as lines on
standard input. The test SIGKILLs it, or closes its standard input to end it.

    lock DATA_DIR NAME ID        acquire, "acquired"; "release" -> "released" (began: when
                                 the release call began)
    lease DATA_DIR NAME ID TTL   acquire, "acquired"; "renew" -> "renewed"/"expired"
    election DATA_DIR NAME ID    campaign; "won" / "lost" as they happen
    register DATA_DIR SERVICE ID register with {"pid"} (the registry not referred to),
                                 "registered"
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
from typing import Any

from engine import Election, LeaseExpiredError, LeaseLock, Lock, ServiceRegistry


def say(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, "t": time.monotonic(), **fields}), flush=True)


def commands() -> Any:
    for line in sys.stdin:
        yield line.strip()


def main(argv: list[str]) -> None:
    role, data_dir, name, ident, *rest = argv
    if role == "lock":
        lock = Lock(name, data_dir, ident)
        lock.acquire()
        say("acquired")
        for command in commands():
            if command == "release":
                began = time.monotonic()
                lock.release()
                say("released", began=began)
    elif role == "lease":
        lease = LeaseLock(name, float(rest[0]), data_dir, ident)
        lease.acquire()
        say("acquired")
        for command in commands():
            if command == "renew":
                try:
                    lease.renew()
                    say("renewed")
                except LeaseExpiredError as exc:
                    say("expired", error=str(exc))
    elif role == "election":
        election = Election(
            name, data_dir, ident, on_won=lambda: say("won"), on_lost=lambda: say("lost")
        )
        election.campaign(timeout=0)
        say("candidate")
        for _ in commands():
            pass
    elif role == "register":
        # Nothing refers to the registry: its session keeps it while it has an instance.
        ServiceRegistry(name, data_dir).register({"pid": os.getpid()}, instance_id=ident)
        gc.collect()
        say("registered")
        for _ in commands():
            pass
    else:
        raise SystemExit(f"unknown role: {role}")


if __name__ == "__main__":
    main(sys.argv[1:])
