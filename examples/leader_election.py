"""Leader election: one scheduler among several processes; kill the leader, another leads.

Three candidate processes campaign in the election "scheduler" (engine.Election). The
leader runs the schedule (here: a numbered tick every 100 ms) for as long as it leads;
the others wait their turn. The example then SIGKILLs the leader, as a crash would, a
few times, and measures each failover: from the kill to the first tick of the next
leader. A killed candidate is replaced by a new process, so there are always three.

The failover is about the coordinator's session timeout: the dead leader's session has
to expire before its candidacy goes, a timeout after the leader was last heard from
(its client pings every third of the timeout), checked every tick (200 ms). On the
built-in coordinator today, whose sessions last 4 s: 3.4-4.1 s.

    engine start
    python examples/leader_election.py [--candidates 3] [--kills 3] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import queue
import signal
import statistics
import sys
import time
import uuid
from typing import Any

from engine import Election


def candidate(data_dir: str | None, election_name: str, ident: str, out: Any) -> None:
    """One candidate: lead while elected (ticking), then campaign again."""
    election = Election(election_name, data_dir, identifier=ident)

    def schedule() -> None:
        while election.is_leader:
            out.put(("tick", ident, os.getpid(), time.monotonic()))
            time.sleep(0.1)

    while True:
        election.run(schedule)  # waits its turn, schedules, resigns when it stops leading


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--candidates", type=int, default=3)
    ap.add_argument("--kills", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=30.0, help="longest wait for a leader")
    args = ap.parse_args(argv)

    name = f"scheduler-{uuid.uuid4().hex[:6]}"  # a fresh election per run
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs: dict[int, Any] = {}
    born = 0

    def spawn() -> None:
        nonlocal born
        born += 1
        p = ctx.Process(target=candidate, args=(args.data_dir, name, f"candidate-{born}", out))
        p.start()
        procs[p.pid] = p

    def next_leader(not_pid: int | None) -> tuple[str, int, float]:
        """Wait for a tick of a leader other than ``not_pid``; (ident, pid, time)."""
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            try:
                kind, ident, pid, t = out.get(timeout=0.5)
            except queue.Empty:
                continue
            if kind == "tick" and pid != not_pid:
                return ident, pid, t
        raise SystemExit(f"no leader within {args.timeout} s: is the daemon running?")

    failovers = []
    try:
        for _ in range(args.candidates):
            spawn()
        ident, pid, _ = next_leader(None)
        print(f"{ident} (pid {pid}) leads; {args.candidates - 1} candidates wait")
        for kill in range(1, args.kills + 1):
            time.sleep(0.5)  # let it schedule a little
            killed_at = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            procs.pop(pid).join()
            spawn()  # a new candidate in its place
            before = ident
            ident, pid, led_at = next_leader(pid)
            failovers.append(led_at - killed_at)
            print(f"kill {kill}: {before} SIGKILLed; {ident} (pid {pid}) led "
                  f"{failovers[-1]:.2f} s later")  # fmt: skip
    finally:
        for p in procs.values():
            p.kill()
            p.join()
    print(f"failover: median {statistics.median(failovers):.2f} s, "
          f"min {min(failovers):.2f} s, max {max(failovers):.2f} s "
          f"({len(failovers)} kills)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
