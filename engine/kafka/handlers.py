"""What the listener answers to each API: decoded request in, response fields out.

One method per API (SaslHandshake and SaslAuthenticate live with the connection's
state, in engine.kafka.listener). Requests and responses are the dicts of
engine.kafka.codec; partitions are reached through the connection's
engine.kafka.partitions handles; cluster metadata comes from the coordinator's tree
through the broker's own session.

- ApiVersions: the APIs and versions served; v3+ with a client software name or
  version outside Kafka's pattern is INVALID_REQUEST (KIP-511).
- Metadata: the brokers that registered a Kafka endpoint of this listener's security
  protocol, the topics (all, or those asked; an unknown one is created when the
  cluster allows auto-creation and the request does), each partition's leader, leader
  epoch, replicas and ISR; a partition whose leader has no endpoint is
  LEADER_NOT_AVAILABLE. The cluster id is the engine's (engine.metadata.cluster_id).
- Produce: each partition's one batch through PartitionHandle.append; acks=0 gets no
  response (the listener closes the connection when it failed).
- Fetch: full fetches only (the session id is always 0, so clients never send
  incremental ones); each partition from its fetch offset up to partition_max_bytes,
  the whole response up to max_bytes (the first batch always, as KIP-74); with nothing
  to send, the fetch waits on the rings for up to max_wait_ms. A partition's error
  answer carries no offsets (-1), as Kafka's.
- ListOffsets: -1 the high watermark, -2 the log start, -3 (v7+) the record with the
  largest timestamp, a timestamp the first record at or after it (both a walk over the
  batches from the log start); nothing found is offset -1 with leader epoch -1, as Kafka.
- FindCoordinator: each key's coordinator, one of the live brokers picked by the key's
  CRC-32 (groups: key type 0; transactional ids: key type 1).
- InitProducerId without a transactional id: a new producer id from the cluster's
  allocator (the engine's own producers take theirs from the same), epoch 0; a known id
  with its epoch (KIP-360's bump) gets the next epoch. With a transactional id, and the
  other transaction APIs: engine.kafka.transactions.
- Transactional Produce: each (producer id, epoch) of the request checked once against
  its transaction (engine.kafka.transactions.TransactionCoordinator.verify).
- read_committed (Fetch and ListOffsets with isolation_level 1): nothing at or past the
  last stable offset, and the aborted transactions of what is returned
  (engine.kafka.txn_index).
"""

from __future__ import annotations

import functools
import logging
import re
import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kazoo.client import KazooClient

from engine import metadata as md
from engine import transaction as txn
from engine.compression import COMPRESSION_MASK, codec_name, plain_batch
from engine.config import validate_topic_name
from engine.datadir import DataDir
from engine.errors import EngineError, InvalidTopicError, TopicExistsError, UnknownTopicError
from engine.kafka.error_codes import ErrorCode
from engine.kafka.partitions import PartitionHandle, PartitionHandles, ProducerStates
from engine.kafka.schemas import APIS
from engine.kafka.transactions import TransactionCoordinator
from engine.kafka.txn_index import TxnIndex, TxnIndexes
from engine.record_batch import decode_record_infos, scan_batches
from engine.ring import wait_any

log = logging.getLogger("engine.kafka")

LATEST = -1
EARLIEST = -2
#: What Kafka accepts as a client's software name and version (ApiVersions v3+, KIP-511).
CLIENT_SOFTWARE = re.compile(r"[a-zA-Z0-9](?:[a-zA-Z0-9\-.]*[a-zA-Z0-9])?")
#: ListOffsets v7+ (KIP-734): the record with the largest timestamp.
MAX_TIMESTAMP = -3
#: How long a fetch waits on the rings at a time, so that a stopping listener is seen.
FETCH_WAIT_SLICE_S = 0.5
#: What a ListOffsets walk reads at a time.
SCAN_CHUNK = 1 << 20
MAX_EPOCH = 32767
#: FindCoordinator's key types.
COORDINATOR_GROUP = 0
COORDINATOR_TRANSACTION = 1
READ_COMMITTED = 1
#: A batch header's attributes, producer id and epoch (record_batch.py has it all).
_TXN_FIELDS = struct.Struct(">21xh20xqh")
_BASE_AND_LENGTH = struct.Struct(">qi")
_TRANSACTIONAL = 0x10


@dataclass(frozen=True)
class BrokerSide:
    """What the handlers need of the broker process they run in."""

    broker_id: int
    data_dir: DataDir
    zk: KazooClient
    security_protocol: str
    #: The partitions this broker leads now (engine.kafka.partitions.Leaderships).
    leaderships: Callable[[], Any]


def endpoint_of(registration: dict[str, Any], listener: str) -> tuple[str, int] | None:
    """(host, port) of the ``listener`` endpoint in a broker registration, if any."""
    for item in registration.get("endpoints") or ():
        name, sep, address = str(item).partition("://")
        if sep and name == listener:
            host, _, port = address.rpartition(":")
            try:
                return host, int(port)
            except ValueError:
                return None
    return None


class Handlers:
    """The listener's answers (module docstring). Any connection thread may call."""

    def __init__(self, broker: BrokerSide, stopping: Callable[[], bool]) -> None:
        self.broker = broker
        self.states = ProducerStates()
        self.transactions = TransactionCoordinator(broker.zk)
        self.txn_indexes = TxnIndexes(broker.leaderships)
        self._stopping = stopping

    @functools.cached_property
    def cluster_id(self) -> str:
        """The cluster's id, as the engine's Admin.describe_cluster gives it (Kafka's
        form: a UUID in url-safe base64), read once."""
        return md.cluster_id(self.broker.zk)

    # -- ApiVersions -----------------------------------------------------------

    @staticmethod
    def api_versions(
        error: ErrorCode = ErrorCode.NONE, request: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """The APIs served; INVALID_REQUEST without them when a v3+ ``request`` names its
        client software in a form Kafka refuses (an empty version, a leading dash)."""
        if request is not None and not all(
            CLIENT_SOFTWARE.fullmatch(request[field])
            for field in ("client_software_name", "client_software_version")
        ):
            return {"error_code": ErrorCode.INVALID_REQUEST, "api_keys": []}
        return {
            "error_code": error,
            "api_keys": [
                {"api_key": api.key, "min_version": api.min_version, "max_version": api.max_version}
                for api in sorted(APIS.values(), key=lambda a: a.key)
            ],
        }

    # -- Metadata --------------------------------------------------------------

    def brokers(self) -> list[dict[str, Any]]:
        """The brokers with an endpoint of this listener's protocol, by id."""
        out = []
        for broker_id, registration in sorted(md.live_brokers(self.broker.zk).items()):
            found = endpoint_of(registration, self.broker.security_protocol)
            if found is not None:
                out.append({"node_id": broker_id, "host": found[0], "port": found[1]})
        return out

    def metadata(self, version: int, request: dict[str, Any]) -> dict[str, Any]:
        zk = self.broker.zk
        brokers = self.brokers()
        live = {b["node_id"] for b in brokers}
        asked = request["topics"]
        names: list[str | None]
        if asked is None or (version == 0 and not asked):
            names = list(md.list_topics(zk))
        else:
            by_id: dict[bytes, str] | None = None
            names = []
            for t in asked:
                if t["name"] is None:  # v10+: asked by topic id
                    if by_id is None:
                        by_id = self._topics_by_id()
                    names.append(by_id.get(t["topic_id"]))
                else:
                    names.append(t["name"])
        controller = md.controller_id(zk)
        return {
            "brokers": brokers,
            "cluster_id": self.cluster_id,
            "controller_id": controller if controller in live else -1,
            "topics": [
                self._topic_metadata(name, live, request["allow_auto_topic_creation"])
                for name in names
            ],
        }

    def _topics_by_id(self) -> dict[bytes, str]:
        out = {}
        for name in md.list_topics(self.broker.zk):
            try:
                out[bytes.fromhex(md.read_topic(self.broker.zk, name).assignment.topic_id)] = name
            except (UnknownTopicError, ValueError):
                continue
        return out

    def _topic_metadata(self, name: str | None, live: set[int], create: bool) -> dict[str, Any]:
        zk = self.broker.zk
        if name is None:
            return {"error_code": ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, "name": None}
        try:
            validate_topic_name(name)
            meta = md.read_topic(zk, name)
            if name in md.topics_being_deleted(zk):
                raise UnknownTopicError(f"topic is being deleted: topic={name!r}")
        except InvalidTopicError:
            return {"error_code": ErrorCode.INVALID_TOPIC_EXCEPTION, "name": name}
        except UnknownTopicError:
            if create and self._auto_create(name):
                return {"error_code": ErrorCode.LEADER_NOT_AVAILABLE, "name": name}
            return {"error_code": ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, "name": name}
        partitions = []
        for p, replicas in sorted(meta.assignment.replicas.items()):
            state = meta.states.get(p)
            entry: dict[str, Any] = {
                "partition_index": p,
                "replica_nodes": list(replicas),
                "offline_replicas": [b for b in replicas if b not in live],
            }
            if state is None or state.leader not in live:
                entry |= {
                    "error_code": ErrorCode.LEADER_NOT_AVAILABLE,
                    "leader_id": -1,
                    "isr_nodes": list(state.isr) if state else [],
                }
            else:
                entry |= {
                    "leader_id": state.leader,
                    "leader_epoch": state.leader_epoch,
                    "isr_nodes": list(state.isr),
                }
            partitions.append(entry)
        return {
            "name": name,
            "topic_id": bytes.fromhex(meta.assignment.topic_id),
            "partitions": partitions,
        }

    def _auto_create(self, name: str) -> bool:
        """Create the topic when the cluster allows auto-creation (Kafka's
        auto.create.topics.enable); whether it did (or someone else just had)."""
        defaults = md.read_cluster_config(self.broker.zk)
        if not defaults.get("auto.create.topics.enable"):
            return False
        try:
            md.create_topic(self.broker.zk, name, int(defaults["num.partitions"]), 1, None)
            log.info("created topic %r for a Kafka client (auto.create.topics.enable)", name)
        except TopicExistsError:
            pass
        except EngineError as exc:
            log.warning("could not auto-create topic %r for a Kafka client: %s", name, exc)
            return False
        return True

    def _missing(self, topic: str, partition: int) -> ErrorCode:
        """The error for a partition this broker does not lead: unknown, or led elsewhere."""
        try:
            validate_topic_name(topic)
            meta = md.read_topic(self.broker.zk, topic)
        except (UnknownTopicError, InvalidTopicError):
            return ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
        if partition not in meta.assignment.replicas:
            return ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
        return ErrorCode.NOT_LEADER_OR_FOLLOWER

    @staticmethod
    def _epoch_error(handle: PartitionHandle, asked: int) -> ErrorCode | None:
        """A request's current_leader_epoch against this leadership's (-1: not asked)."""
        ours = handle.leadership.leader_epoch
        if asked < 0 or asked == ours:
            return None
        return ErrorCode.FENCED_LEADER_EPOCH if asked < ours else ErrorCode.UNKNOWN_LEADER_EPOCH

    #: Shared with the handlers of the other API modules (engine.kafka.admin).
    missing = _missing
    epoch_error = _epoch_error
    topics_by_id = _topics_by_id

    # -- Produce ---------------------------------------------------------------

    def produce(
        self, handles: PartitionHandles, version: int, request: dict[str, Any]
    ) -> dict[str, Any]:
        acks, timeout_ms = request["acks"], request["timeout_ms"]
        refused = self._verify_transactional(request)
        responses = []
        for topic in request["topic_data"]:
            name = topic["name"]
            answers = []
            for p in topic["partition_data"]:
                index = p["index"]
                answer: dict[str, Any] = {"index": index, "base_offset": -1}
                if acks not in (0, 1, -1):
                    answer["error_code"] = ErrorCode.INVALID_REQUIRED_ACKS
                    answers.append(answer)
                    continue
                if (name, index) in refused:
                    answer["error_code"] = refused[name, index]
                    answers.append(answer)
                    continue
                handle = handles.get(name, index)
                if handle is None:
                    answer["error_code"] = self._missing(name, index)
                    answers.append(answer)
                    continue
                done = handle.append(p["records"], acks, timeout_ms, self.states)
                answer |= {
                    "error_code": done.error,
                    "base_offset": done.base_offset,
                    "error_message": done.message,
                }
                if done.error is not ErrorCode.NONE:
                    log.debug(
                        "produce to %s-%d refused: %s (%s)",
                        name,
                        index,
                        done.error.name,
                        done.message,
                    )
                answers.append(answer)
            responses.append({"name": name, "partition_responses": answers})
        return {"responses": responses}

    def _verify_transactional(self, request: dict[str, Any]) -> dict[tuple[str, int], ErrorCode]:
        """The partitions whose transactional batch its transaction refuses, and why:
        one check per (producer id, epoch) of the request."""
        by_producer: dict[tuple[int, int], list[tuple[str, int]]] = {}
        for topic in request["topic_data"]:
            for p in topic["partition_data"]:
                records = p["records"]
                if records is None or len(records) < _TXN_FIELDS.size:
                    continue
                attributes, producer_id, epoch = _TXN_FIELDS.unpack_from(records)
                if attributes & _TRANSACTIONAL and producer_id >= 0:
                    by_producer.setdefault((producer_id, epoch), []).append(
                        (topic["name"], p["index"])
                    )
        refused: dict[tuple[str, int], ErrorCode] = {}
        for (producer_id, epoch), tps in by_producer.items():
            checked = self.transactions.verify(request["transactional_id"], producer_id, epoch, tps)
            refused.update((tp, code) for tp, code in checked.items() if code is not ErrorCode.NONE)
        return refused

    @staticmethod
    def failed(produced: dict[str, Any]) -> bool:
        """Whether a Produce response carries an error (acks=0: the connection closes)."""
        return any(
            p["error_code"] != ErrorCode.NONE
            for t in produced["responses"]
            for p in t["partition_responses"]
        )

    # -- Fetch -----------------------------------------------------------------

    def fetch(
        self, handles: PartitionHandles, version: int, request: dict[str, Any]
    ) -> dict[str, Any]:
        deadline = time.monotonic() + max(request["max_wait_ms"], 0) / 1000
        while True:
            responses, total, waits = self._fetch_once(handles, request)
            left = deadline - time.monotonic()
            if total or not waits or left <= 0 or self._stopping():
                return {"session_id": 0, "responses": responses}
            wait_any(waits, min(left, FETCH_WAIT_SLICE_S))

    def _fetch_once(
        self, handles: PartitionHandles, request: dict[str, Any]
    ) -> tuple[list[dict[str, Any]], int, list[Any]]:
        """One pass over the partitions asked: the responses, the bytes they carry, and
        what to wait on when they carry none (empty when an error must go out now)."""
        budget = request["max_bytes"]
        committed = request["isolation_level"] == READ_COMMITTED
        total = 0
        waits: list[Any] = []
        failed = False
        responses = []
        for topic in request["topics"]:
            name = topic["topic"]
            answers = []
            for p in topic["partitions"]:
                index, offset = p["partition"], p["fetch_offset"]
                answer: dict[str, Any] = {
                    "partition_index": index,
                    "high_watermark": -1,
                    "records": b"",
                }
                answers.append(answer)
                handle = handles.get(name, index)
                error = self._missing(name, index) if handle is None else None
                if handle is not None:
                    error = self._epoch_error(handle, p["current_leader_epoch"])
                if handle is None or error is not None:
                    answer["error_code"] = error
                    failed = True
                    continue
                room = (
                    p["partition_max_bytes"]
                    if not total
                    else min(p["partition_max_bytes"], budget - total)
                )
                if room <= 0:  # the response is full: its offsets only
                    stable = self._stable(handle) if committed else None
                    start, high_watermark = handle.offsets()
                    answer |= {
                        "high_watermark": high_watermark,
                        "last_stable_offset": high_watermark if stable is None else stable[1],
                        "log_start_offset": start,
                    }
                    if committed and stable is None:
                        answer["error_code"] = ErrorCode.NOT_LEADER_OR_FOLLOWER
                        failed = True
                    continue
                got = handle.read(offset, room)
                if got.error is not ErrorCode.NONE:  # Kafka's error answer: no offsets
                    answer["error_code"] = got.error
                    failed = True
                    continue
                records = got.records
                answer |= {
                    "error_code": got.error,
                    "high_watermark": got.high_watermark,
                    "last_stable_offset": got.high_watermark,
                    "log_start_offset": got.log_start_offset,
                }
                stable = self._stable(handle, offset, records) if committed else None
                if committed and stable is None:  # the log went (sealed, or retention)
                    answer["error_code"] = ErrorCode.NOT_LEADER_OR_FOLLOWER
                    failed = True
                    continue
                if stable is not None:
                    index, lso = stable
                    records = _below(records, lso)
                    with index.lock:
                        aborted = index.aborted_between(offset, lso) if records else []
                    answer |= {"last_stable_offset": lso, "aborted_transactions": aborted}
                answer["records"] = records
                total += len(records)
                if not records:
                    # read_committed: what comes next is a marker that moves the high
                    # watermark (waiting at the fetch offset would return at once).
                    at = offset if stable is None else max(offset, got.high_watermark)
                    cursor = handle.wait_target(at)
                    if cursor is not None:
                        waits.append((handle.ring, cursor))
            responses.append({"topic": name, "partitions": answers})
        return responses, total, [] if failed else waits

    def _stable(
        self, handle: PartitionHandle, offset: int = -1, fetched: bytes = b""
    ) -> tuple[TxnIndex, int] | None:
        """The partition's transaction index, brought up to its high watermark, and its
        last stable offset; None when the log could not be read. ``fetched``: the
        batches a Fetch just read from ``offset``, which the index takes first (a
        consumer at the end of the log then costs the index no read of its own)."""
        index = self.txn_indexes.of(handle.leadership)
        with index.lock:
            if fetched:
                index.feed(offset, fetched)
            start, high_watermark = handle.offsets()
            if not index.update(handle.read_log, start, high_watermark):
                return None
            return index, index.last_stable_offset(high_watermark)

    # -- ListOffsets -----------------------------------------------------------

    def list_offsets(
        self, handles: PartitionHandles, version: int, request: dict[str, Any]
    ) -> dict[str, Any]:
        topics = []
        for topic in request["topics"]:
            name = topic["name"]
            answers = []
            for p in topic["partitions"]:
                index, asked = p["partition_index"], p["timestamp"]
                answer: dict[str, Any] = {"partition_index": index}
                answers.append(answer)
                handle = handles.get(name, index)
                error = self._missing(name, index) if handle is None else None
                if handle is not None:
                    error = self._epoch_error(handle, p["current_leader_epoch"])
                if handle is None or error is not None:
                    answer["error_code"] = error
                    continue
                answer["leader_epoch"] = handle.leadership.leader_epoch
                start, high_watermark = handle.offsets()
                if asked == LATEST:
                    stable = (
                        self._stable(handle)
                        if request["isolation_level"] == READ_COMMITTED
                        else None
                    )
                    if request["isolation_level"] == READ_COMMITTED and stable is None:
                        answer["error_code"] = ErrorCode.NOT_LEADER_OR_FOLLOWER
                    answer["offset"] = high_watermark if stable is None else stable[1]
                elif asked == EARLIEST:
                    answer["offset"] = start
                elif asked >= 0 or (asked == MAX_TIMESTAMP and version >= 7):
                    found = (
                        self._offset_for_time(handle, start, asked)
                        if asked >= 0
                        else self._max_timestamp(handle, start)
                    )
                    if found is None:
                        answer["leader_epoch"] = -1
                    else:
                        answer["offset"], answer["timestamp"] = found
                else:
                    answer["error_code"] = ErrorCode.INVALID_REQUEST
            topics.append({"name": name, "partitions": answers})
        return {"topics": topics}

    @staticmethod
    def _offset_for_time(handle: PartitionHandle, start: int, ts: int) -> tuple[int, int] | None:
        """(offset, timestamp) of the first record at or after ``ts``: a walk over the
        batches, skipping those whose max timestamp is older; a compressed batch is made
        plain to find its record (as Kafka's broker does). One that does not decompress
        answers with its first offset and max timestamp, and a warning."""
        offset = start
        while True:
            got = handle.read(offset, SCAN_CHUNK)
            if got.error is not ErrorCode.NONE or not got.records:
                return None
            infos, _, _ = scan_batches(got.records, verify_crc=False)
            if not len(infos):
                return None
            for info in infos:
                last = int(info["last_offset"])
                if last < offset or int(info["max_timestamp"]) < ts:
                    continue
                at = int(info["position"])
                batch = got.records[at : at + int(info["length"])]
                if int(info["attributes"]) & COMPRESSION_MASK:
                    try:
                        batch = plain_batch(batch)
                    except ValueError as exc:
                        log.warning(
                            "ListOffsets: a compressed batch does not decompress, answering "
                            "its first offset: topic=%s partition=%d base_offset=%d "
                            "codec=%s reason=%s",
                            handle.leadership.topic, handle.leadership.partition,
                            int(info["base_offset"]),
                            codec_name(int(info["attributes"])), exc,
                        )  # fmt: skip
                        return max(int(info["base_offset"]), offset), int(info["max_timestamp"])
                records = decode_record_infos(batch, offset)
                hits = records[records["timestamp"] >= ts] if len(records) else records
                if len(hits):
                    first = hits[0]
                    return int(first["offset"]), int(first["timestamp"])
            offset = int(infos["last_offset"][-1]) + 1

    @staticmethod
    def _max_timestamp(handle: PartitionHandle, start: int) -> tuple[int, int] | None:
        """(offset, timestamp) of the record with the largest timestamp, as Kafka answers
        MAX_TIMESTAMP: the first batch whose max timestamp is the largest, the first record
        in it with that timestamp (of a compressed batch, its first offset). A walk over
        every batch from the log start; None when the partition holds no record."""
        best: tuple[int, bytes, int, int] | None = None  # timestamp, batch, attributes, base
        offset = start
        while True:
            got = handle.read(offset, SCAN_CHUNK)
            if got.error is not ErrorCode.NONE or not got.records:
                break
            infos, _, _ = scan_batches(got.records, verify_crc=False)
            if not len(infos):
                break
            for info in infos:
                if int(info["last_offset"]) < offset:
                    continue
                if best is None or int(info["max_timestamp"]) > best[0]:
                    at = int(info["position"])
                    batch = bytes(got.records[at : at + int(info["length"])])
                    best = (int(info["max_timestamp"]), batch, int(info["attributes"]),
                            int(info["base_offset"]))  # fmt: skip
            offset = int(infos["last_offset"][-1]) + 1
        if best is None:
            return None
        timestamp, batch, attributes, base = best
        if not attributes & 0x07:
            records = decode_record_infos(batch)
            hits = records[records["timestamp"] == timestamp] if len(records) else records
            if len(hits):
                return int(hits[0]["offset"]), timestamp
        return base, timestamp

    # -- FindCoordinator -------------------------------------------------------

    def coordinator(self, key: str) -> dict[str, Any] | None:
        """The broker that coordinates ``key`` (a group id or a transactional id): the
        live brokers with an endpoint of this listener's protocol, in id order, picked by
        the key's CRC-32, as Kafka picks the partition of its internal topics. None
        without such a broker. The same on every broker while the live set holds; when a
        broker comes or goes, clients asking again find the new one (NOT_COORDINATOR)."""
        brokers = self.brokers()
        if not brokers:
            return None
        return brokers[zlib.crc32(key.encode()) % len(brokers)]

    def is_coordinator(self, key: str) -> bool:
        found = self.coordinator(key)
        return found is not None and found["node_id"] == self.broker.broker_id

    def find_coordinator(self, version: int, request: dict[str, Any]) -> dict[str, Any]:
        """Each key's coordinator (:meth:`coordinator`); key type 0 is a group, 1 a
        transactional id; any other type is INVALID_REQUEST."""
        if version < 4:
            return self._coordinator_of(request["key"], request["key_type"])
        return {
            "coordinators": [
                {"key": k} | self._coordinator_of(k, request["key_type"])
                for k in request["coordinator_keys"]
            ]
        }

    def _coordinator_of(self, key: str, key_type: int) -> dict[str, Any]:
        if key_type not in (COORDINATOR_GROUP, COORDINATOR_TRANSACTION):
            return _no_coordinator(ErrorCode.INVALID_REQUEST, f"unknown key type {key_type}")
        found = self.coordinator(key)
        if found is None:
            return _no_coordinator(
                ErrorCode.COORDINATOR_NOT_AVAILABLE, "no live broker has this listener"
            )
        return {"error_code": ErrorCode.NONE, "error_message": None} | found

    # -- InitProducerId --------------------------------------------------------

    def init_producer_id(self, version: int, request: dict[str, Any]) -> dict[str, Any]:
        """An idempotent producer's id (one with a transactional id goes to
        TransactionCoordinator.init_producer_id)."""
        producer_id, epoch = request["producer_id"], request["producer_epoch"]
        if producer_id >= 0 and 0 <= epoch < MAX_EPOCH - 1:
            return {"producer_id": producer_id, "producer_epoch": epoch + 1}
        return {"producer_id": txn.allocate_producer_id(self.broker.zk), "producer_epoch": 0}


def _below(records: bytes, end: int) -> bytes:
    """The whole batches of ``records`` that start below offset ``end``."""
    pos, size = 0, len(records)
    while pos + _BASE_AND_LENGTH.size <= size:
        base, length = _BASE_AND_LENGTH.unpack_from(records, pos)
        if base >= end:
            return records[:pos]
        pos += length + 12  # batch_length counts the bytes after its own field
    return records


def _no_coordinator(error: ErrorCode, message: str) -> dict[str, Any]:
    return {"error_code": error, "error_message": message, "node_id": -1, "host": "", "port": -1}
