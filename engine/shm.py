"""The shared-memory budget: how much memory one daemon's rings may take together.

Every replica of every partition has a ring of its own: a POSIX shared-memory
object of ``ring.bytes`` plus a 4096-byte header, which its broker makes when the
replica starts and faults in whole, as does every process that maps it. Rings are
resident memory (tmpfs), and what a topic takes is known when it is made::

    partitions x replication x (ring.bytes + 4096)

A daemon's budget bounds the sum over all its topics: ``create_topic``
(engine.metadata) refuses, before it writes anything, a topic that would take the
daemon past it. The budget is set by ``engine start --shm-budget SIZE``, else
:func:`default_budget` takes it from the machine; the daemon writes it into the
cluster config znode, under :data:`BUDGET_KEY`, at every start.
"""

from __future__ import annotations

import os
import re

from engine.config import MIN_RING_BYTES, RING_HEADER_BYTES
from engine.errors import ConfigError

BUDGET_KEY = "shm.budget.bytes"
SHM_DIR = "/dev/shm"

_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = re.compile(r"^\s*(\d+)\s*(?:([KMGT])I?B?|B)?\s*$", re.IGNORECASE)


def ring_footprint(ring_bytes: int) -> int:
    """The bytes one replica's ring takes: its data area and its header."""
    return ring_bytes + RING_HEADER_BYTES


def machine_memory() -> int:
    """The machine's memory (MemTotal), bytes."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def shm_size() -> int | None:
    """The size of the file system under /dev/shm, bytes; None when there is none."""
    try:
        st = os.statvfs(SHM_DIR)
    except OSError:
        return None
    return st.f_blocks * st.f_frsize


def default_budget() -> int:
    """Half of /dev/shm, and at most a quarter of the machine's memory.

    Half of /dev/shm leaves the rest to the other programs that use POSIX shared
    memory. A quarter of the memory, because ring pages are resident: the page cache
    the segment files are written through, the brokers and the clients need the rest
    (the OOM killer takes brokers first when tmpfs fills the memory)."""
    quarter = machine_memory() // 4
    size = shm_size()
    return quarter if size is None else min(size // 2, quarter)


def parse_size(text: str) -> int:
    """Bytes from a size as `engine start --shm-budget` takes it: plain bytes
    (``65536``) or with a binary unit (``512M``, ``4G``, ``512MiB``; K, M, G, T are
    powers of 1024)."""
    match = _SIZE.match(text)
    if match is None:
        raise ConfigError(
            f"a size is bytes, or a number with K, M, G or T (powers of 1024): size={text!r}"
        )
    unit = match.group(2)
    return int(match.group(1)) * (_UNITS[unit.upper()] if unit else 1)


def check_budget(budget: int) -> int:
    """The budget, if it holds one smallest ring and fits in /dev/shm; else ConfigError."""
    smallest = ring_footprint(MIN_RING_BYTES)
    if budget < smallest:
        raise ConfigError(
            f"shm budget below one smallest ring ({smallest} bytes): shm_budget={budget}"
        )
    size = shm_size()
    if size is not None and budget > size:
        raise ConfigError(
            f"shm budget larger than {SHM_DIR} ({size} bytes): shm_budget={budget}"
        )
    return budget


def format_size(n: int) -> str:
    """``n`` bytes for people: ``16.0 MiB``."""
    if n < 1024:
        return f"{n} B"
    units = ("KiB", "MiB", "GiB", "TiB")
    exp = min(len(units), (n.bit_length() - 1) // 10)
    return f"{n / (1 << (10 * exp)):.1f} {units[exp - 1]}"
