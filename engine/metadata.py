"""Cluster metadata in the coordinator's tree, laid out as Kafka lays it out in ZooKeeper.

    /brokers/ids/<id>                              ephemeral: {"version":5,"host",...,"pid"}
    /controller                                    ephemeral: {"version":1,"brokerid":id}
    /controller_epoch                              persistent: "<epoch>"
    /config/topics/<topic>                         {"version":1,"config":{...}}
    /brokers/topics/<topic>                        {"version":3,"topic_id","partitions":{"0":[1,2]}}
    /brokers/topics/<topic>/partitions/<p>/state   {"version":1,"leader","leader_epoch","isr",...}
    /admin/delete_topics/<topic>                   a deletion request for the controller
    /admin/preferred_replica_election              a preferred-leader election request
    /admin/topic_creations                         its version counts topic creations
    /config/brokers/<default>                      {"version":1,"config":{cluster defaults}}
    /<each persistent top-level node>/#guard       keeps it from being deleted by others

Every engine znode carries one ACL, all rights to the digest identity
``engine:<the data dir's secret>`` and none to anyone else (see engine/acl.py);
:func:`connect` authenticates with that secret and gives the ACL to every node it
creates.

Everything here is pure layout and JSON plus small kazoo helpers; the processes
that act on the tree are the broker and the controller.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import copy
import dataclasses
import json
import logging
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import (
    BadVersionError,
    ConnectionClosedError,
    ConnectionLoss,
    NoAuthError,
    NodeExistsError,
    NoNodeError,
    SessionExpiredError,
)
from kazoo.handlers.threading import (
    _STOP,
    AsyncResult,
    KazooTimeoutError,
    SequentialThreadingHandler,
)
from kazoo.security import ACL, make_digest_acl

from engine import shm
from engine.config import (
    FIXED_AT_CREATION,
    RING_HEADER_BYTES,
    TOPIC_DEFAULTS,
    validate_topic_config,
    validate_topic_name,
)
from engine.datadir import DataDir
from engine.errors import (
    ClosedError,
    ConfigError,
    CoordinatorUnavailableError,
    DaemonNotRunningError,
    EngineError,
    EngineTimeoutError,
    PartitionCountError,
    PartitionOutOfRangeError,
    ReplicaAssignmentError,
    ReplicationFactorError,
    ShmBudgetError,
    TopicExistsError,
    UnknownTopicError,
)

BROKER_IDS = "/brokers/ids"
BROKER_TOPICS = "/brokers/topics"
CONFIG_TOPICS = "/config/topics"
CONTROLLER = "/controller"
CONTROLLER_EPOCH = "/controller_epoch"
DELETE_TOPICS = "/admin/delete_topics"
#: A preferred-leader election request for the controller (Kafka's path and form):
#: {"version":1,"partitions":[{"topic":t,"partition":p},...]}.
PREFERRED_ELECTION = "/admin/preferred_replica_election"
# Every topic creation's transaction sets this node, checking the version it read, so
# that creators are serialised (see create_topic).
TOPIC_CREATIONS = "/admin/topic_creations"
CLUSTER_CONFIG = "/config/brokers/<default>"
#: The child each persistent engine node directly under the root keeps (engine/acl.py).
#: '#' is in no group id, transactional id or topic name, so it never reads as one.
GUARD = "#guard"

# Cluster-wide defaults: Kafka's names. Auto-creation is off unless `engine start
# --auto-create-topics` turns it on (Kafka's default is on; we prefer an error). The
# daemon also writes its shared-memory budget there at every start (engine.shm).
CLUSTER_DEFAULTS: dict[str, Any] = {"auto.create.topics.enable": False, "num.partitions": 1}

#: The coordinator session timeout the engine's own processes ask for (brokers, the daemon,
#: admin and producer clients; a consumer group member asks for its session_timeout_ms).
#: Short, so that a broker that dies or freezes loses its registration, its controller
#: role and its ISR places within 4 s: failure detection, chosen apart from what the
#: coordinator allows others (its negotiated range, 0.4-40 s by default, README). 4 s is
#: within that range, and is ZooKeeper's default minimum (2 x tickTime 2000), so an
#: external ZooKeeper with default settings grants it too.
SESSION_TIMEOUT_S = 4.0

#: The digest user the engine's processes and clients authenticate as; the password
#: is the data dir's secret (DataDir.read_secret).
ENGINE_USER = "engine"


def engine_acl(secret: str) -> list[ACL]:
    """The ACL of every engine znode: all rights to ``engine:<secret>``, none to others."""
    return [make_digest_acl(ENGINE_USER, secret, all=True)]


def broker_path(broker_id: int) -> str:
    return f"{BROKER_IDS}/{broker_id}"


def topic_path(topic: str) -> str:
    return f"{BROKER_TOPICS}/{topic}"


def config_path(topic: str) -> str:
    return f"{CONFIG_TOPICS}/{topic}"


def state_path(topic: str, partition: int) -> str:
    return f"{BROKER_TOPICS}/{topic}/partitions/{partition}/state"


def encode(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def decode(data: bytes) -> Any:
    return json.loads(data.decode()) if data else None


def new_topic_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class PartitionState:
    """Leader, leader epoch and ISR of one partition (the state znode)."""

    leader: int
    leader_epoch: int
    isr: tuple[int, ...]
    controller_epoch: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "version": 1,
            "leader": self.leader,
            "leader_epoch": self.leader_epoch,
            "isr": list(self.isr),
            "controller_epoch": self.controller_epoch,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> PartitionState:
        return cls(
            leader=int(obj["leader"]),
            leader_epoch=int(obj["leader_epoch"]),
            isr=tuple(int(b) for b in obj["isr"]),
            controller_epoch=int(obj.get("controller_epoch", 0)),
        )


@dataclass(frozen=True)
class TopicAssignment:
    """A topic's id and replica assignment (the /brokers/topics/<t> znode). While a
    partition's replicas move (reassign_partitions), ``replicas`` holds the new ones
    first, then the old ones that go; ``adding`` and ``removing`` say which."""

    name: str
    topic_id: str
    replicas: dict[int, tuple[int, ...]]
    adding: dict[int, tuple[int, ...]] = field(default_factory=dict)
    removing: dict[int, tuple[int, ...]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        def listed(replicas: dict[int, tuple[int, ...]]) -> dict[str, list[int]]:
            return {str(p): list(r) for p, r in sorted(replicas.items())}

        return {
            "version": 3,
            "topic_id": self.topic_id,
            "partitions": listed(self.replicas),
            "adding_replicas": listed(self.adding),
            "removing_replicas": listed(self.removing),
        }

    @classmethod
    def from_json(cls, name: str, obj: dict[str, Any]) -> TopicAssignment:
        def read(key: str) -> dict[int, tuple[int, ...]]:
            return {int(p): tuple(int(b) for b in r) for p, r in (obj.get(key) or {}).items()}

        return cls(
            name=name,
            topic_id=str(obj["topic_id"]),
            replicas=read("partitions"),
            adding=read("adding_replicas"),
            removing=read("removing_replicas"),
        )

    @property
    def partition_count(self) -> int:
        return len(self.replicas)


@dataclass
class TopicMetadata:
    """What a client needs to find a topic's partitions."""

    assignment: TopicAssignment
    config: dict[str, Any]
    states: dict[int, PartitionState] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.assignment.name

    @property
    def partition_count(self) -> int:
        return self.assignment.partition_count


def assign_replicas(
    brokers: list[int], partitions: int, replication: int
) -> dict[int, tuple[int, ...]]:
    """Round-robin replica placement over the live brokers (Kafka's rack-unaware scheme)."""
    ordered = sorted(brokers)
    n = len(ordered)
    start = int(time.time_ns()) % n if n else 0
    return {
        p: tuple(ordered[(start + p + i) % n] for i in range(replication))
        for p in range(partitions)
    }


def _check_assignment(
    name: str, replicas: Mapping[int, Sequence[int]], live: set[int]
) -> dict[int, tuple[int, ...]]:
    """An explicit assignment of a new topic, checked (create_topic's ``replicas``)."""
    out = {int(p): tuple(int(b) for b in r) for p, r in replicas.items()}
    if sorted(out) != list(range(len(out))) or not out:
        raise ReplicaAssignmentError(
            f"replica assignment must number partitions 0..n-1: topic={name!r} "
            f"partitions={sorted(out)}"
        )
    width = len(out[0])
    for partition, brokers in sorted(out.items()):
        if not brokers or len(set(brokers)) != len(brokers) or len(brokers) != width:
            raise ReplicaAssignmentError(
                f"replica assignment must give each partition the same number of distinct "
                f"brokers, at least one: topic={name!r} partition={partition} "
                f"replicas={list(brokers)}"
            )
        dead = sorted(set(brokers) - live)
        if dead:
            raise ReplicaAssignmentError(
                f"replica assignment names brokers that are not live: topic={name!r} "
                f"partition={partition} not_live={dead}"
            )
    return out


def create_topic(
    client: KazooClient,
    name: str,
    partitions: int,
    replication: int,
    config: dict[str, Any] | None,
    *,
    replicas: Mapping[int, Sequence[int]] | None = None,
    validate_only: bool = False,
) -> TopicAssignment:
    """Validate and write a new topic's config and assignment in one transaction.

    The topic's rings must fit in the daemon's shared-memory budget (engine.shm) with
    those of every topic in the tree; else ConfigError, and nothing is written. The
    transaction also sets TOPIC_CREATIONS, checking the version read before the
    budget was judged: of two creators that judged the same tree, one commits and the
    other reads the tree again, so that together they never pass the budget.

    ``replicas``: an explicit assignment (partition -> broker ids, the first the
    preferred leader) instead of the round-robin one; its partitions are 0..n-1, each
    with as many distinct live brokers (ReplicaAssignmentError otherwise), and it sets
    ``partitions`` and ``replication``. ``validate_only``: everything is checked, nothing
    written (Kafka's validateOnly); the assignment it would have written is returned.

    The controller then gives each partition its state and the leaders create their
    rings; callers that need the topic ready wait for that (ClusterView.refresh).
    """
    validate_topic_name(name)
    full = validate_topic_config(config)
    brokers = sorted(live_brokers(client))
    if replicas is not None:
        explicit = _check_assignment(name, replicas, set(brokers))
        partitions, replication = len(explicit), len(explicit[0])
    if not isinstance(partitions, int) or isinstance(partitions, bool) or partitions < 1:
        raise PartitionCountError(f"partitions must be an int >= 1: partitions={partitions!r}")
    if not isinstance(replication, int) or not 1 <= replication <= max(len(brokers), 1):
        raise ReplicationFactorError(
            f"replication must be between 1 and the number of live brokers ({len(brokers)}): "
            f"replication={replication!r}"
        )
    min_isr = int(full["min.insync.replicas"])
    if min_isr > replication:
        raise ConfigError(
            f"min.insync.replicas cannot exceed the replication factor: "
            f"min.insync.replicas={min_isr} replication={replication}"
        )
    if client.exists(f"{DELETE_TOPICS}/{name}"):
        raise TopicExistsError(f"topic {name!r} is being deleted; try again shortly")
    if client.exists(topic_path(name)):
        raise TopicExistsError(f"topic already exists: topic={name!r}")
    ring = int(full["ring.bytes"])
    ask = partitions * replication * shm.ring_footprint(ring)
    budget = shm_budget(client)
    user_config = {k: full[k] for k in (config or {})}
    assignment = TopicAssignment(
        name,
        new_topic_id(),
        explicit if replicas is not None else assign_replicas(brokers, partitions, replication),
    )
    paths_made = False
    while True:
        try:
            _, stat = client.get(TOPIC_CREATIONS)
        except NoNodeError:
            stat = None
        used = shm_used(client)
        if used + ask > budget:
            raise ShmBudgetError(
                "topic would take the daemon's rings past its shared-memory budget "
                f"(`engine start --shm-budget`): topic={name!r} budget={budget} "
                f"({shm.format_size(budget)}) used={used} ({shm.format_size(used)}) "
                f"asked={ask} ({shm.format_size(ask)}: partitions={partitions} x "
                f"replication={replication} x (ring.bytes={ring} + {RING_HEADER_BYTES}))"
            )
        if validate_only:
            return assignment
        if not paths_made:
            for path in (TOPIC_CREATIONS, BROKER_TOPICS, CONFIG_TOPICS):
                client.ensure_path(path)
            paths_made = True
            if stat is None:
                continue  # read its version
        assert stat is not None
        tx = client.transaction()
        tx.set_data(TOPIC_CREATIONS, b"", version=stat.version)
        tx.create(config_path(name), encode({"version": 1, "config": user_config}))
        tx.create(topic_path(name), encode(assignment.to_json()))
        results = tx.commit()
        if isinstance(results[0], BadVersionError):
            continue  # another creation committed since: judge the budget again
        if any(isinstance(r, NodeExistsError) for r in results):
            raise TopicExistsError(f"topic already exists: topic={name!r}")
        for r in results:
            if isinstance(r, Exception):
                raise r
        return assignment


def shm_budget(client: KazooClient) -> int:
    """The daemon's shared-memory budget, bytes, as its last start wrote it."""
    budget = read_cluster_config(client).get(shm.BUDGET_KEY)
    return int(budget) if budget else shm.default_budget()


def shm_used(client: KazooClient) -> int:
    """The bytes the rings of every topic in the tree take (engine.shm): what the
    daemon's brokers hold once every replica runs. A topic being deleted counts until
    its nodes are gone."""
    reads = [
        (client.get_async(topic_path(n)), client.get_async(config_path(n)))
        for n in _children(client, BROKER_TOPICS)
    ]
    total = 0
    for topic_read, config_read in reads:
        try:
            assignment = decode(topic_read.get()[0])
        except NoNodeError:
            continue
        try:
            stored = decode(config_read.get()[0]) or {}
        except NoNodeError:
            stored = {}
        if not assignment:
            continue
        ring = int(stored.get("config", {}).get("ring.bytes", TOPIC_DEFAULTS["ring.bytes"]))
        replicas = sum(len(r) for r in assignment.get("partitions", {}).values())
        total += replicas * shm.ring_footprint(ring)
    return total


def read_cluster_config(client: KazooClient) -> dict[str, Any]:
    """The cluster-wide defaults (Kafka's /config/brokers/<default>), with ours filled in."""
    out: dict[str, Any] = dict(CLUSTER_DEFAULTS)
    try:
        data, _ = client.get(CLUSTER_CONFIG)
        out.update(decode(data).get("config", {}))
    except NoNodeError:
        pass
    return out


def write_cluster_config(client: KazooClient, config: dict[str, Any]) -> None:
    payload = encode({"version": 1, "config": {**CLUSTER_DEFAULTS, **config}})
    if client.exists(CLUSTER_CONFIG):
        client.set(CLUSTER_CONFIG, payload)
    else:
        client.create(CLUSTER_CONFIG, payload, makepath=True)


#: How long a coordinator request of a client's own thread may take when no call of
#: the client bounded it more tightly (Kafka's request.timeout.ms). kazoo queues the
#: requests made while it reconnects and answers them once it is back, so without a
#: bound a lookup made while the daemon is down waits for as long as the daemon is.
REQUEST_TIMEOUT_S = 30.0


class CoordinatorTimeoutError(EngineTimeoutError, KazooTimeoutError):  # type: ignore[misc]
    """A coordinator request was not answered in time (the daemon is down or restarting).
    Also a KazooTimeoutError, so that code retrying kazoo's timeouts retries it."""


class _Deadline(threading.local):
    """The bound a thread's calls set on its coordinator requests (see :func:`deadline`)."""

    at: float | None = None
    what: str = ""


_deadline = _Deadline()


#: A deadline gives coordinator requests at least this long (a poll(0) loop still
#: rebalances; a short wait under load still gets its answer, or its own error).
MIN_REQUEST_S = 1.0


@contextlib.contextmanager
def deadline(seconds: float, what: str) -> Iterator[None]:
    """Inside the block, every coordinator request of this thread returns or raises
    CoordinatorTimeoutError (naming ``what``) within ``seconds`` (at least MIN_REQUEST_S)
    of entering it; an enclosing block's earlier deadline stays in force."""
    outer = (_deadline.at, _deadline.what)
    at = time.monotonic() + max(seconds, MIN_REQUEST_S)
    if outer[0] is None or at < outer[0]:
        _deadline.at, _deadline.what = at, what
    try:
        yield
    finally:
        _deadline.at, _deadline.what = outer


class _AsyncResult(AsyncResult):  # type: ignore[misc]
    """kazoo's AsyncResult, bounded and without its reference cycle.

    Bounded: a blocking ``get()`` of a client's thread waits at most until the thread's
    :func:`deadline`, or REQUEST_TIMEOUT_S, then raises CoordinatorTimeoutError. kazoo's
    own worker threads (watch callbacks) keep its unbounded wait.

    Without the cycle: kazoo keeps the exception it raised, whose traceback holds every
    frame the exception went through, and each frame its caller's. A NoNodeError caught
    in a client kept the locals of every frame up the stack (a client's freshly mapped
    rings among them) until the cyclic garbage collector ran. This one keeps a copy
    without the traceback."""

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        bound, what = _deadline.at, _deadline.what
        if bound is None and block and timeout is None:
            handler: Any = self._handler  # kazoo is untyped
            if threading.current_thread() not in handler._workers:
                bound, what = time.monotonic() + REQUEST_TIMEOUT_S, "a coordinator request"
        if bound is not None and block:
            left = max(bound - time.monotonic(), 0.0)
            timeout = left if timeout is None else min(timeout, left)
        try:
            return super().get(block, timeout)
        except KazooTimeoutError:
            if bound is None or time.monotonic() < bound:
                raise  # the caller's own timeout
            raise CoordinatorTimeoutError(
                f"the engine's coordinator did not answer in time ({self._why()}): "
                f"during={what}"
            ) from None
        except Exception as exc:
            stored: Any = self  # kazoo is untyped
            with stored._condition, contextlib.suppress(Exception):
                if stored._exception is exc:  # (one that cannot be copied keeps the cycle)
                    stored._exception = copy.copy(exc)
            if isinstance(exc, EngineError):
                raise
            if isinstance(exc, ConnectionClosedError):
                raise _ClientClosed("the client's coordinator session is closed") from None
            if isinstance(exc, SessionExpiredError):
                raise _SessionExpired(
                    f"the coordinator session expired during a request ({self._why()}); "
                    "it may or may not have taken effect"
                ) from None
            if isinstance(exc, ConnectionLoss):
                raise _ConnectionLost(
                    f"the connection to the coordinator was lost during a request "
                    f"({self._why()}); it may or may not have taken effect"
                ) from None
            raise

    def _why(self) -> str:
        handler: _Handler = self._handler
        return handler.unavailable


class _ConnectionLost(CoordinatorUnavailableError, ConnectionLoss):  # type: ignore[misc]
    """ConnectionLoss, as an EngineError (code that retries kazoo's errors still does)."""


class _SessionExpired(CoordinatorUnavailableError, SessionExpiredError):  # type: ignore[misc]
    """SessionExpiredError, as an EngineError."""


class _ClientClosed(ClosedError, ConnectionClosedError):  # type: ignore[misc]
    """ConnectionClosedError (the client was closed), as an EngineError."""


def wait_connected(client: KazooClient) -> bool:
    """Wait until ``client`` is connected again, within this thread's deadline (or
    REQUEST_TIMEOUT_S); whether it is."""
    bound = _deadline.at if _deadline.at is not None else time.monotonic() + REQUEST_TIMEOUT_S
    while not client.connected:
        if time.monotonic() >= bound:
            return False
        time.sleep(0.05)
    return True


EXIT_WAIT_S = 2.0


class _Handler(SequentialThreadingHandler):  # type: ignore[misc]
    """kazoo's threading handler with the AsyncResult above, and an exit that cannot
    hang. kazoo stops its handler at interpreter exit (atexit), joining its worker
    threads with no timeout; a worker in a watch callback waiting for a coordinator that
    is gone never returns, so a program that ended without closing its clients after the
    daemon stopped never exited. At exit the workers (daemon threads) get EXIT_WAIT_S."""

    def __init__(self, unavailable: str) -> None:
        super().__init__()
        #: Why the coordinator may not answer, as the errors of its requests say it.
        self.unavailable = unavailable

    def async_result(self) -> _AsyncResult:
        return _AsyncResult(self)

    def start(self) -> None:
        super().start()
        atexit.unregister(self.stop)
        atexit.register(self._stop_at_exit)

    def stop(self) -> None:
        atexit.unregister(self._stop_at_exit)
        super().stop()

    def _stop_at_exit(self) -> None:
        handler: Any = self  # kazoo is untyped
        with handler._state_change:
            if not handler._running:
                return
            handler._running = False
            for queue in (handler.completion_queue, handler.callback_queue):
                queue.put(_STOP)
            deadline = time.monotonic() + EXIT_WAIT_S
            for worker in handler._workers:
                worker.join(max(0.0, deadline - time.monotonic()))


def connect(
    data_dir: DataDir,
    timeout_s: float = 10.0,
    hosts: str | None = None,
    session_timeout_s: float = SESSION_TIMEOUT_S,
    max_retry_delay_s: float = 1.0,
    external: bool = False,
) -> KazooClient:
    """A started kazoo client for the daemon of ``data_dir``, authenticated with the data
    dir's secret; every znode it creates gets the engine's ACL. AuthorizationError when
    the caller cannot read the secret (the data dir is another user's). Without explicit
    ``hosts`` it follows the daemon: while disconnected it looks up the coordinator's
    address in the data dir again (a daemon started anew may listen elsewhere).

    ``external``: ``hosts`` is a ZooKeeper ensemble of the user's (`engine start
    --coordinator`); without explicit ``hosts`` the daemon's runtime file says. The
    errors of a coordinator that does not answer then name the ensemble, not the daemon:
    CoordinatorUnavailableError when it cannot be reached within ``timeout_s``."""
    follow = hosts is None
    if hosts is None:
        runtime = data_dir.read_runtime()
        hosts = str(runtime["coordinator"])
        external = bool(runtime.get("external_coordinator"))
    unavailable = (
        f"the ZooKeeper ensemble at {hosts} is down or has no quorum"
        if external
        else "the daemon is down or restarting"
    )
    secret = data_dir.read_secret()
    client = KazooClient(
        hosts=hosts,
        auth_data=[("digest", f"{ENGINE_USER}:{secret}")],
        default_acl=engine_acl(secret),
        handler=_Handler(unavailable),
        timeout=session_timeout_s,
        logger=logging.getLogger("engine.kazoo"),
        connection_retry={"max_tries": -1, "delay": 0.05, "max_delay": max_retry_delay_s},
    )
    try:
        client.start(timeout=timeout_s)
    except KazooTimeoutError:
        client.stop()
        client.close()
        if external:
            raise CoordinatorUnavailableError(
                f"cannot reach the engine's coordinator within {timeout_s:.0f} s: "
                f"{unavailable}: data_dir={data_dir.root}"
            ) from None
        raise DaemonNotRunningError(
            f"cannot reach the engine's coordinator at {hosts} for data_dir={data_dir.root}: "
            f"start it with `{data_dir.start_command()}`"
        ) from None
    if follow:
        client.add_listener(_DaemonFollower(client, data_dir, hosts))
    return client


#: While a client is disconnected, how often it looks up the coordinator's address.
FOLLOW_EVERY_S = 0.5


class _DaemonFollower:
    """A kazoo state listener: while its client is disconnected, a thread reads the
    daemon's runtime file every FOLLOW_EVERY_S and points the client at the address it
    names (kazoo's next connection attempt uses it). One thread at a time; it ends once
    the client is connected again or stopped."""

    def __init__(self, client: KazooClient, data_dir: DataDir, hosts: str) -> None:
        self._client = client
        self._data_dir = data_dir
        self._hosts = hosts
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def __call__(self, state: str) -> None:
        if state == KazooState.CONNECTED:
            return
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._thread = threading.Thread(
                target=self._run, name="engine-follow-daemon", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        client: Any = self._client  # kazoo is untyped
        while not client.connected and not client._stopped.is_set():
            try:
                hosts = self._data_dir.coordinator_hosts()
            except DaemonNotRunningError:
                hosts = self._hosts
            if hosts != self._hosts:
                logging.getLogger("engine.kazoo").info(
                    "the coordinator moved: %s -> %s", self._hosts, hosts
                )
                self._hosts = hosts
                client.set_hosts(hosts)
            client._stopped.wait(FOLLOW_EVERY_S)


def read_topic(client: KazooClient, topic: str, watch: Any = None) -> TopicMetadata:
    """The topic's assignment, config and partition states; UnknownTopicError if none.
    ``watch``: set on the topic's node and its config node (a change to either fires it:
    partitions added, configs altered)."""
    try:
        data, _ = client.get(topic_path(topic), watch=watch)
    except NoNodeError:
        raise UnknownTopicError(f"unknown topic: topic={topic!r}") from None
    assignment = TopicAssignment.from_json(topic, decode(data))
    try:
        cdata, _ = client.get(config_path(topic), watch=watch)
        config = dict(decode(cdata).get("config", {}))
    except NoNodeError:
        config = {}
    meta = TopicMetadata(assignment, config)
    for p in assignment.replicas:
        try:
            sdata, _ = client.get(state_path(topic, p))
        except NoNodeError:
            continue
        meta.states[p] = PartitionState.from_json(decode(sdata))
    return meta


def list_topics(client: KazooClient) -> list[str]:
    try:
        names = client.get_children(BROKER_TOPICS)
    except NoNodeError:
        return []
    deleting = topics_being_deleted(client)
    return sorted(n for n in names if n not in deleting)


def topics_being_deleted(client: KazooClient) -> set[str]:
    """The topics with a deletion request the controller has not finished."""
    return set(_children(client, DELETE_TOPICS))


def broker_children(client: KazooClient) -> list[str]:
    """The names under /brokers/ids (registered broker ids, as strings)."""
    return _children(client, BROKER_IDS)


def live_brokers_with_sessions(client: KazooClient) -> dict[int, tuple[dict[str, Any], int]]:
    """Each registered broker's registration and the coordinator session that holds it."""
    out: dict[int, tuple[dict[str, Any], int]] = {}
    for child in _children(client, BROKER_IDS):
        try:
            data, stat = client.get(broker_path(int(child)))
        except (NoNodeError, ValueError):
            continue
        out[int(child)] = (decode(data), int(stat.ephemeralOwner))
    return out


def live_brokers(client: KazooClient) -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    for child in _children(client, BROKER_IDS):
        try:
            data, _ = client.get(broker_path(int(child)))
        except (NoNodeError, ValueError):
            continue
        out[int(child)] = decode(data)
    return out


def controller_id(client: KazooClient) -> int | None:
    """The controller's broker id; None when there is none. /controller sits under the
    root, which is open to all: whatever another user put there that does not read as a
    controller (another ACL, not our JSON) counts as none, and the brokers remove it
    (Controller.elect)."""
    try:
        data, _ = client.get(CONTROLLER)
        return int(decode(data)["brokerid"])
    except (NoNodeError, NoAuthError, ValueError, KeyError, TypeError):
        return None


def _children(client: KazooClient, path: str) -> list[str]:
    try:
        return list(client.get_children(path))
    except NoNodeError:
        return []


def alter_topic_config(
    client: KazooClient,
    name: str,
    set_config: Mapping[str, Any] | None = None,
    delete: Iterable[str] = (),
    *,
    validate_only: bool = False,
) -> dict[str, int | float | str]:
    """Set some keys of a topic's config and delete others (back to their defaults),
    leaving the rest: Kafka's incremental alter. The result is validated whole, as
    create_topic validates a new topic's; keys of FIXED_AT_CREATION that would change
    are refused (ConfigError, nothing written). Written with the version read, again
    on a race. Returns the topic's whole config as it now stands (``validate_only``:
    as it would stand; nothing is written).

    The brokers watch the config node and apply the change to their running replicas
    (engine.replica.Replica.adopt_config); the controller reads
    unclean.leader.election.enable at each failover; producers look the topic up again
    (engine.producer_metadata) and so take min.insync.replicas."""
    validate_topic_name(name)
    updates = dict(set_config or {})
    removals = list(delete)
    for key in [*updates, *removals]:
        if key not in TOPIC_DEFAULTS:
            raise ConfigError(f"unknown topic config: key={key!r}")
    both = sorted(set(updates) & set(removals))
    if both:
        raise ConfigError(f"topic config both set and deleted: key={both[0]!r}")
    while True:
        try:
            tdata, _ = client.get(topic_path(name))
            cdata, cstat = client.get(config_path(name))
        except NoNodeError:
            raise UnknownTopicError(f"unknown topic: topic={name!r}") from None
        if client.exists(f"{DELETE_TOPICS}/{name}"):
            raise UnknownTopicError(f"topic is being deleted: topic={name!r}")
        stored = dict((decode(cdata) or {}).get("config", {}))
        current = validate_topic_config(stored, existing=True)
        wanted = {k: v for k, v in stored.items() if k not in removals}
        wanted.update(updates)
        full = validate_topic_config(wanted)
        for key in FIXED_AT_CREATION:
            if full[key] != current[key]:
                raise ConfigError(
                    f"topic config cannot change on an existing topic (each partition's "
                    f"ring was made with it; create a new topic instead): key={key!r} "
                    f"value={full[key]!r} current={current[key]!r}"
                )
        assignment = TopicAssignment.from_json(name, decode(tdata))
        replication = min((len(r) for r in assignment.replicas.values()), default=1)
        min_isr = int(full["min.insync.replicas"])
        if min_isr > replication:
            raise ConfigError(
                f"min.insync.replicas cannot exceed the replication factor: "
                f"min.insync.replicas={min_isr} replication={replication}"
            )
        if validate_only:
            return full
        payload = encode({"version": 1, "config": {k: full[k] for k in wanted}})
        try:
            client.set(config_path(name), payload, version=cstat.version)
        except BadVersionError:
            continue  # altered meanwhile: apply ours to what is there now
        except NoNodeError:
            raise UnknownTopicError(f"unknown topic: topic={name!r}") from None
        return full


def _read_for_change(client: KazooClient, name: str) -> tuple[Any, bytes, Any, bytes]:
    """What a change to a topic's partitions reads first: the Stat of TOPIC_CREATIONS
    (whose version the change's transaction checks), the topic's assignment with its
    Stat, and its config. UnknownTopicError when the topic is gone."""
    _, creations = client.get(TOPIC_CREATIONS)
    try:
        tdata, tstat = client.get(topic_path(name))
        cdata, _ = client.get(config_path(name))
    except NoNodeError:
        raise UnknownTopicError(f"unknown topic: topic={name!r}") from None
    return creations, tdata, tstat, cdata


def create_partitions(
    client: KazooClient, name: str, total_count: int, *, validate_only: bool = False
) -> TopicAssignment:
    """Add partitions to a topic, up to ``total_count`` in all (Kafka's CreatePartitions:
    the count only grows). Each new partition gets as many replicas as the topic's first
    one, placed round-robin over the live brokers (assign_replicas); the controller gives
    it its state and the leaders make its rings, as for a new topic. ``validate_only``:
    checked, not written; the assignment it would write is returned.

    The new rings must fit in the shared-memory budget with every other topic's (else
    ConfigError, nothing written). The topic node's new assignment is written in one
    transaction that also sets TOPIC_CREATIONS at the version read before the budget was
    judged, so that creations and additions together never pass the budget; a lost race
    reads the tree again."""
    validate_topic_name(name)
    if not isinstance(total_count, int) or isinstance(total_count, bool):
        raise PartitionCountError(
            f"partition count must be an int: total_count={total_count!r}"
        )
    client.ensure_path(TOPIC_CREATIONS)
    while True:
        creations, tdata, tstat, cdata = _read_for_change(client, name)
        if client.exists(f"{DELETE_TOPICS}/{name}"):
            raise UnknownTopicError(f"topic is being deleted: topic={name!r}")
        assignment = TopicAssignment.from_json(name, decode(tdata))
        current = assignment.partition_count
        if total_count <= current:
            raise PartitionCountError(
                f"partitions can only be added: the topic has {current}, asked for "
                f"{total_count} in all: topic={name!r} total_count={total_count}"
            )
        replication = len(assignment.replicas[0])
        brokers = sorted(live_brokers(client))
        if len(brokers) < replication:
            raise ReplicationFactorError(
                f"fewer live brokers than the topic's replication factor: topic={name!r} "
                f"replication={replication} live_brokers={len(brokers)}"
            )
        stored = (decode(cdata) or {}).get("config", {})
        ring = int(stored.get("ring.bytes", TOPIC_DEFAULTS["ring.bytes"]))
        added = total_count - current
        ask = added * replication * shm.ring_footprint(ring)
        budget, used = shm_budget(client), shm_used(client)
        if used + ask > budget:
            raise ShmBudgetError(
                "partitions would take the daemon's rings past its shared-memory budget "
                f"(`engine start --shm-budget`): topic={name!r} budget={budget} "
                f"({shm.format_size(budget)}) used={used} ({shm.format_size(used)}) "
                f"asked={ask} ({shm.format_size(ask)}: partitions={added} x "
                f"replication={replication} x (ring.bytes={ring} + {RING_HEADER_BYTES}))"
            )
        placed = assign_replicas(brokers, added, replication)
        replicas = dict(assignment.replicas)
        replicas.update({current + p: r for p, r in placed.items()})
        grown = dataclasses.replace(assignment, replicas=replicas)
        if validate_only:
            return grown
        tx = client.transaction()
        tx.set_data(TOPIC_CREATIONS, b"", version=creations.version)
        tx.set_data(topic_path(name), encode(grown.to_json()), version=tstat.version)
        results = tx.commit()
        if any(isinstance(r, BadVersionError) for r in results):
            continue  # a creation or another addition committed since: judge again
        for r in results:
            if isinstance(r, NoNodeError):
                raise UnknownTopicError(f"unknown topic: topic={name!r}")
            if isinstance(r, Exception) and type(r).__name__ != "RolledBackError":
                raise r
        return grown


def log_starts_path(topic: str) -> str:
    """The node holding, per partition, the offset its records are deleted before
    (Admin.delete_records): {"version":1,"partitions":{"0":offset}}; goes with the topic."""
    return f"{BROKER_TOPICS}/{topic}/log_start_offsets"


def read_log_starts(client: KazooClient, topic: str, watch: Any = None) -> dict[int, int]:
    """Per partition, the offset records are to be deleted before (none: not there).
    ``watch`` fires when the node is made or changed."""
    path = log_starts_path(topic)
    try:
        data, _ = client.get(path, watch=watch)
    except NoNodeError:
        if client.exists(path, watch=watch) is None:
            return {}
        return read_log_starts(client, topic, watch)  # made in between
    return {int(p): int(o) for p, o in (decode(data) or {}).get("partitions", {}).items()}


def raise_log_starts(client: KazooClient, topic: str, offsets: Mapping[int, int]) -> None:
    """Move partitions' wanted log start offsets up (never down) to ``offsets``; every
    replica's broker then deletes the records before them (Replica.delete_records_before)."""
    path = log_starts_path(topic)
    while True:
        try:
            data, stat = client.get(path)
            version: int | None = stat.version
            current = {int(p): int(o) for p, o in decode(data).get("partitions", {}).items()}
        except NoNodeError:
            version, current = None, {}
        merged = dict(current)
        for partition, offset in offsets.items():
            merged[partition] = max(offset, merged.get(partition, 0))
        payload = encode({"version": 1, "partitions": {str(p): o for p, o in merged.items()}})
        try:
            if version is None:
                client.create(path, payload)
            else:
                client.set(path, payload, version=version)
            return
        except (BadVersionError, NodeExistsError):
            continue  # raised meanwhile: merge again
        except NoNodeError:
            raise UnknownTopicError(f"unknown topic: topic={topic!r}") from None


#: The cluster's id (Kafka keeps it at /cluster/id; here under /config, an engine path
#: already): {"version":"1","id":"<22 characters, url-safe base64 of a UUID>"}.
CLUSTER_ID = "/config/cluster_id"


def cluster_id(client: KazooClient) -> str:
    """The cluster's id, made by the first caller (Kafka's form: a UUID in url-safe
    base64 without padding); the same for everyone after."""
    try:
        data, _ = client.get(CLUSTER_ID)
        return str(decode(data)["id"])
    except NoNodeError:
        pass
    made = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
    try:
        client.create(CLUSTER_ID, encode({"version": "1", "id": made}), makepath=True)
        return made
    except NodeExistsError:
        return cluster_id(client)


def reassign_partitions(
    client: KazooClient, name: str, targets: Mapping[int, Sequence[int]]
) -> TopicAssignment:
    """Start moving partitions' replicas to ``targets`` (broker ids, the first the
    preferred leader): Kafka's reassignment. The partition's replica set becomes the
    targets and then the old replicas not among them (``adding`` and ``removing`` say
    which), and its leader epoch is bumped in the same transaction, so that its leader
    starts again with the new followers. The controller completes the move once every
    added replica is in the ISR (Controller._complete_reassignments). The added rings
    must fit in the shared-memory budget (ConfigError, nothing written)."""
    validate_topic_name(name)
    client.ensure_path(TOPIC_CREATIONS)
    while True:
        creations, tdata, tstat, cdata = _read_for_change(client, name)
        assignment = TopicAssignment.from_json(name, decode(tdata))
        live = set(live_brokers(client))
        replicas = dict(assignment.replicas)
        adding = dict(assignment.adding)
        removing = dict(assignment.removing)
        states = {}
        added_rings = 0
        for partition, target in targets.items():
            target = tuple(int(b) for b in target)
            if partition not in replicas:
                raise PartitionOutOfRangeError(
                    f"partition out of range: topic={name!r} partition={partition!r} "
                    f"partitions={assignment.partition_count}"
                )
            if not target or len(set(target)) != len(target):
                raise ConfigError(
                    f"replicas must be distinct broker ids, at least one: "
                    f"topic={name!r} partition={partition} replicas={list(target)}"
                )
            dead = sorted(set(target) - live)
            if dead:
                raise ConfigError(
                    f"replicas must be live brokers: topic={name!r} partition={partition} "
                    f"not_live={dead}"
                )
            if partition in adding or partition in removing:
                raise ConfigError(
                    f"a reassignment of this partition is under way: topic={name!r} "
                    f"partition={partition}"
                )
            old = replicas[partition]
            if set(old) == set(target):
                replicas[partition] = target
                continue
            new_ones = tuple(b for b in target if b not in old)
            replicas[partition] = target + tuple(b for b in old if b not in target)
            if new_ones:
                adding[partition] = new_ones
            removing[partition] = tuple(b for b in old if b not in target)
            added_rings += len(new_ones)
            sdata, sstat = client.get(state_path(name, partition))
            state = PartitionState.from_json(decode(sdata))
            states[partition] = (
                dataclasses.replace(state, leader_epoch=state.leader_epoch + 1), sstat.version
            )
        stored = (decode(cdata) or {}).get("config", {})
        ring = int(stored.get("ring.bytes", TOPIC_DEFAULTS["ring.bytes"]))
        ask = added_rings * shm.ring_footprint(ring)
        budget, used = shm_budget(client), shm_used(client)
        if used + ask > budget:
            raise ShmBudgetError(
                "the added replicas would take the daemon's rings past its shared-memory "
                f"budget (`engine start --shm-budget`): topic={name!r} budget={budget} "
                f"({shm.format_size(budget)}) used={used} ({shm.format_size(used)}) "
                f"asked={ask} ({shm.format_size(ask)}: replicas={added_rings} x "
                f"(ring.bytes={ring} + {RING_HEADER_BYTES}))"
            )
        moved = dataclasses.replace(assignment, replicas=replicas, adding=adding,
                                    removing=removing)  # fmt: skip
        tx = client.transaction()
        tx.set_data(TOPIC_CREATIONS, b"", version=creations.version)
        tx.set_data(topic_path(name), encode(moved.to_json()), version=tstat.version)
        for partition, (state, version) in states.items():
            tx.set_data(state_path(name, partition), encode(state.to_json()), version=version)
        results = tx.commit()
        if any(isinstance(r, BadVersionError) for r in results):
            continue
        for r in results:
            if isinstance(r, Exception) and type(r).__name__ != "RolledBackError":
                raise r
        return moved
