"""Child-process bodies for the ZooKeeper quorum test (spawned, so importable).

Each appends one line per event to its own file, flushed at once, stamped with
time.time() so that the test can line events up with its kills:

    producer   ack <seq> <partition> <offset> <t>     an acks="all" record acknowledged
               error <t> <Class> <message>            a send that failed
    consumer   record <partition> <offset> <seq>       a record the group member read
               commit <t0> <t1>                       a commit that took from t0 to t1
               commit-error <t0> <t1> <engine|other> <Class> <message>  (the public
                                                      engine class it is, where it is one)
               poll-error <t> <engine|other> <Class> <message>
    election   leader <identifier> <t>                 a candidate became the leader
               state <identifier> <KazooState> <t>     its coordinator session changed state
"""

from __future__ import annotations

import time
from typing import Any

import engine
from engine import Consumer, EngineError, Producer


def _line(out: Any, *fields: object) -> None:
    out.write(" ".join(str(f) for f in fields) + "\n")
    out.flush()


def _describe(exc: BaseException) -> str:
    """engine|other, the class a user catches (the first of engine's public ones), and
    the message."""
    kind = "engine" if isinstance(exc, EngineError) else "other"
    name = next((c.__name__ for c in type(exc).__mro__ if c.__name__ in engine.__all__),
                type(exc).__name__)  # fmt: skip
    return f"{kind} {name} {str(exc)!r}"


def produce_acked(data_dir: str, topic: str, out_path: str, stop: Any) -> None:
    """Idempotent acks="all" records whose value is their sequence number, one at a time
    (about 200 a second), until ``stop`` is set."""
    with Producer(data_dir, acks="all") as p, open(out_path, "a") as out:
        seq = 0
        while not stop.is_set():
            try:
                md = p.send(topic, b"%d" % seq).get(60)
            except EngineError as exc:
                _line(out, "error", time.time(), type(exc).__name__, repr(str(exc)))
            else:
                _line(out, "ack", seq, md.partition, md.offset, time.time())
            seq += 1
            time.sleep(0.005)


def consume_committing(data_dir: str, topic: str, group: str, out_path: str, stop: Any) -> None:
    """A group member that commits after every poll that read records, until ``stop``."""
    with Consumer(
        topic,
        data_dir=data_dir,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    ) as c, open(out_path, "a") as out:
        while not stop.is_set():
            try:
                records = c.poll(timeout=0.2)
            except EngineError as exc:
                _line(out, "poll-error", time.time(), _describe(exc))
                continue
            for r in records:
                _line(out, "record", r.partition, r.offset, int(r.value))
            if not records:
                continue
            t0 = time.time()
            try:
                c.commit()
            except Exception as exc:  # noqa: BLE001 - the test judges what it was
                _line(out, "commit-error", t0, time.time(), _describe(exc))
            else:
                _line(out, "commit", t0, time.time())


def campaign(hosts: str, path: str, identifier: str, out_path: str) -> None:
    """A candidate in kazoo's Election recipe; once leader it writes so and leads until
    killed. Sessions of 4 s (the least the ensemble's tickTime of 2 s allows); it tries
    to reconnect at least every second, as the engine's clients do (kazoo's default
    backs off to a minute, longer than its session outlives a quorum's return)."""
    from kazoo.client import KazooClient

    client = KazooClient(
        hosts=hosts,
        timeout=4.0,
        connection_retry={"max_tries": -1, "delay": 0.05, "max_delay": 1.0},
    )
    out = open(out_path, "a")  # noqa: SIM115 - open until the process is killed

    def changed(state: str) -> None:
        _line(out, "state", identifier, state, time.time())

    client.add_listener(changed)
    client.start(timeout=30)

    def lead() -> None:
        _line(out, "leader", identifier, time.time())
        while True:
            time.sleep(1)

    client.Election(path, identifier).run(lead)
