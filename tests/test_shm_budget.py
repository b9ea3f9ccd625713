"""The shared-memory budget: a daemon's rings together never take more than it, and a
topic that would take them past it is refused before anything is written."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
from pathlib import Path

import pytest
from client_procs import create_topics
from engine_harness import Daemon, join_ok, running_daemon, started, wait_for

from engine import Admin, ConfigError
from engine import metadata as md
from engine.datadir import DataDir
from engine.shm import parse_size

SPAWN = mp.get_context("spawn")
SMALL = {"ring.bytes": 1 << 16, "max.message.bytes": 8192}
FOOTPRINT = (1 << 16) + 4096  # one replica's ring: its data area and its header


def rings_in_shm(daemon: Daemon) -> int:
    """The bytes of /dev/shm the daemon's rings take now."""
    prefix = DataDir.resolve(daemon.data_dir).ring_prefix()
    return sum(
        os.stat(f"/dev/shm/{name}").st_size
        for name in os.listdir("/dev/shm")
        if name.startswith(prefix)
    )


def shm_status(daemon: Daemon) -> dict:
    return json.loads(daemon.cli("status", "--json").stdout)["shm"]


def assert_not_written(admin: Admin, name: str) -> None:
    zk = admin._cluster.zk
    assert name not in admin.list_topics()
    assert zk.exists(md.topic_path(name)) is None
    assert zk.exists(md.config_path(name)) is None


def test_sizes_are_read_as_engine_start_takes_them() -> None:
    assert parse_size("65536") == 65536
    assert parse_size("512M") == 512 << 20
    assert parse_size("4G") == 4 << 30
    assert parse_size("272k") == 272 << 10
    assert parse_size("1GiB") == 1 << 30
    for bad in ("", "lots", "1.5G", "-1", "4X"):
        with pytest.raises(ConfigError, match="size="):
            parse_size(bad)


def test_engine_start_refuses_a_budget_it_cannot_keep(tmp_path: Path) -> None:
    daemon = Daemon(tmp_path / "engine")
    for budget, reason in (
        ("lots", "size='lots'"),
        ("1K", "below one smallest ring"),
        ("1T", "larger than /dev/shm"),
    ):
        out = daemon.cli("start", "--shm-budget", budget, check=False)
        assert out.returncode == 1, out
        assert reason in out.stderr.decode()
    assert not (tmp_path / "engine" / "engine.json").exists()


def test_a_daemon_takes_the_topics_that_fit_its_budget_and_refuses_the_rest(
    tmp_path: Path,
) -> None:
    budget = 4 * FOOTPRINT  # 272 KiB
    with running_daemon(tmp_path / "engine", start_args=["--shm-budget", "272K"]) as daemon:
        assert shm_status(daemon) == {"budget_bytes": budget, "used_bytes": 0}
        with Admin(daemon.data_dir) as admin:
            admin.create_topic("fits", partitions=2, replication=2, config=SMALL)  # 4 rings
            with pytest.raises(ConfigError) as refused:
                admin.create_topic("over", partitions=1, config=SMALL)
            message = str(refused.value)
            assert f"budget={budget} " in message
            assert f"used={budget} " in message
            assert f"asked={FOOTPRINT} " in message
            assert "partitions=1 x replication=1 x (ring.bytes=65536 + 4096)" in message
            assert_not_written(admin, "over")
            assert shm_status(daemon) == {"budget_bytes": budget, "used_bytes": budget}
            assert b"272.0 KiB of a 272.0 KiB budget" in daemon.cli("status").stdout
            wait_for(lambda: rings_in_shm(daemon) == budget, what="the 4 rings of 'fits'")

            # One ring larger than the whole budget, and one larger than any ring may be.
            with pytest.raises(ConfigError, match=f"budget={budget} "):
                admin.create_topic("big", config={**SMALL, "ring.bytes": 1 << 20})
            with pytest.raises(ConfigError, match=r"\[65536, 1073741824\]: key='ring.bytes'"):
                admin.create_topic("huge", config={**SMALL, "ring.bytes": 1 << 31})
            assert_not_written(admin, "big")
            assert_not_written(admin, "huge")

            admin.delete_topic("fits")
            admin.create_topic("over", partitions=1, config=SMALL)
            assert shm_status(daemon)["used_bytes"] == FOOTPRINT
            wait_for(lambda: rings_in_shm(daemon) == FOOTPRINT, what="only the ring of 'over'")


def test_creations_in_several_processes_at_once_never_pass_the_budget(tmp_path: Path) -> None:
    """Eight processes create three one-ring topics each, all at once, against a budget
    of ten rings: exactly ten are made (each refusal saw the budget full), never more."""
    budget = 10 * FOOTPRINT
    with running_daemon(tmp_path / "engine", start_args=["--shm-budget", str(budget)]) as daemon:
        go = SPAWN.Event()
        out = SPAWN.Queue()
        procs = [
            SPAWN.Process(
                target=create_topics, args=(str(daemon.data_dir), f"p{i}", 3, SMALL, go, out)
            )
            for i in range(8)
        ]
        with started(procs):
            go.set()
            results = [out.get(timeout=120) for _ in range(24)]
            join_ok(procs)
        created = sorted(name for kind, name in results if kind == "created")
        refused = [message for kind, message in results if kind == "refused"]
        assert len(created) == 10, results
        assert len(refused) == 14
        assert all(f"budget={budget} " in m and f"used={budget} " in m for m in refused), refused
        with Admin(daemon.data_dir) as admin:
            assert admin.list_topics() == created
            assert md.shm_used(admin._cluster.zk) == budget
        wait_for(lambda: rings_in_shm(daemon) == budget, what="the rings of the ten topics")
