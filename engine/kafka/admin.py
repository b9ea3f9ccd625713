"""The admin APIs through Kafka's protocol, and OffsetForLeaderEpoch.

Each request is carried out by the engine's own admin operations on the cluster
metadata (engine.metadata: create_topic, create_partitions, alter_topic_config,
raise_log_starts, the controller's deletion requests), through the broker's own
coordinator session, with the same checks and the same limits as ``engine topics`` and
:class:`engine.Admin`; each answer waits, within the request's timeout, until the
change took effect as Admin's calls do (leaders and rings ready, topics gone, records
deleted on every in-sync replica), and says REQUEST_TIMED_OUT when it did not in time
(the change goes on). With a timeout of 0 or less, CreateTopics, DeleteTopics and
CreatePartitions answer as soon as the change is written, as Kafka does.

- CreateTopics: ``num_partitions`` -1 takes the cluster's num.partitions,
  ``replication_factor`` -1 DEFAULT_REPLICATION_FACTOR (Kafka's
  default.replication.factor); an explicit assignment (both -1) places the replicas;
  ``validate_only`` checks everything and writes nothing. Per-topic errors with the
  engine's one-line message: TOPIC_ALREADY_EXISTS, INVALID_TOPIC_EXCEPTION,
  INVALID_PARTITIONS, INVALID_REPLICATION_FACTOR, INVALID_REPLICA_ASSIGNMENT,
  INVALID_CONFIG, POLICY_VIOLATION (the shared-memory budget), REQUEST_TIMED_OUT.
- DeleteTopics: by name, and (v6) by topic id.
- CreatePartitions: the new total count; explicit assignments of the new partitions
  are refused (INVALID_REQUEST), the engine places them round-robin.
- DescribeConfigs: topic resources and broker resources (the cluster's defaults of
  ``/config/brokers/<default>``; read-only here, set at ``engine start``).
- AlterConfigs (the whole config: keys not given go back to their defaults) and
  IncrementalAlterConfigs (SET, DELETE; APPEND and SUBTRACT for cleanup.policy, the
  one list-valued topic config, and INVALID_CONFIG for any other, as Kafka answers).
- DeleteRecords: sent to each partition's leader; the low watermark answered is the
  least log start offset over the in-sync replicas once all have deleted.
- DescribeCluster: the brokers with an endpoint of this listener's security protocol,
  the controller, the cluster id that Metadata gives.
- OffsetForLeaderEpoch: the end offset of a leader epoch (engine.kafka.leader_epochs).

Topic configs as Kafka clients see them (:func:`describe_topic_config`): the engine's
topic config names are Kafka's (engine.config.TOPIC_DEFAULTS), with two differences:
``ring.bytes`` (the size of each replica's shared-memory ring) is the engine's own,
and ``replica.lag.time.max.ms``, a broker config in Kafka, is a topic config here;
both are listed among a topic's configs under those names. Values are Kafka's
strings: ``unclean.leader.election.enable``, kept as 0 or 1, reads "false" or
"true". ``ring.bytes`` and ``max.message.bytes`` are read-only (each ring is made
with them: engine.config.FIXED_AT_CREATION). A key the topic's own config sets has
source DYNAMIC_TOPIC_CONFIG (Kafka's "topic config"), any other DEFAULT_CONFIG.

Authorisation: the listener authenticates one credential, the data dir owner's (with
``--kafka-auth none``, anyone who reaches 127.0.0.1 and whom the owner let in), and
that principal owns the cluster: every operation here is allowed to it, as the
owner's ``engine topics`` commands are. There are no ACLs to consult.

Threads: any connection thread; each request is carried out on its own thread, the
broker's kazoo client is shared (thread-safe).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from kazoo.exceptions import NodeExistsError, NoNodeError

from engine import metadata as md
from engine.config import (
    FIXED_AT_CREATION,
    TOPIC_DEFAULTS,
    validate_topic_config,
    validate_topic_name,
)
from engine.errors import (
    ConfigError,
    EngineError,
    EngineTimeoutError,
    InvalidTopicError,
    PartitionCountError,
    ReplicaAssignmentError,
    ReplicationFactorError,
    ShmBudgetError,
    TopicExistsError,
    UnknownTopicError,
)
from engine.kafka.error_codes import ErrorCode
from engine.kafka.handlers import Handlers
from engine.kafka.leader_epochs import batch_reader, end_offset_for
from engine.kafka.partitions import PartitionHandles
from engine.kafka.schemas.admin import RESOURCE_BROKER, RESOURCE_TOPIC
from engine.log import LogReader
from engine.ring import Ring, seal_ring

log = logging.getLogger("engine.kafka")

#: CreateTopics' replication_factor -1 (Kafka's default.replication.factor).
DEFAULT_REPLICATION_FACTOR = 1
#: How often a request waiting for its change to take effect looks again.
POLL_S = 0.02

#: Kafka's ConfigSource.
SOURCE_TOPIC = 1  # DYNAMIC_TOPIC_CONFIG
SOURCE_STATIC_BROKER = 4  # STATIC_BROKER_CONFIG
SOURCE_DEFAULT = 5  # DEFAULT_CONFIG

#: Kafka's ConfigType (DescribeConfigs v3+).
TYPE_BOOLEAN, TYPE_STRING, TYPE_INT, TYPE_LONG, TYPE_DOUBLE, TYPE_LIST = 1, 2, 3, 5, 6, 7
_BOOLEAN_KEYS = {"unclean.leader.election.enable"}
_LIST_KEYS = {"cleanup.policy"}
_INT_KEYS = {"segment.bytes", "index.interval.bytes", "max.message.bytes", "min.insync.replicas"}

#: IncrementalAlterConfigs' operations (AlterConfigOp.OpType).
OP_SET, OP_DELETE, OP_APPEND, OP_SUBTRACT = 0, 1, 2, 3


def kafka_value(key: str, value: Any) -> str:
    """A topic config value as Kafka writes it."""
    if key in _BOOLEAN_KEYS:
        return "true" if value is True or str(value).lower() in ("1", "true") else "false"
    return str(value)


def config_type(key: str) -> int:
    if key in _BOOLEAN_KEYS:
        return TYPE_BOOLEAN
    if key in _LIST_KEYS:
        return TYPE_LIST
    if isinstance(TOPIC_DEFAULTS.get(key), float):
        return TYPE_DOUBLE
    return TYPE_INT if key in _INT_KEYS else TYPE_LONG


def describe_topic_config(
    stored: Mapping[str, Any], keys: Iterable[str] | None = None, synonyms: bool = False
) -> list[dict[str, Any]]:
    """A topic's configs as DescribeConfigs and CreateTopics carry them (module
    docstring): every key of TOPIC_DEFAULTS (or those of ``keys`` among them), its value
    (the topic's own, else the default), read_only, source, is_sensitive (never)."""
    out = []
    wanted = TOPIC_DEFAULTS if keys is None else [k for k in keys if k in TOPIC_DEFAULTS]
    for key in wanted:
        own = key in stored
        value = kafka_value(key, stored[key] if own else TOPIC_DEFAULTS[key])
        entry: dict[str, Any] = {
            "name": key,
            "value": value,
            "read_only": key in FIXED_AT_CREATION,
            "config_source": SOURCE_TOPIC if own else SOURCE_DEFAULT,
            "is_default": not own,
            "is_sensitive": False,
            "config_type": config_type(key),
        }
        if synonyms:
            entry["synonyms"] = ([{"name": key, "value": value, "source": SOURCE_TOPIC}]
                                 if own else []) + [
                {"name": key, "value": kafka_value(key, TOPIC_DEFAULTS[key]),
                 "source": SOURCE_DEFAULT}
            ]  # fmt: skip
        out.append(entry)
    return out


class _Refused(Exception):
    """A resource's request refused with a Kafka error code and a message."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


#: The engine's errors of an admin change, as Kafka's codes (the first that matches).
_ERRORS: tuple[tuple[type[Exception], ErrorCode], ...] = (
    (TopicExistsError, ErrorCode.TOPIC_ALREADY_EXISTS),
    (InvalidTopicError, ErrorCode.INVALID_TOPIC_EXCEPTION),
    (UnknownTopicError, ErrorCode.UNKNOWN_TOPIC_OR_PARTITION),
    (PartitionCountError, ErrorCode.INVALID_PARTITIONS),
    (ReplicationFactorError, ErrorCode.INVALID_REPLICATION_FACTOR),
    (ReplicaAssignmentError, ErrorCode.INVALID_REPLICA_ASSIGNMENT),
    (ShmBudgetError, ErrorCode.POLICY_VIOLATION),
    (ConfigError, ErrorCode.INVALID_CONFIG),
    (EngineTimeoutError, ErrorCode.REQUEST_TIMED_OUT),
    (EngineError, ErrorCode.UNKNOWN_SERVER_ERROR),
)


def error_of(exc: Exception) -> tuple[ErrorCode, str]:
    """The Kafka error code and message of an admin change's failure."""
    if isinstance(exc, _Refused):
        return exc.code, str(exc)
    for kind, code in _ERRORS:
        if isinstance(exc, kind):
            return code, str(exc)
    raise exc


class AdminHandlers:
    """The admin APIs' answers (module docstring), beside the listener's Handlers."""

    def __init__(self, handlers: Handlers) -> None:
        self.handlers = handlers
        self.broker = handlers.broker

    # -- waiting for a change to take effect -----------------------------------------

    def _wait(self, done: Callable[[], bool], deadline: float) -> bool:
        while not done():
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL_S)
        return True

    def _leaders_ready(self, name: str, partitions: Iterable[int] | None = None) -> bool:
        """Whether each partition (all without ``partitions``) has a leader whose ring is
        open to producers at its epoch (as Admin.create_topic waits)."""
        try:
            meta = md.read_topic(self.broker.zk, name)
        except UnknownTopicError:
            return False
        for p in meta.assignment.replicas if partitions is None else partitions:
            state = meta.states.get(p)
            if state is None or state.leader < 0:
                return False
            ring_name = self.broker.data_dir.ring_name(meta.assignment.topic_id, p, state.leader)
            try:
                with Ring.open(ring_name, populate=False) as ring:
                    status = ring.status()
            except (FileNotFoundError, EngineError):
                return False
            if status.sealed or status.leader_epoch != state.leader_epoch:
                return False
        return True

    def _deleted(self, name: str) -> bool:
        """Whether the controller removed the topic's nodes and its deletion request."""
        zk = self.broker.zk
        return not zk.exists(md.topic_path(name)) and not zk.exists(f"{md.DELETE_TOPICS}/{name}")

    # -- CreateTopics ----------------------------------------------------------------

    def create_topics(self, version: int, request: dict[str, Any]) -> dict[str, Any]:
        deadline = time.monotonic() + max(request["timeout_ms"], 0) / 1000
        waits = request["timeout_ms"] > 0  # else Kafka answers once the change is written
        validate_only = request["validate_only"]
        names = [t["name"] for t in request["topics"]]
        results = []
        for topic in request["topics"]:
            name = topic["name"]
            result: dict[str, Any] = {"name": name, "configs": None}
            try:
                if names.count(name) > 1:
                    raise _Refused(
                        ErrorCode.INVALID_REQUEST,
                        f"topic named more than once in one request: topic={name!r}",
                    )
                result |= self._create_one(topic, validate_only, deadline)
                result["error_code"] = ErrorCode.NONE
            except Exception as exc:  # noqa: BLE001 - error_of re-raises what it does not map
                result["error_code"], result["error_message"] = error_of(exc)
            if result["error_code"] != ErrorCode.NONE:
                log.info("CreateTopics %r refused: %s", name, result["error_message"])
            results.append(result)
        for result in results:
            if result["error_code"] == ErrorCode.NONE and not validate_only and waits:
                name = result["name"]
                if not self._wait(functools.partial(self._leaders_ready, name), deadline):
                    result["error_code"] = ErrorCode.REQUEST_TIMED_OUT
                    result["error_message"] = (
                        f"topic {name!r} was created; its leaders were not ready within "
                        f"timeout_ms={request['timeout_ms']}"
                    )
        return {"topics": results}

    def _create_one(
        self, topic: dict[str, Any], validate_only: bool, deadline: float
    ) -> dict[str, Any]:
        name = topic["name"]
        validate_topic_name(name)
        if self.broker.zk.exists(md.topic_path(name)):  # Kafka says so before all else
            raise TopicExistsError(f"topic already exists: topic={name!r}")
        config: dict[str, Any] = {}
        for entry in topic["configs"]:
            key, value = entry["name"], entry["value"]
            if key in config:
                raise _Refused(
                    ErrorCode.INVALID_REQUEST, f"topic config given more than once: key={key!r}"
                )
            if value is None:
                raise ConfigError(f"topic config without a value: key={key!r}")
            config[key] = value
        partitions, replication = topic["num_partitions"], topic["replication_factor"]
        replicas = None
        if topic["assignments"]:
            if partitions != -1 or replication != -1:
                raise _Refused(
                    ErrorCode.INVALID_REQUEST,
                    "an explicit assignment takes num_partitions and replication_factor -1: "
                    f"num_partitions={partitions} replication_factor={replication}",
                )
            replicas = {a["partition_index"]: a["broker_ids"] for a in topic["assignments"]}
        if partitions == -1:
            partitions = int(md.read_cluster_config(self.broker.zk)["num.partitions"])
        if replication == -1:
            replication = DEFAULT_REPLICATION_FACTOR
        with md.deadline(max(deadline - time.monotonic(), 0.0), f"creating topic {name!r}"):
            assignment = md.create_topic(
                self.broker.zk, name, partitions, replication, config,
                replicas=replicas, validate_only=validate_only,
            )  # fmt: skip
        if not validate_only:
            log.info("created topic %r for a Kafka client", name)
        full = validate_topic_config(config)
        return {
            "topic_id": bytes.fromhex(assignment.topic_id),
            "num_partitions": assignment.partition_count,
            "replication_factor": len(assignment.replicas[0]),
            "configs": describe_topic_config({k: full[k] for k in config}),
        }

    # -- DeleteTopics ----------------------------------------------------------------

    def delete_topics(self, version: int, request: dict[str, Any]) -> dict[str, Any]:
        deadline = time.monotonic() + max(request["timeout_ms"], 0) / 1000
        zk = self.broker.zk
        asked: list[tuple[str | None, bytes | None]] = (
            [(t["name"], t["topic_id"]) for t in request["topics"]]
            if version >= 6
            else [(n, None) for n in request["topic_names"]]
        )
        by_id: dict[bytes, str] | None = None
        results = []
        requested: list[tuple[dict[str, Any], md.TopicAssignment]] = []
        for name, topic_id in asked:
            result: dict[str, Any] = {"name": name, "topic_id": topic_id or bytes(16)}
            results.append(result)
            if name is None:
                if by_id is None:
                    by_id = self.handlers.topics_by_id()
                name = by_id.get(topic_id or b"")
                if name is None:
                    result["error_code"] = ErrorCode.UNKNOWN_TOPIC_ID
                    result["error_message"] = f"no topic has this id: topic_id={_hex(topic_id)}"
                    continue
                result["name"] = name
            try:
                validate_topic_name(name)
                data, _ = zk.get(md.topic_path(name))
                assignment = md.TopicAssignment.from_json(name, md.decode(data))
                if name in md.topics_being_deleted(zk):
                    raise UnknownTopicError(f"topic is being deleted: topic={name!r}")
            except NoNodeError:
                result["error_code"] = ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
                result["error_message"] = f"unknown topic: topic={name!r}"
                continue
            except EngineError as exc:
                result["error_code"], result["error_message"] = error_of(exc)
                continue
            result["topic_id"] = bytes.fromhex(assignment.topic_id)
            zk.ensure_path(md.DELETE_TOPICS)
            with contextlib.suppress(NodeExistsError):
                zk.create(f"{md.DELETE_TOPICS}/{name}", b"")
            log.info("deleting topic %r for a Kafka client", name)
            requested.append((result, assignment))
        for result, assignment in requested:
            name = assignment.name
            if request["timeout_ms"] <= 0:
                continue  # Kafka answers once the deletion is asked for
            gone = self._wait(functools.partial(self._deleted, name), deadline)
            if gone:
                # As Admin.delete_topic: a ring made since the controller sealed the
                # topic's rings (a leader that started just then) is sealed too.
                for partition, replicas in assignment.replicas.items():
                    for broker in replicas:
                        seal_ring(
                            self.broker.data_dir.ring_name(assignment.topic_id, partition, broker)
                        )
            else:
                result["error_code"] = ErrorCode.REQUEST_TIMED_OUT
                result["error_message"] = (
                    f"topic {name!r} is being deleted; it was not gone within "
                    f"timeout_ms={request['timeout_ms']}"
                )
        return {"responses": results}

    # -- CreatePartitions ------------------------------------------------------------

    def create_partitions(self, version: int, request: dict[str, Any]) -> dict[str, Any]:
        deadline = time.monotonic() + max(request["timeout_ms"], 0) / 1000
        validate_only = request["validate_only"]
        results = []
        grown: list[tuple[dict[str, Any], str, range]] = []
        for topic in request["topics"]:
            name = topic["name"]
            result: dict[str, Any] = {"name": name, "error_code": ErrorCode.NONE}
            results.append(result)
            try:
                if topic["assignments"] is not None:
                    raise _Refused(
                        ErrorCode.INVALID_REQUEST,
                        "explicit assignments of new partitions are not served: the engine "
                        f"places them round-robin (send none): topic={name!r}",
                    )
                validate_topic_name(name)
                before = md.read_topic(self.broker.zk, name).partition_count
                with md.deadline(max(deadline - time.monotonic(), 0.0), f"adding partitions "
                                 f"to topic {name!r}"):  # fmt: skip
                    md.create_partitions(
                        self.broker.zk, name, topic["count"], validate_only=validate_only
                    )
            except Exception as exc:  # noqa: BLE001 - error_of re-raises what it does not map
                result["error_code"], result["error_message"] = error_of(exc)
                continue
            if not validate_only and request["timeout_ms"] > 0:
                grown.append((result, name, range(before, topic["count"])))
        for result, name, added in grown:
            ready = self._wait(functools.partial(self._leaders_ready, name, added), deadline)
            if not ready:
                result["error_code"] = ErrorCode.REQUEST_TIMED_OUT
                result["error_message"] = (
                    f"partitions of {name!r} were added; their leaders were not ready within "
                    f"timeout_ms={request['timeout_ms']}"
                )
        return {"results": results}

    # -- DescribeConfigs -------------------------------------------------------------

    def describe_configs(self, version: int, request: dict[str, Any]) -> dict[str, Any]:
        results = []
        for resource in request["resources"]:
            kind, name = resource["resource_type"], resource["resource_name"]
            keys = resource["configuration_keys"]
            result: dict[str, Any] = {"resource_type": kind, "resource_name": name,
                                      "configs": []}  # fmt: skip
            try:
                if kind == RESOURCE_TOPIC:
                    validate_topic_name(name)
                    if name in md.topics_being_deleted(self.broker.zk):
                        raise UnknownTopicError(f"topic is being deleted: topic={name!r}")
                    stored = md.read_topic(self.broker.zk, name).config
                    result["configs"] = describe_topic_config(
                        stored, keys, request["include_synonyms"]
                    )
                elif kind == RESOURCE_BROKER:
                    result["configs"] = self._broker_configs(name, keys)
                else:
                    raise _Refused(
                        ErrorCode.INVALID_REQUEST, f"resource type not served: resource_type={kind}"
                    )
            except Exception as exc:  # noqa: BLE001 - error_of re-raises what it does not map
                result["error_code"], result["error_message"] = error_of(exc)
            results.append(result)
        return {"results": results}

    def _broker_configs(self, name: str, keys: list[str] | None) -> list[dict[str, Any]]:
        """A broker's configs: the cluster's defaults (``/config/brokers/<default>``),
        default.replication.factor, and broker.id; each read-only (set at `engine
        start`): a value other than the engine's default has source STATIC_BROKER_CONFIG.
        ``name``: a live broker's id, or "" (the cluster's defaults)."""
        live = md.live_brokers(self.broker.zk)
        if name and (not name.isdigit() or int(name) not in live):
            raise _Refused(
                ErrorCode.INVALID_REQUEST, f"no live broker has this id: broker={name!r}"
            )
        values: dict[str, tuple[Any, bool]] = {
            key: (value, md.CLUSTER_DEFAULTS.get(key) == value)
            for key, value in md.read_cluster_config(self.broker.zk).items()
        }
        values["default.replication.factor"] = (DEFAULT_REPLICATION_FACTOR, True)
        if name:
            values["broker.id"] = (int(name), False)
        out = []
        for key, (value, default) in sorted(values.items()):
            if keys is not None and key not in keys:
                continue
            text = ("true" if value else "false") if isinstance(value, bool) else str(value)
            out.append({
                "name": key, "value": text, "read_only": True, "is_default": default,
                "config_source": SOURCE_DEFAULT if default else SOURCE_STATIC_BROKER,
                "is_sensitive": False,
                "config_type": TYPE_BOOLEAN if isinstance(value, bool) else TYPE_LONG,
            })  # fmt: skip
        return out

    # -- AlterConfigs and IncrementalAlterConfigs ------------------------------------

    def alter_configs(self, version: int, request: dict[str, Any]) -> dict[str, Any]:
        """The whole config of each topic: the keys given, every other one back to its
        default (Kafka's AlterConfigs; a null value is a key not given)."""

        def change(name: str, configs: list[dict[str, Any]]) -> tuple[dict[str, Any], list[str]]:
            wanted = self._unique(configs)
            updates = {k: v for k, v in wanted.items() if v is not None}
            stored = md.read_topic(self.broker.zk, name).config
            return updates, [k for k in stored if k not in updates]

        return self._alter(request, change)

    def incremental_alter_configs(self, version: int, request: dict[str, Any]) -> dict[str, Any]:
        """SET and DELETE of single keys; APPEND and SUBTRACT of cleanup.policy's items."""

        def change(name: str, configs: list[dict[str, Any]]) -> tuple[dict[str, Any], list[str]]:
            self._unique(configs)
            updates: dict[str, Any] = {}
            delete: list[str] = []
            for entry in configs:
                key, op, value = entry["name"], entry["config_operation"], entry["value"]
                if op == OP_SET:
                    if value is None:
                        raise _Refused(
                            ErrorCode.INVALID_REQUEST, f"SET without a value: key={key!r}"
                        )
                    updates[key] = value
                elif op == OP_DELETE:
                    delete.append(key)
                elif op in (OP_APPEND, OP_SUBTRACT):
                    if key not in _LIST_KEYS:
                        verb = "append" if op == OP_APPEND else "subtract"
                        raise ConfigError(
                            f"Config value {verb} is not allowed for config key: {key}"
                        )
                    stored = md.read_topic(self.broker.zk, name).config
                    current = str(stored.get(key, TOPIC_DEFAULTS[key])).split(",")
                    items = [v.strip() for v in (value or "").split(",") if v.strip()]
                    if op == OP_APPEND:
                        merged = current + [v for v in items if v not in current]
                    else:
                        merged = [v for v in current if v not in items]
                    if not merged:
                        raise ConfigError(f"topic config cannot be empty: key={key!r}")
                    updates[key] = ",".join(merged)
                else:
                    raise _Refused(
                        ErrorCode.INVALID_REQUEST,
                        f"unknown config operation: key={key!r} operation={op}",
                    )
            return updates, delete

        return self._alter(request, change)

    @staticmethod
    def _unique(configs: list[dict[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for entry in configs:
            if entry["name"] in out:
                raise _Refused(
                    ErrorCode.INVALID_REQUEST,
                    f"config key given more than once: key={entry['name']!r}",
                )
            out[entry["name"]] = entry["value"]
        return out

    def _alter(
        self,
        request: dict[str, Any],
        change: Callable[[str, list[dict[str, Any]]], tuple[dict[str, Any], list[str]]],
    ) -> dict[str, Any]:
        responses = []
        for resource in request["resources"]:
            kind, name = resource["resource_type"], resource["resource_name"]
            result: dict[str, Any] = {"resource_type": kind, "resource_name": name}
            try:
                if kind == RESOURCE_BROKER:
                    raise _Refused(
                        ErrorCode.INVALID_REQUEST,
                        f"broker configs are set at `engine start`, not altered: broker={name!r}",
                    )
                if kind != RESOURCE_TOPIC:
                    raise _Refused(
                        ErrorCode.INVALID_REQUEST, f"resource type not served: resource_type={kind}"
                    )
                validate_topic_name(name)
                updates, delete = change(name, resource["configs"])
                md.alter_topic_config(self.broker.zk, name, updates, delete,
                                      validate_only=request["validate_only"])  # fmt: skip
                if not request["validate_only"]:
                    log.info("altered the config of topic %r for a Kafka client", name)
            except Exception as exc:  # noqa: BLE001 - error_of re-raises what it does not map
                result["error_code"], result["error_message"] = error_of(exc)
            responses.append(result)
        return {"responses": responses}

    # -- DeleteRecords ---------------------------------------------------------------

    def delete_records(
        self, handles: PartitionHandles, version: int, request: dict[str, Any]
    ) -> dict[str, Any]:
        deadline = time.monotonic() + max(request["timeout_ms"], 0) / 1000
        topics = []
        for topic in request["topics"]:
            name = topic["name"]
            answers = []
            wanted: dict[int, int] = {}
            for p in topic["partitions"]:
                index, offset = p["partition_index"], p["offset"]
                answer: dict[str, Any] = {"partition_index": index, "low_watermark": -1}
                answers.append(answer)
                handle = handles.get(name, index)
                if handle is None:
                    answer["error_code"] = self.handlers.missing(name, index)
                    continue
                _, high_watermark = handle.offsets()
                if offset == -1:
                    offset = high_watermark
                if not 0 <= offset <= high_watermark:
                    answer["error_code"] = ErrorCode.OFFSET_OUT_OF_RANGE
                    continue
                wanted[index] = offset
            if wanted:
                try:
                    with md.deadline(max(deadline - time.monotonic(), 0.0),
                                     f"deleting records of topic {name!r}"):  # fmt: skip
                        md.raise_log_starts(self.broker.zk, name, wanted)
                except EngineError as exc:
                    code, _ = error_of(exc)
                    for answer in answers:
                        if answer["partition_index"] in wanted:
                            answer["error_code"] = code
                    wanted = {}
            for answer in answers:
                index = answer["partition_index"]
                if index not in wanted:
                    continue
                found = self._wait_log_start(name, index, wanted[index], deadline)
                if found is None:
                    answer["error_code"] = ErrorCode.REQUEST_TIMED_OUT
                else:
                    answer["low_watermark"] = found
            topics.append({"name": name, "partitions": answers})
        return {"topics": topics}

    def _wait_log_start(
        self, topic: str, partition: int, offset: int, deadline: float
    ) -> int | None:
        """The least log start offset over the partition's in-sync replicas once each is
        at ``offset`` or later (Kafka's low watermark); None if not by ``deadline``."""
        while True:
            starts = []
            try:
                state = md.read_topic(self.broker.zk, topic).states.get(partition)
            except UnknownTopicError:
                return None
            for broker in state.isr if state is not None else ():
                directory = self.broker.data_dir.partition_dir(broker, topic, partition)
                try:
                    with LogReader(directory) as reader:
                        starts.append(reader.log_start_offset)
                except (OSError, EngineError):
                    starts.append(-1)
            if starts and min(starts) >= offset:
                return min(starts)
            if time.monotonic() >= deadline:
                return None
            time.sleep(POLL_S)

    # -- DescribeCluster -------------------------------------------------------------

    def describe_cluster(self, version: int, request: dict[str, Any]) -> dict[str, Any]:
        if request["endpoint_type"] != 1:  # 2: controllers, which a broker does not list
            return {
                "error_code": ErrorCode.MISMATCHED_ENDPOINT_TYPE,
                "error_message": "this is a broker: it lists brokers (endpoint_type 1)",
                "endpoint_type": request["endpoint_type"],
                "cluster_id": self.handlers.cluster_id,
            }
        brokers = self.handlers.brokers()
        live = {b["node_id"] for b in brokers}
        controller = md.controller_id(self.broker.zk)
        return {
            "cluster_id": self.handlers.cluster_id,
            "controller_id": controller if controller in live else -1,
            "brokers": [
                {"broker_id": b["node_id"], "host": b["host"], "port": b["port"], "rack": None}
                for b in brokers
            ],
        }

    # -- OffsetForLeaderEpoch --------------------------------------------------------

    def offset_for_leader_epoch(
        self, handles: PartitionHandles, version: int, request: dict[str, Any]
    ) -> dict[str, Any]:
        topics = []
        for topic in request["topics"]:
            name = topic["topic"]
            answers = []
            for p in topic["partitions"]:
                index = p["partition"]
                answer: dict[str, Any] = {"partition": index}
                answers.append(answer)
                handle = handles.get(name, index)
                if handle is None:
                    answer["error_code"] = self.handlers.missing(name, index)
                    continue
                error = self.handlers.epoch_error(handle, p["current_leader_epoch"])
                if error is not None:
                    answer["error_code"] = error
                    continue
                status = handle.ring.status()
                found = end_offset_for(
                    p["leader_epoch"],
                    handle.leadership.leader_epoch,
                    handle.reader.log_start_offset,
                    status.tail_offset,
                    batch_reader(handle),
                )
                if found is None:
                    answer["error_code"] = ErrorCode.UNKNOWN_SERVER_ERROR
                    continue
                answer["leader_epoch"], answer["end_offset"] = found
            topics.append({"topic": name, "partitions": answers})
        return {"topics": topics}


def _hex(topic_id: bytes | None) -> str:
    return (topic_id or bytes(16)).hex()
