"""Rings belong to the engine's user: another local user cannot pre-create or swap one in.

Ring names are predictable, so these tests play the other user for real: a second
uid made with useradd (root only; skipped otherwise), whose code runs in a forked
child after setuid. The child is forked rather than started afresh because the
interpreter may live where the other user cannot read it (/root).
"""

from __future__ import annotations

import os
import pickle
import pwd
import shutil
import stat
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from engine_harness import Daemon, wait_for

from engine import Admin, Producer, RingPermissionError
from engine.cluster import ClusterView
from engine.datadir import DataDir
from engine.ring import SHM_DIR, Ring, unlink

CAPACITY = 1 << 16
MAX_MESSAGE = 8192
CONFIG = {"ring.bytes": CAPACITY, "max.message.bytes": MAX_MESSAGE}


def _path(name: str) -> str:
    return f"{SHM_DIR}/{name.lstrip('/')}"


@pytest.fixture(scope="module")
def other_user() -> Iterator[pwd.struct_passwd]:
    """A second local user, removed afterwards."""
    if os.geteuid() != 0:
        pytest.skip("needs root: makes a second user (useradd) to own rings")
    if shutil.which("useradd") is None or shutil.which("userdel") is None:
        pytest.skip("needs useradd and userdel to make a second user")
    name = f"engt{uuid.uuid4().hex[:10]}"
    subprocess.run(
        ["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        check=True,
        capture_output=True,
    )
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True)


def _become(user: pwd.struct_passwd) -> None:
    os.setgroups([])
    os.setgid(user.pw_gid)
    os.setuid(user.pw_uid)


def _send(fd: int, obj: object) -> None:
    data = pickle.dumps(obj)
    os.write(fd, len(data).to_bytes(4, "little") + data)


def _receive(fd: int) -> Any:
    def exactly(n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = os.read(fd, n - len(out))
            if not chunk:
                raise AssertionError("the other user's process ended without an answer")
            out += chunk
        return out

    return pickle.loads(exactly(int.from_bytes(exactly(4), "little")))


def _outcome(fn: Callable[[], object]) -> tuple[str, object]:
    try:
        return "ok", fn()
    except BaseException as exc:  # noqa: BLE001 - reported to the parent as it was
        return type(exc).__name__, str(exc)


def run_as(user: pwd.struct_passwd, fn: Callable[[], object]) -> tuple[str, object]:
    """Run ``fn`` as ``user`` in a forked child: ("ok", its result) or (the name of the
    exception it raised, its message)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: only what was imported before the fork is at hand
        try:
            os.close(r)
            _become(user)
            _send(w, _outcome(fn))
        finally:
            os._exit(0)
    os.close(w)
    try:
        return _receive(r)  # type: ignore[no-any-return]
    finally:
        os.close(r)
        os.waitpid(pid, 0)


class HeldRings:
    """A forked child running as another user, which made engine rings of the given
    names open to everyone (0666) and keeps them mapped; :meth:`tails` asks it the
    tail offset each of its mappings sees, and ends it."""

    def __init__(self, user: pwd.struct_passwd, names: list[str]) -> None:
        self.names = names
        to_parent, from_child = os.pipe()
        to_child, from_parent = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            try:
                os.close(to_parent)
                os.close(from_parent)
                _become(user)
                rings: list[Ring] = []

                def make() -> str:
                    for name in names:
                        rings.append(
                            Ring.create(name, CAPACITY, max_frame_length=MAX_MESSAGE + 24)
                        )
                        os.chmod(_path(name), 0o666)
                    return "ready"

                _send(from_child, _outcome(make))
                os.read(to_child, 1)  # until asked
                _send(from_child, _outcome(lambda: [r.status().tail_offset for r in rings]))
            finally:
                os._exit(0)
        os.close(from_child)
        os.close(to_child)
        self._from_child, self._to_child = to_parent, from_parent
        assert _receive(self._from_child) == ("ok", "ready")

    def tails(self) -> list[int]:
        os.write(self._to_child, b"?")
        outcome = _receive(self._from_child)
        assert outcome[0] == "ok", outcome
        return outcome[1]  # type: ignore[no-any-return]

    def close(self) -> None:
        for fd in (self._to_child, self._from_child):
            os.close(fd)
        os.waitpid(self.pid, 0)


def _owner_and_mode(name: str) -> tuple[int, int]:
    st = os.stat(_path(name))
    return st.st_uid, stat.S_IMODE(st.st_mode)


# -- the ring itself ---------------------------------------------------------------


def test_open_refuses_a_ring_another_user_made(other_user: pwd.struct_passwd) -> None:
    name = f"/engine-test-{uuid.uuid4().hex[:12]}"
    try:
        made = run_as(other_user, lambda: Ring.create(name, CAPACITY).close())
        assert made == ("ok", None)
        with pytest.raises(RingPermissionError) as refused:
            Ring.open(name)
        assert f"name={name} owner_uid={other_user.pw_uid} mode=0600" in str(refused.value)
        assert isinstance(refused.value, PermissionError)
    finally:
        unlink(name)


def test_open_refuses_a_ring_of_ours_open_to_others() -> None:
    name = f"/engine-test-{uuid.uuid4().hex[:12]}"
    Ring.create(name, CAPACITY).close()
    try:
        os.chmod(_path(name), 0o666)
        with pytest.raises(RingPermissionError, match=f"owner_uid={os.geteuid()} mode=0666"):
            Ring.open(name)
    finally:
        unlink(name)


def test_a_ring_is_made_0600_whatever_the_umask() -> None:
    name = f"/engine-test-{uuid.uuid4().hex[:12]}"
    old = os.umask(0o277)
    try:
        Ring.create(name, CAPACITY).close()
    finally:
        os.umask(old)
    try:
        assert _owner_and_mode(name) == (os.geteuid(), 0o600)
        Ring.open(name).close()
    finally:
        unlink(name)


def test_a_user_who_may_not_remove_another_users_ring_is_refused(
    other_user: pwd.struct_passwd,
) -> None:
    """The other user stands for an engine that does not run as root: it meets a ring
    it did not make and cannot remove (/dev/shm is sticky), and neither maps it nor
    replaces it."""
    name = f"/engine-test-{uuid.uuid4().hex[:12]}"
    Ring.create(name, CAPACITY).close()
    try:
        os.chmod(_path(name), 0o666)
        opened = run_as(other_user, lambda: Ring.open(name).close())
        replaced = run_as(other_user, lambda: Ring.create(name, CAPACITY, replace=True).close())
        made = run_as(other_user, lambda: Ring.create(name, CAPACITY).close())
        assert opened[0] == replaced[0] == made[0] == "RingPermissionError", (opened, replaced)
        assert f"owner_uid={os.geteuid()} mode=0666" in str(replaced[1])
        assert _owner_and_mode(name) == (os.geteuid(), 0o666)  # left as it was
    finally:
        unlink(name)


# -- brokers and clients -----------------------------------------------------------


def test_rings_another_user_made_before_a_start_are_replaced_and_see_nothing(
    daemon: Daemon, other_user: pwd.struct_passwd
) -> None:
    """Another user pre-creates, 0666, every ring the restarted daemon will use and
    keeps them mapped: the brokers make their own rings instead, and the other
    user's mappings see none of the records produced."""
    dd = DataDir.resolve(daemon.data_dir)
    with Admin(daemon.data_dir) as admin:
        described = admin.create_topic("owned", partitions=2, replication=2, config=CONFIG)
    names = [
        dd.ring_name(described.topic_id, p.partition, broker)
        for p in described.partitions
        for broker in p.replicas
    ]
    daemon.stop()
    assert not any(os.path.exists(_path(n)) for n in names)
    held = HeldRings(other_user, names)
    try:
        assert all(_owner_and_mode(n) == (other_user.pw_uid, 0o666) for n in names)
        daemon.start()
        with Producer(daemon.data_dir, acks="all") as producer:
            for i in range(40):
                producer.send("owned", b"secret-%d" % i, partition=i % 2).get(timeout=10)
        for name in names:
            assert _owner_and_mode(name) == (os.geteuid(), 0o600), name
        assert held.tails() == [0] * len(names)
    finally:
        held.close()
    logs = "".join(
        path.read_text() for path in Path(daemon.data_dir, "logs").glob("broker-*.log")
    )
    assert logs.count("removed a ring that was not this user's alone") == len(names)
    assert f"owner_uid={other_user.pw_uid} mode=0666" in logs


def test_a_client_refuses_a_ring_another_user_put_in_the_leaders_place(
    admin: Admin, other_user: pwd.struct_passwd
) -> None:
    name = f"swap-{uuid.uuid4().hex[:8]}"
    described = admin.create_topic(name, partitions=1, config=CONFIG)
    leader = described.partitions[0].leader
    assert leader is not None
    ring = DataDir.resolve(admin.data_dir).ring_name(described.topic_id, 0, leader)
    try:
        unlink(ring)  # the broker keeps its own mapping; the name is free for another
        made = run_as(
            other_user,
            lambda: (
                Ring.create(ring, CAPACITY, max_frame_length=MAX_MESSAGE + 24).close(),
                os.chmod(_path(ring), 0o666),
            ),
        )
        assert made[0] == "ok", made
        view = ClusterView(admin.data_dir)
        try:
            with pytest.raises(RingPermissionError) as refused:
                view.refresh(name, wait_s=0.5)
        finally:
            view.close()
        assert f"partition 0 of topic {name!r}" in str(refused.value)
        assert f"name={ring} owner_uid={other_user.pw_uid} mode=0666" in str(refused.value)
    finally:
        admin.delete_topic(name)
        wait_for(lambda: not os.path.exists(_path(ring)), what="the swapped ring removed")
