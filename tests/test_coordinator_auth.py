"""The engine's znodes are its owner's alone (engine/acl.py): every engine path carries
the digest ACL of the data dir's secret, on the built-in coordinator and on a real
ZooKeeper (`engine start --coordinator`). Another session, or another local user,
gets NoAuth; the engine's own processes and clients, and plain ZooKeeper users on
their own paths, go on as before."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from engine_harness import Daemon, wait_for
from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError, NotEmptyError
from kazoo.security import make_acl, make_digest_acl

from engine import Admin, AuthorizationError, Consumer, Producer, TopicPartition
from engine import acl as engine_acl
from engine import metadata as md
from engine import offset_store as store
from engine import transaction as txn
from engine.coordinator.server import FOUR_LETTER_WORDS
from engine.datadir import DataDir

sys.path.insert(0, str(Path(__file__).parent / "coordinator"))
from zkharness import EngineCoordinator, RealZooKeeper, four_letter_word, require_zookeeper

TOPIC, GROUP, TXN_ID = "secret-topic", "secret-group", "secret-txn"
OPEN = [make_acl("world", "anyone", all=True)]
KINDS = ["engine", pytest.param("zookeeper", marks=pytest.mark.zookeeper)]


@dataclass
class Cluster:
    """A daemon on a coordinator of one kind, its data dir readable by its owner only."""

    kind: str
    daemon: Daemon
    zookeeper: RealZooKeeper | None

    @property
    def data_dir(self) -> Path:
        return self.daemon.data_dir

    @property
    def hosts(self) -> str:
        return str(self.daemon.runtime()["coordinator"])

    def start(self) -> None:
        args = ["start", "--data-dir", str(self.data_dir), "--brokers", "2"]
        if self.zookeeper is not None:
            args += ["--coordinator", self.zookeeper.hosts]
        self.daemon.cli(*args)

    def engine_client(self) -> KazooClient:
        return md.connect(DataDir.resolve(self.data_dir))


def private_base() -> Path:
    """A directory every user may pass through (0755), so that another user reaches the
    data dir itself and is stopped by it (0700), not by pytest's private temp dir."""
    path = Path(tempfile.mkdtemp(prefix="engine-acl-"))
    path.chmod(0o755)
    return path


@contextlib.contextmanager
def running_cluster(kind: str, base: Path) -> Iterator[Cluster]:
    """A started daemon on the built-in coordinator or on Debian's ZooKeeper; stopped
    (and killed if need be) however the block ends."""
    if kind == "zookeeper":
        require_zookeeper()
    cluster = Cluster(kind, Daemon(base / "engine", brokers=2),
                      RealZooKeeper(base / "zk") if kind == "zookeeper" else None)
    try:
        if cluster.zookeeper is not None:
            cluster.zookeeper.start()
        cluster.start()
        yield cluster
    finally:
        cluster.daemon.stop()
        cluster.daemon.kill_everything()
        if cluster.zookeeper is not None:
            cluster.zookeeper.stop()


def populate(data_dir: Path) -> None:
    """A topic with records, a group that committed offsets, a transactional id."""
    with Admin(data_dir) as admin:
        admin.create_topic(TOPIC, partitions=2)
    with Producer(data_dir) as p:
        for i in range(3):
            p.send(TOPIC, f"v{i}".encode(), partition=0).get(10)
    with Consumer(data_dir=data_dir, group_id=GROUP, auto_offset_reset="earliest") as c:
        c.subscribe([TOPIC])
        got: list[Any] = []
        deadline = time.monotonic() + 20
        while len(got) < 3 and time.monotonic() < deadline:
            got += c.poll(timeout=1)
        assert len(got) == 3
        c.commit()
    with Producer(data_dir, transactional_id=TXN_ID) as tp:
        tp.init_transactions()
        tp.begin_transaction()
        tp.send(TOPIC, b"in a transaction", partition=1)
        tp.commit_transaction()


@pytest.fixture(scope="module", params=KINDS)
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """One populated daemon per coordinator kind, shared by this module's tests."""
    base = private_base()
    try:
        with running_cluster(request.param, base) as c:
            populate(c.data_dir)
            yield c
    finally:
        shutil.rmtree(base, ignore_errors=True)


def engine_paths(zk: KazooClient) -> list[str]:
    """Every engine znode (the top-level engine nodes and all below them), parents first."""
    tops = [*engine_acl.TOP_LEVEL, md.CONTROLLER]
    level = [p for p in tops if zk.exists(p) is not None]
    found: list[str] = []
    while level:
        found += level
        level = [f"{p}/{c}" for p in level for c in sorted(zk.get_children(p))]
    return found


def stop_client(client: KazooClient) -> None:
    client.stop()
    client.close()


# -- the tree of a running daemon ----------------------------------------------------


def test_every_engine_znode_carries_only_the_engines_acl(cluster: Cluster) -> None:
    secret = DataDir.resolve(cluster.data_dir).read_secret()
    zk = cluster.engine_client()
    try:
        paths = engine_paths(zk)
        for path in [
            md.CONTROLLER, md.CONTROLLER_EPOCH, f"{md.BROKER_IDS}/1",
            md.state_path(TOPIC, 0), md.config_path(TOPIC), md.CLUSTER_CONFIG,
            store.offset_path(GROUP, TopicPartition(TOPIC, 0)), store.state_path(GROUP),
            txn.txn_path(TXN_ID), txn.PRODUCER_ID_BLOCK, f"{store.CONSUMERS}/{md.GUARD}",
        ]:
            assert path in paths
        wrong = {p: zk.get_acls(p)[0] for p in paths
                 if list(zk.get_acls(p)[0]) != md.engine_acl(secret)}
        assert wrong == {}
    finally:
        stop_client(zk)


def test_a_session_without_the_secret_gets_no_auth_on_every_engine_path(
    cluster: Cluster,
) -> None:
    """Read, write, create below, delete, and the ACL itself: refused on every engine
    znode, for a session with no identity and for one with a wrong secret. The nodes
    directly under the open root cannot be deleted either: each keeps its guard (the
    ephemeral /controller aside: see the test below)."""
    zk = cluster.engine_client()
    try:
        paths = engine_paths(zk)
    finally:
        stop_client(zk)
    assert {store.offset_path(GROUP, TopicPartition(TOPIC, 0)), txn.txn_path(TXN_ID),
            md.state_path(TOPIC, 1), md.CONTROLLER} <= set(paths)
    stranger = KazooClient(hosts=cluster.hosts)
    guesser = KazooClient(hosts=cluster.hosts, auth_data=[("digest", "engine:not-the-secret")])
    refused: list[Callable[[KazooClient, str], Any]] = [
        lambda c, p: c.get(p),
        lambda c, p: c.get_children(p),
        lambda c, p: c.get_acls(p),
        lambda c, p: c.set(p, b"mine now"),
        lambda c, p: c.set_acls(p, OPEN),
        lambda c, p: c.create(f"{p}/intruder", b""),
    ]
    try:
        for client in (stranger, guesser):
            client.start(timeout=15)
            for path in paths:
                for call in refused:
                    with pytest.raises(NoAuthError):
                        call(client, path)
                if path == md.CONTROLLER:
                    continue
                with pytest.raises(NotEmptyError if path.count("/") == 1 else NoAuthError):
                    client.delete(path)
    finally:
        stop_client(stranger)
        stop_client(guesser)


def test_the_four_letter_words_name_no_engine_path(cluster: Cluster) -> None:
    """ruok, srvr, mntr, ...: counts and settings, not the topics', groups' or
    transactional ids' names (a real ZooKeeper's wchp would: its whitelist is its
    admin's, see engine/acl.py)."""
    if cluster.kind != "engine":
        pytest.skip("a real ZooKeeper's four-letter words are its admin's to allow")
    port = int(cluster.hosts.rsplit(":", 1)[1])
    for word in sorted(FOUR_LETTER_WORDS):
        text = four_letter_word(port, word)
        assert text
        assert not any(name in text for name in (TOPIC, GROUP, TXN_ID, "/brokers")), word


def test_a_controller_node_made_by_another_session_is_replaced_by_a_brokers(
    cluster: Cluster,
) -> None:
    """/controller is an ephemeral directly under the open root: anyone may delete it and
    make their own, naming a broker that does not exist (or unreadable). The brokers
    remove it and elect one of theirs, and the cluster goes on (a topic is created)."""
    stranger = KazooClient(hosts=cluster.hosts)
    stranger.start(timeout=15)
    zk = cluster.engine_client()

    def a_brokers_controller() -> bool:
        try:
            data, stat = zk.get(md.CONTROLLER)
        except Exception:  # noqa: BLE001 - gone or unreadable: not yet
            return False
        registration = zk.exists(md.broker_path(int(md.decode(data)["brokerid"])))
        return registration is not None and registration.ephemeralOwner == stat.ephemeralOwner

    try:
        stranger.add_auth("digest", "mallory:pw")
        for acl in (OPEN, [make_digest_acl("mallory", "pw", all=True)]):
            tx = stranger.transaction()
            tx.delete(md.CONTROLLER)
            tx.create(md.CONTROLLER, md.encode({"version": 1, "brokerid": 99}), acl=acl,
                      ephemeral=True)
            assert tx.commit() == [True, md.CONTROLLER]
            wait_for(a_brokers_controller, 15, what="a broker's /controller again")
        with Admin(cluster.data_dir) as admin:
            admin.create_topic("after-the-squatter", partitions=1)
            admin.delete_topic("after-the-squatter")
    finally:
        stop_client(zk)
        stop_client(stranger)


def test_the_engines_own_clients_keep_working(cluster: Cluster) -> None:
    dd = cluster.data_dir
    tp0 = TopicPartition(TOPIC, 0)
    with Admin(dd) as admin:
        assert TOPIC in admin.list_topics()
    with Producer(dd) as p:
        p.send(TOPIC, b"one more", partition=0).get(10)
    with Consumer(data_dir=dd, group_id=GROUP, enable_auto_commit=False) as c:
        c.subscribe([TOPIC])
        got: list[Any] = []
        deadline = time.monotonic() + 20
        while not any(r.partition == 0 for r in got) and time.monotonic() < deadline:
            got += c.poll(timeout=1)
        # partition 0 resumes at the committed offset 3 (partition 1 had none committed)
        assert [(r.offset, r.value) for r in got if r.partition == 0] == [(3, b"one more")]
        c.commit()
        assert c.committed(tp0) == 4
    with Producer(dd, transactional_id=TXN_ID) as tp:
        tp.init_transactions()  # a second instance: the epoch goes up
    groups = cluster.daemon.cli("groups", "list", "--data-dir", str(dd)).stdout.decode()
    assert groups.split() == [GROUP]  # the guard of /consumers is no group


def test_a_plain_zookeeper_user_keeps_its_own_paths(cluster: Cluster) -> None:
    """Root stays open: a kazoo user without the secret makes, reads, changes and deletes
    its own nodes, top-level ones included, and can lock them with its own ACL."""
    zk = KazooClient(hosts=cluster.hosts)
    zk.start(timeout=15)
    try:
        zk.create("/my-app/config", b"v1", makepath=True)
        assert zk.get("/my-app/config")[0] == b"v1"
        zk.set("/my-app/config", b"v2")
        assert zk.get_children("/my-app") == ["config"]
        zk.add_auth("digest", "me:pw")
        zk.create("/my-app/private", b"mine", acl=[make_digest_acl("me", "pw", all=True)])
        assert zk.get("/my-app/private")[0] == b"mine"
        zk.delete("/my-app", recursive=True)
        assert zk.exists("/my-app") is None
    finally:
        stop_client(zk)


# -- another local user ----------------------------------------------------------------


@pytest.fixture(scope="module")
def other_user() -> Iterator[pwd.struct_passwd]:
    """A second local user, made for this module and removed afterwards."""
    if os.geteuid() != 0:
        pytest.skip("needs root: a second user is made with useradd and taken with setuid")
    if shutil.which("useradd") is None:
        pytest.skip("useradd is not installed: no second user to try with")
    name = f"eacl{os.getpid()}"
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                    name], check=True, capture_output=True)
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True)


def _as_user(uid: int, gid: int, fn: Callable[..., Any], args: tuple[Any, ...],
             conn: Any) -> None:
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    try:
        conn.send(("done", fn(*args)))
    except BaseException as exc:  # noqa: BLE001 - reported to the test
        conn.send(("raised", repr(exc)))


def run_as(user: pwd.struct_passwd, fn: Callable[..., Any], *args: Any) -> Any:
    """fn(*args) in a forked child that has become ``user``: no exec, so the child keeps
    the modules this process imported (the venv under /root is not the user's to read)."""
    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_as_user, args=(user.pw_uid, user.pw_gid, fn, args, send))
    proc.start()
    send.close()
    try:
        assert receive.poll(60), "the other user's process did not answer in 60 s"
        outcome, value = receive.recv()
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join()
    assert outcome == "done", value
    return value


def _what_another_user_can_do(data_dir: str, hosts: str) -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        out["secret"] = Path(data_dir, "engine.secret").read_text()
    except PermissionError:
        out["secret"] = "PermissionError"
    try:
        Admin(data_dir).close()
        out["admin"] = "opened"
    except AuthorizationError as exc:
        out["admin"] = str(exc)
    zk = KazooClient(hosts=hosts)
    zk.start(timeout=15)
    attempts: dict[str, Callable[[], Any]] = {
        "read offsets": lambda: zk.get(store.offset_path(GROUP, TopicPartition(TOPIC, 0))),
        "list topics": lambda: zk.get_children(md.BROKER_TOPICS),
        "read transactions": lambda: zk.get(txn.txn_path(TXN_ID)),
        "ask to delete the topic": lambda: zk.create(f"{md.DELETE_TOPICS}/{TOPIC}", b""),
        "delete the topic": lambda: zk.delete(md.topic_path(TOPIC), recursive=True),
        "delete its config": lambda: zk.delete(md.config_path(TOPIC)),
    }
    for what, attempt in attempts.items():
        try:
            attempt()
            out[what] = "done"
        except NoAuthError:
            out[what] = "NoAuth"
    zk.stop()
    zk.close()
    return out


def test_another_user_reads_neither_the_secret_nor_the_tree_nor_deletes_a_topic(
    cluster: Cluster, other_user: pwd.struct_passwd,
) -> None:
    out = run_as(other_user, _what_another_user_can_do, str(cluster.data_dir), cluster.hosts)
    assert out.pop("secret") == "PermissionError"
    assert out.pop("admin") == (
        f"the data dir belongs to another user: data_dir={cluster.data_dir} owner=root "
        f"you={other_user.pw_name}: its data and coordinator are private to its owner"
    )
    assert set(out.values()) == {"NoAuth"}, out
    with Consumer(data_dir=cluster.data_dir, auto_offset_reset="earliest") as c:
        c.assign([TopicPartition(TOPIC, 0)])
        got: list[Any] = []
        deadline = time.monotonic() + 20
        while len(got) < 3 and time.monotonic() < deadline:
            got += c.poll(timeout=1)
        assert [r.value for r in got[:3]] == [b"v0", b"v1", b"v2"]


# -- the secret, and data dirs from before ACLs -------------------------------------------


def test_the_secret_is_made_once_0600_and_kept_across_restarts(daemon: Daemon) -> None:
    dd = DataDir.resolve(daemon.data_dir)
    first = dd.read_secret()
    st = dd.secret_file.stat()
    assert (st.st_mode & 0o777, st.st_uid) == (0o600, os.getuid())
    assert dd.root.stat().st_mode & 0o777 == 0o700
    daemon.stop()
    daemon.start()
    assert dd.read_secret() == first
    assert dd.ensure_secret() == first  # never replaced once made


def test_a_replaced_secret_stops_the_start_with_one_clear_line(daemon: Daemon) -> None:
    dd = DataDir.resolve(daemon.data_dir)
    kept = dd.secret_file.read_text()
    daemon.stop()
    dd.secret_file.write_text(secrets.token_urlsafe(32) + "\n")
    try:
        start = daemon.cli("start", "--data-dir", str(dd.root), "--brokers", "2", check=False)
        assert start.returncode != 0
        assert (f"engine: the engine's znode does not let the engine in: path=/brokers: the "
                f"tree is locked with another secret than {dd.secret_file}"
                in start.stderr.decode())
        assert "Traceback" not in start.stderr.decode()
    finally:
        dd.secret_file.write_text(kept)
    daemon.start()  # the secret back: the engine is back
    with Admin(dd.root) as admin:
        assert admin.list_topics() == []


def _open_the_tree(cluster: Cluster) -> int:
    """Make the stopped cluster's tree what a data dir from before ACLs had: every engine
    znode open to all, no guards, no secret. Returns how many znodes there are."""
    dd = DataDir.resolve(cluster.data_dir)
    coordinator = None
    hosts = cluster.zookeeper.hosts if cluster.zookeeper is not None else None
    if hosts is None:
        coordinator = EngineCoordinator(cluster.data_dir.parent / "bare-coordinator")
        coordinator.data_dir = dd.coordinator_dir
        coordinator.start()
        hosts = coordinator.hosts
    try:
        zk = md.connect(dd, hosts=hosts)
        try:
            paths = engine_paths(zk)
            for path in reversed(paths):
                zk.set_acls(path, OPEN)
                if path.endswith(f"/{md.GUARD}"):
                    zk.delete(path)
            return len(paths) - len(engine_acl.TOP_LEVEL)
        finally:
            stop_client(zk)
    finally:
        if coordinator is not None:
            coordinator.stop()
        dd.secret_file.unlink()


@pytest.mark.parametrize("kind", KINDS)
def test_a_data_dir_from_before_acls_gets_them_at_the_next_start(kind: str) -> None:
    base = private_base()
    try:
        with running_cluster(kind, base) as cluster:
            populate(cluster.data_dir)
            cluster.daemon.stop()
            opened = _open_the_tree(cluster)
            cluster.start()
            dd = DataDir.resolve(cluster.data_dir)
            zk = cluster.engine_client()
            try:
                paths = engine_paths(zk)
                assert {f"{top}/{md.GUARD}" for top in engine_acl.TOP_LEVEL} <= set(paths)
                acl = md.engine_acl(dd.read_secret())
                assert [p for p in paths if list(zk.get_acls(p)[0]) != acl] == []
            finally:
                stop_client(zk)
            stranger = KazooClient(hosts=cluster.hosts)
            stranger.start(timeout=15)
            try:
                with pytest.raises(NoAuthError):
                    stranger.get(store.offset_path(GROUP, TopicPartition(TOPIC, 0)))
            finally:
                stop_client(stranger)
            with Consumer(data_dir=cluster.data_dir, group_id=GROUP) as c:
                assert c.committed(TopicPartition(TOPIC, 0)) == 3
            with Producer(cluster.data_dir, transactional_id=TXN_ID) as tp:
                tp.init_transactions()
            cluster.daemon.stop()
            cluster.start()  # nothing left to open: said once only
            log = (cluster.data_dir / "logs" / "daemon.log").read_text()
            said = [line for line in log.splitlines() if "open to every local user" in line]
            assert len(said) == 1
            assert f"{opened} engine znodes were open" in said[0]
    finally:
        shutil.rmtree(base, ignore_errors=True)
