"""Child-process bodies for the ring's multi-process tests (spawned, so importable)."""

from __future__ import annotations

import os
import signal
import struct
import time
from typing import Any

from engine._native import lib

from engine.errors import ClosedError
from engine.ring import Ring, producer_fields


def produce(name: str, producer: int, count: int, batch: int) -> None:
    """Append ``count`` records "<producer>:<seq>" keyed by producer, ``batch`` per call."""
    ring = Ring.open(name)
    fields = producer_fields()
    key = b"p%d" % producer
    seq = 0
    while seq < count:
        n = min(batch, count - seq)
        if n == 1:
            ring.append(fields, struct.pack("<II", producer, seq) + b"x" * (seq % 50), key=key)
        else:
            values = [
                struct.pack("<II", producer, s) + b"y" * (s % 50) for s in range(seq, seq + n)
            ]
            blob = b"".join(values)
            lengths = [len(v) for v in values]
            ring.append_batch(
                fields, blob, value_lengths=lengths, keys=key * n, key_lengths=[len(key)] * n
            )
        seq += n
    ring.close()


def claim_and_die(name: str, stamp: bool) -> None:
    """Claim a frame and die by SIGKILL before publishing it."""
    ring = Ring.open(name)
    result = lib.engine_ring_claim_for_test(ring._ptr(), 200, 1 if stamp else 0)
    assert result >= 0, result
    os.kill(os.getpid(), signal.SIGKILL)


def append_after(name: str, delay_s: float, value: bytes) -> None:
    time.sleep(delay_s)  # the parent is blocked in wait(); this is the event it waits for
    ring = Ring.open(name)
    ring.append(producer_fields(), value)
    ring.close()


def fill_when_waited_on(name: str) -> None:
    """Once a drain sleeps in wait_full (full_waiters, header offset 804, is 1), append
    until the ring is full: the append that finds it full is what must wake it."""
    from engine._native import ffi

    from engine.errors import BufferFullError

    ring = Ring.open(name)
    deadline = time.monotonic() + 30
    while int.from_bytes(ffi.buffer(ring._ptr(), 808)[804:808], "little") != 1:
        if time.monotonic() > deadline:
            raise SystemExit("nobody waited on full_seq")
        time.sleep(0.001)
    try:
        while True:
            ring.append(producer_fields(), b"x" * 1000, timeout_ms=0)
    except BufferFullError:
        pass
    ring.close()


def zombie(name: str, batch: int) -> None:
    """A transactional producer (id 7, epoch 0) appending until it is fenced: exit 0."""
    from engine.errors import ProducerFencedError

    ring = Ring.open(name)
    fields = producer_fields(producer_id=7, producer_epoch=0, base_sequence=0, attributes=0x10)
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            if batch == 1:
                ring.append(fields, b"zombie")
            else:
                ring.append_batch(fields, b"zombie" * batch, value_lengths=[6] * batch)
    except ProducerFencedError:
        ring.close()
        return
    raise SystemExit(3)  # never fenced


def use_inherited(ring: Ring, out: Any) -> None:
    """In a forked child: the parent's mapping refuses use, and closing it is harmless."""
    try:
        ring.status()
    except ClosedError:
        out.put("refused")
    else:
        out.put("used")
    ring.close()  # must not unmap the parent's view


def read_every_record(name: str, total: int, ready: Any, out: Any) -> None:
    """Read the ring from its start until ``total`` records came, waiting on it as a
    consumer does; put (offset, key, value) of each, in the order read, on ``out``."""
    from engine.record import RecordDecoder
    from engine.ring import OK, Cursor

    ring = Ring.open(name)
    cursor, decoder, buf = Cursor(), RecordDecoder(), bytearray(1 << 20)
    got: list[tuple[int, bytes | None, bytes | None]] = []
    ready.set()
    deadline = time.monotonic() + 60
    while len(got) < total and time.monotonic() < deadline:
        code, n = ring.read(cursor, buf)
        if code != OK:
            ring.wait(cursor, 0.05)
            continue
        data, pos = bytes(buf[:n]), 0
        while pos < n:
            next_offset = got[-1][0] + 1 if got else 0
            records, used = decoder.decode(data[pos:], "t", 0, next_offset, 1 << 30)
            got += [(r.offset, r.key, r.value) for r in records]
            if used == 0:
                break
            pos += used
    ring.close()
    out.put(got)
