"""`engine coord`: the coordinator's tree from the command line, as the data dir's owner."""

from __future__ import annotations

import contextlib
import subprocess
import sys

from coordination_harness import unique
from engine_harness import Daemon

from engine import ConfigStore, Election, LeaseLock, Lock
from engine.coordination import paths


def test_engine_coord_commands(shared_daemon: Daemon) -> None:
    d, name = shared_daemon, unique("cli")
    key = f"{paths.CONFIG}/{name}/mode"
    d.cli("coord", "set", key, '"fast"')
    assert d.cli("coord", "get", key).stdout.decode() == '"fast"\n'
    stat = d.cli("coord", "get", key, "--stat").stdout.decode()
    assert "dataVersion = 0" in stat and "numChildren = 0" in stat
    assert d.cli("coord", "ls", f"{paths.CONFIG}/{name}").stdout.decode() == "mode\n"
    assert f"{paths.CONFIG}/{name}/mode" in d.cli("coord", "ls", paths.BASE, "-R").stdout.decode()
    failed = d.cli("coord", "set", key, "x", "--version", "7", check=False)
    assert failed.returncode == 1
    assert failed.stderr.decode() == (
        f"engine: the znode is at another version: path={key} expected=7 actual=0\n"
    )
    missing = d.cli("coord", "get", "/no/such/node", check=False)
    assert (missing.returncode, missing.stderr.decode()) == (
        1, "engine: no such znode: path=/no/such/node\n")  # fmt: skip
    with ConfigStore(name, d.data_dir) as store:
        assert store.get("mode") == "fast"  # the CLI wrote JSON the store reads
        watcher = subprocess.Popen(
            [sys.executable, "-m", "engine", "coord", "watch", key, "--count", "2"],
            stdout=subprocess.PIPE, env=d.env, text=True,
        )  # fmt: skip
        try:
            assert watcher.stdout is not None
            assert watcher.stdout.readline() == f'{key} version 0: "fast"\n'
            store.set("mode", "safe")
            assert watcher.stdout.readline() == f'{key} version 1: "safe"\n'
            assert watcher.wait(10) == 0
        finally:
            watcher.kill()
            watcher.wait()
            watcher.stdout.close()  # type: ignore[union-attr]
    with contextlib.closing(Lock(name, d.data_dir, "cli-holder")) as lock, \
            contextlib.closing(LeaseLock(name, 30, d.data_dir, "lease-holder")) as lease, \
            contextlib.closing(Election(name, d.data_dir, "cli-leader")) as election:  # fmt: skip
        assert lock.acquire(5) and lease.acquire(5) and election.campaign(5)
        locks = d.cli("coord", "locks").stdout.decode().splitlines()
        assert any(line.split()[:3] == ["lock", name, "cli-holder"] for line in locks), locks
        assert any(line.split()[:3] == ["lease", name, "lease-holder"] and "renewed" in line
                   for line in locks), locks  # fmt: skip
        leaders = d.cli("coord", "leader", name).stdout.decode().splitlines()
        assert leaders[1].split()[:2] == [name, "cli-leader"]
    d.cli("coord", "rm", "-r", f"{paths.CONFIG}/{name}")
    assert d.cli("coord", "ls", paths.CONFIG).stdout.decode().split().count(name) == 0
    nonempty = d.cli("coord", "rm", paths.BASE, check=False)
    assert nonempty.returncode == 1 and "has children" in nonempty.stderr.decode()
