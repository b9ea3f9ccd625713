"""scripts/soak (bench/soak.py): its final check finds each kind of defect it reports, and
a short run of it against a real daemon accounts for every record and leaves nothing."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.soak import MARK, ROW, Finding, Log, record_id, verify
from engine import TopicPartition
from engine.datadir import DataDir

ROOT = Path(__file__).resolve().parent.parent
TP = TopicPartition("soak-0", 0)
A0, A1, A2 = (record_id(1, 0, seq) for seq in range(3))  # key 1.0, seq 0..2
B0 = record_id(1, 1, 0)


def rows(*pairs: tuple[int, int]) -> Any:
    return np.array(list(pairs), dtype=ROW)


def log_of(*ids: int) -> Log:
    """One partition holding ``ids`` at offsets 0, 1, 2, ..."""
    return Log([(TP, np.array(ids, dtype="<u8"), np.arange(len(ids), dtype=np.int64))])


def read(*pairs: tuple[int, int]) -> list[tuple[str, Any]]:
    """A consumer's file: a time mark, then what it read."""
    return [("consumed-1", rows((MARK, time.time_ns()), *pairs))]


def test_a_clean_history_has_no_finding() -> None:
    acked = [("acked-1", rows((A0, 0), (A1, 1), (B0, 2)))]
    v = verify(acked, [], log_of(A0, A1, B0, A2), read((A0, 0), (A1, 1), (B0, 2), (A2, 3)))
    assert v.ok, [(f.title, f.count) for f in v.findings() if f.count]
    assert (v.acked, v.in_log, v.consumed) == (3, 4, 4)


@pytest.mark.parametrize(
    ("expected", "acked", "log", "consumed"),
    [
        # A1 acknowledged, not in the log: lost, and so never read by the group either.
        ({"lost": 1, "not_consumed": 1}, [(A0, 0), (A1, 1)], [A0], [(A0, 0)]),
        ({"duplicated": 1}, [(A0, 0), (A1, 1)], [A0, A1, A1], [(A0, 0), (A1, 1)]),
        ({"out_of_order": 1}, [(A0, 0), (A2, 1), (A1, 2)], [A0, A2, A1],
         [(A0, 0), (A2, 1), (A1, 2)]),
        ({"acked_moved": 1}, [(A0, 0), (B0, 1)], [A0, A1, B0], [(A0, 0), (A1, 1), (B0, 2)]),
        ({"not_consumed": 1}, [(A0, 0), (A1, 1)], [A0, A1], [(A0, 0)]),
        ({"consumed_gone": 1}, [(A0, 0)], [A0], [(A0, 0), (A1, 1)]),
        # A1 and B0 read at each other's offset:
        ({"consumed_moved": 2}, [(A0, 0), (B0, 1), (A1, 2)], [A0, B0, A1],
         [(A0, 0), (A1, 1), (B0, 2)]),
    ],
    ids=["lost", "duplicated", "out-of-order", "acknowledged-elsewhere", "not-read-by-the-group",
         "read-not-in-the-log", "read-elsewhere"],
)  # fmt: skip
def test_the_final_check_finds_each_defect(
    expected: dict[str, int],
    acked: list[tuple[int, int]],
    log: list[int],
    consumed: list[tuple[int, int]],
) -> None:
    v = verify([("acked-1", rows(*acked))], [], log_of(*log), read(*consumed))
    found = {name: f.count for name, f in vars(v).items() if isinstance(f, Finding) and f.count}
    assert found == expected
    assert not v.ok


@pytest.mark.slow
def test_a_short_soak_of_producer_and_consumer_kills_accounts_for_every_record(
    tmp_path: Path,
) -> None:
    """Kinds that move no leader (the engine's own failover is for the long runs): the
    soak's whole machinery, from the daemon's start to the check and the clean-up."""
    work = tmp_path / "soak"
    prefix = DataDir.resolve(work / "engine").ring_prefix()
    proc = subprocess.run(
        [sys.executable, "-m", "bench.soak", "--kills", "3", "--kinds", "producer,consumer",
         "--seed", "1", "--data-dir", str(work)],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True,
        timeout=240,
    )  # fmt: skip
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "kills survived        3 of 3" in out
    for line in ("lost                  0", "duplicated            0", "out of order          0"):
        assert line in out
    assert "every acknowledged record read: yes" in out
    assert not work.exists()  # removed after a clean run, the daemon's data dir with it
    assert not [name for name in os.listdir("/dev/shm") if name.startswith(prefix)]
    assert not processes_of(work)


def processes_of(path: Path) -> list[int]:
    """Pids whose command line names ``path`` (the daemon's, the brokers', the clients')."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if str(path).encode() in f.read():
                    pids.append(int(pid))
        except OSError:
            continue
    return pids
