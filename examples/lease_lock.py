"""A lease lock: a job only one process may run, and a hung holder that loses it.

Two workers want to run the same compaction job, guarded by
``LeaseLock("compaction", ttl_s=2)``. The first takes the lease and works in steps,
renewing the lease after each. At its fourth step it hangs for longer than the lease
(a stuck disk, a debugger, a long GC pause): its process and its coordinator session
live on, but the lease ends ``ttl_s`` after its last renew, and the second worker, which
was waiting, takes it and runs the job. When the first comes back, its renew fails with
LeaseExpiredError and it stops without touching the job again; the lease stays the
second's. (A Lock would have kept the hung process as its holder for as long as its
session lived: forever, here.)

    engine start
    python examples/lease_lock.py [--ttl 2] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import queue
import sys
import time
import uuid
from typing import Any

from engine import LeaseExpiredError, LeaseLock


def worker(data_dir: str | None, name: str, ident: str, ttl: float, hang_at: int,
           out: Any) -> None:  # fmt: skip
    """Take the lease, then work in 5 steps of ttl/4, renewing after each; at step
    ``hang_at`` hang for 1.5 x ttl first."""
    with LeaseLock(name, ttl, data_dir, identifier=ident) as lease:
        out.put((time.monotonic(), ident, "holds the lease"))
        for step in range(1, 6):
            if step == hang_at:
                out.put((time.monotonic(), ident, f"hangs for {1.5 * ttl:.1f} s at step {step}"))
                time.sleep(1.5 * ttl)
            time.sleep(ttl / 4)  # a step of the job
            asked = time.monotonic()  # the lease runs ttl from (after) this moment
            try:
                lease.renew()
            except LeaseExpiredError as exc:
                out.put((asked, ident, f"LeaseExpiredError: {exc}; stops"))
                return
            out.put((asked, ident, f"step {step} done, renewed"))
        out.put((time.monotonic(), ident, "job done, releases the lease"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--ttl", type=float, default=2.0, help="the lease's ttl_s")
    args = ap.parse_args(argv)

    name = f"compaction-{uuid.uuid4().hex[:6]}"  # a fresh lease per run
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    first = ctx.Process(target=worker, args=(args.data_dir, name, "worker-1", args.ttl, 4, out))
    second = ctx.Process(target=worker, args=(args.data_dir, name, "worker-2", args.ttl, 0, out))
    start = time.monotonic()
    events: list[tuple[float, str, str]] = []
    try:
        first.start()
        events.append(out.get(timeout=30))  # worker-1 holds the lease ...
        second.start()  # ... before worker-2 asks for it
        while first.is_alive() or second.is_alive() or not out.empty():
            try:
                events.append(out.get(timeout=0.2))
            except queue.Empty:  # look at the processes again
                continue
    finally:
        for p in (first, second):
            p.join(30)
            if p.is_alive():
                p.kill()
    for t, ident, what in sorted(events):
        print(f"{t - start:6.2f} s  {ident}  {what}")
    last_renew = max(t for t, i, w in events if i == "worker-1" and "renewed" in w)
    taken = next(t for t, i, w in events if i == "worker-2" and w == "holds the lease")
    refused = any(i == "worker-1" and w.startswith("LeaseExpiredError") for _, i, w in events)
    done = any(i == "worker-2" and w.startswith("job done") for _, i, w in events)
    print(f"worker-2 took the lease {taken - last_renew:.2f} s after worker-1's last renew "
          f"(ttl_s={args.ttl:g}); worker-1's late renew refused: {refused}; "
          f"worker-2 finished the job: {done}")  # fmt: skip
    ok = refused and done and taken - last_renew >= args.ttl
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
