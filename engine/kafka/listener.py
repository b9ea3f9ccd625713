"""The Kafka listener: a broker's TCP port on 127.0.0.1 that speaks Kafka's binary protocol.

One per broker process. An accept thread takes connections; each connection has its
own thread, which reads a request, answers it, and reads the next: responses go out in
the order of the requests, as Kafka promises, and a request that waits (a Fetch with
max_wait_ms, an acks=all Produce) holds up only its own connection.

Framing: every request and response is a 4-byte big-endian size, then that many bytes:
a request header and body (engine.kafka.codec), or a response header and body. A frame
larger than MAX_FRAME_BYTES (Kafka's socket.request.max.bytes; before authentication
MAX_UNAUTHENTICATED_FRAME_BYTES, Kafka's sasl.server.max.receive.size), or one that
does not decode, closes the connection, as Kafka closes it. So does a failed acks=0
Produce (it has no response): the client notices and looks up the leader again. An
API the listener does not serve, or a version of it outside the versions ApiVersions
lists, is answered (never a dropped connection): ApiVersions with its v0 error
response (UNSUPPORTED_VERSION and the APIs served), any other with the correlation id
and UNSUPPORTED_VERSION as the first field of the body, which is where every Kafka
response that has a top-level error code starts (the others' clients never ask at
versions they were not offered).

Authentication (engine.kafka.sasl), per connection, as Kafka's SASL_PLAINTEXT listener
does it::

    HANDSHAKE --SaslHandshake v1--> AUTHENTICATING --SaslAuthenticate...--> AUTHENTICATED
              --SaslHandshake v0--> RAW_TOKENS     --bare tokens...------->

Before AUTHENTICATED only ApiVersions and the SASL requests are served; anything else
closes the connection. A failed authentication is answered (SaslAuthenticate:
SASL_AUTHENTICATION_FAILED and a message) and the connection closed. With
``--kafka-auth none`` a connection starts AUTHENTICATED.

Stopping: :meth:`KafkaListener.stop` closes the port and every connection; a Fetch
waiting on the rings notices within FETCH_WAIT_SLICE_S.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import logging
import socket
import struct
import threading
from collections.abc import Iterable
from typing import Any, Protocol

from engine.cluster import ClusterView
from engine.errors import EngineError, KafkaProtocolError
from engine.kafka import schemas
from engine.kafka.admin import AdminHandlers
from engine.kafka.codec import (
    decode,
    encode,
    peek_request_ids,
    read_request_header,
    response_header,
)
from engine.kafka.error_codes import ErrorCode
from engine.kafka.handlers import BrokerSide, Handlers
from engine.kafka.partitions import PartitionHandles
from engine.kafka.sasl import (
    MECHANISMS,
    Credential,
    KafkaAuth,
    Plain,
    SaslFailure,
    ScramKeys,
    ScramSha256,
)

__all__ = ["KafkaListener", "bind"]

log = logging.getLogger("engine.kafka")

HOST = "127.0.0.1"
#: Kafka's socket.request.max.bytes default: a larger frame closes the connection.
MAX_FRAME_BYTES = 100 * 1024 * 1024
#: Kafka's sasl.server.max.receive.size: what a client may send before it authenticated.
MAX_UNAUTHENTICATED_FRAME_BYTES = 512 * 1024
ACCEPT_POLL_S = 0.5
_SIZE = struct.Struct(">i")
_ERROR_ONLY = struct.Struct(">h")
_PRE_AUTH = {schemas.API_VERSIONS, schemas.SASL_HANDSHAKE, schemas.SASL_AUTHENTICATE}
#: The admin APIs that need no partition handles (engine.kafka.admin).
_ADMIN = {
    schemas.CREATE_TOPICS: AdminHandlers.create_topics,
    schemas.DELETE_TOPICS: AdminHandlers.delete_topics,
    schemas.CREATE_PARTITIONS: AdminHandlers.create_partitions,
    schemas.DESCRIBE_CONFIGS: AdminHandlers.describe_configs,
    schemas.ALTER_CONFIGS: AdminHandlers.alter_configs,
    schemas.INCREMENTAL_ALTER_CONFIGS: AdminHandlers.incremental_alter_configs,
    schemas.DESCRIBE_CLUSTER: AdminHandlers.describe_cluster,
}


class AuthState(enum.Enum):
    """Where a connection stands in its authentication (module docstring)."""

    HANDSHAKE = "handshake"
    """Nothing yet: only ApiVersions and SaslHandshake are served."""
    AUTHENTICATING = "authenticating"
    """After a SaslHandshake v1: SaslAuthenticate requests carry the tokens."""
    RAW_TOKENS = "raw tokens"
    """After a SaslHandshake v0: the next frames are the mechanism's bare tokens."""
    AUTHENTICATED = "authenticated"
    """Every API is served."""


class Mechanism(Protocol):
    name: str
    done: bool

    def step(self, token: bytes) -> bytes: ...


class _Closed(Exception):
    """The connection is to be closed (said once in the log by whoever raised it)."""


def bind(preferred: Iterable[int], host: str = HOST) -> socket.socket:
    """A listening socket on ``host``, at the first of the ``preferred`` ports that is
    free (0: any). OSError when none is."""
    last: OSError | None = None
    for port in preferred:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            sock.listen(128)
        except OSError as exc:
            sock.close()
            last = exc
            continue
        return sock
    raise last or OSError(errno.EADDRNOTAVAIL, "no port to bind")


class KafkaListener:
    """A broker's Kafka port (module docstring)."""

    def __init__(
        self,
        broker: BrokerSide,
        sock: socket.socket,
        auth: KafkaAuth,
        credential: Credential | None,
    ) -> None:
        self.auth = auth
        self._sock = sock
        self.port: int = sock.getsockname()[1]
        self._credential = credential
        self._scram = ScramKeys.derive(credential.password) if credential is not None else None
        self._stopping = threading.Event()
        self.handlers = Handlers(broker, self._stopping.is_set)
        self.admin = AdminHandlers(self.handlers)
        self._connections: set[_Connection] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept_loop, name="kafka-accept", daemon=True)
        if auth is KafkaAuth.SASL and credential is None:
            raise EngineError("the Kafka listener needs a credential for SASL")

    @property
    def security_protocol(self) -> str:
        return self.auth.security_protocol

    def start(self) -> None:
        self._sock.settimeout(ACCEPT_POLL_S)
        self._thread.start()
        log.info("Kafka listener on %s:%d (%s)", HOST, self.port, self.security_protocol)

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.ident is not None:
            self._thread.join(timeout=5)
        self._sock.close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            conn.shut()
        for conn in connections:
            conn.join(timeout=5)

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                client, address = self._sock.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                if not self._stopping.is_set():
                    log.error("the Kafka listener cannot accept: %s", exc)
                return
            client.settimeout(None)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Connection(self, client, f"{address[0]}:{address[1]}")
            with self._lock:
                self._connections.add(conn)
            conn.start()

    def _forget(self, conn: _Connection) -> None:
        with self._lock:
            self._connections.discard(conn)

    def mechanism(self, name: str) -> Mechanism | None:
        if self._credential is None:
            return None
        if name == "PLAIN":
            return Plain(self._credential)
        if name == "SCRAM-SHA-256" and self._scram is not None:
            return ScramSha256(self._credential, self._scram)
        return None


class _Connection(threading.Thread):
    """One client connection: reads requests and answers them in order."""

    def __init__(self, listener: KafkaListener, sock: socket.socket, peer: str) -> None:
        super().__init__(name=f"kafka-{peer}", daemon=True)
        self.listener = listener
        self.sock = sock
        self.peer = peer
        self.handles = PartitionHandles(listener.handlers.broker.leaderships)
        self.state = (
            AuthState.HANDSHAKE if listener.auth is KafkaAuth.SASL else AuthState.AUTHENTICATED
        )
        self.mechanism: Mechanism | None = None
        self._close_after = False  # a failed authentication: close once answered
        self._txn_view: ClusterView | None = None

    def txn_view(self) -> ClusterView:
        """The rings this connection's transaction requests write markers to and fence
        (mapped on first use without faulting their pages in: a marker touches a few,
        over the broker's coordinator session)."""
        if self._txn_view is None:
            broker = self.listener.handlers.broker
            self._txn_view = ClusterView(broker.data_dir.root, populate_rings=False, zk=broker.zk)
        for name, topic in list(self._txn_view.topics.items()):
            if any(ring.sealed for ring in topic.rings.values()):
                self._txn_view.forget(name)  # a deleted topic's (or an old leader's) rings go
        return self._txn_view

    def shut(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def run(self) -> None:
        try:
            while True:
                frame = self._read_frame()
                if frame is None:
                    return
                if self.state is AuthState.RAW_TOKENS:
                    self._send(self._raw_token(frame))
                    continue
                response = self._answer(frame)
                if response is not None:
                    self._send(response)
                if self._close_after:
                    return
        except _Closed:
            pass
        except (KafkaProtocolError, SaslFailure) as exc:
            log.warning("closing Kafka connection %s: %s", self.peer, exc)
        except OSError:
            pass  # the client went away
        except Exception:
            log.exception("closing Kafka connection %s after an unexpected error", self.peer)
        finally:
            self.handles.close()
            if self._txn_view is not None:
                self._txn_view.close()
            with contextlib.suppress(OSError):
                self.sock.close()
            self.listener._forget(self)

    # -- framing --------------------------------------------------------------------

    def _read_exactly(self, n: int) -> bytearray | None:
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            k = self.sock.recv_into(view[got:])
            if k == 0:
                return None
            got += k
        return buf

    def _read_frame(self) -> bytearray | None:
        head = self._read_exactly(4)
        if head is None:
            return None
        (size,) = _SIZE.unpack(head)
        largest = (
            MAX_FRAME_BYTES
            if self.state is AuthState.AUTHENTICATED
            else MAX_UNAUTHENTICATED_FRAME_BYTES
        )
        if not 0 <= size <= largest:
            raise KafkaProtocolError(
                f"request size out of range: size={size} largest={largest} "
                f"authenticated={self.state is AuthState.AUTHENTICATED}"
            )
        return self._read_exactly(size)

    def _send(self, payload: bytes | bytearray) -> None:
        self.sock.sendall(_SIZE.pack(len(payload)) + payload)

    # -- requests -------------------------------------------------------------------

    def _answer(self, frame: bytearray) -> bytes | None:
        api_key, version, correlation_id = peek_request_ids(frame)
        api = schemas.APIS.get(api_key)
        if api is None or version not in api.request.versions:
            return self._unsupported(api_key, version, correlation_id)
        if self.state is not AuthState.AUTHENTICATED and api_key not in _PRE_AUTH:
            log.warning(
                "closing Kafka connection %s: api key %d before authentication", self.peer, api_key
            )
            raise _Closed
        flexible = api.request.is_flexible(version)
        header = read_request_header(frame, flexible)
        request = decode(api.request, version, frame, header.body_position)
        response = self._dispatch(api_key, version, request)
        if response is None:
            return None
        body = encode(api.response, version, response)
        # ApiVersions answers with header v0 at every version (KIP-511).
        head = response_header(correlation_id, flexible and api_key != schemas.API_VERSIONS)
        return head + body

    def _unsupported(self, api_key: int, version: int, correlation_id: int) -> bytes:
        log.info(
            "Kafka connection %s: api key %d version %d is not served", self.peer, api_key, version
        )
        if api_key == schemas.API_VERSIONS:
            body = encode(
                schemas.APIS[api_key].response,
                0,
                Handlers.api_versions(ErrorCode.UNSUPPORTED_VERSION),
            )
        else:
            body = bytearray(_ERROR_ONLY.pack(ErrorCode.UNSUPPORTED_VERSION))
        return response_header(correlation_id, False) + body

    def _dispatch(self, api_key: int, version: int, request: dict[str, Any]) -> Any:
        h = self.listener.handlers
        if api_key == schemas.PRODUCE:
            response = h.produce(self.handles, version, request)
            if request["acks"] == 0:
                if h.failed(response):
                    log.info("closing Kafka connection %s: an acks=0 produce failed", self.peer)
                    raise _Closed
                return None
            return response
        if api_key == schemas.FETCH:
            return h.fetch(self.handles, version, request)
        if api_key == schemas.LIST_OFFSETS:
            return h.list_offsets(self.handles, version, request)
        if api_key == schemas.METADATA:
            return h.metadata(version, request)
        if api_key == schemas.API_VERSIONS:
            return h.api_versions(request=request if version >= 3 else None)
        if api_key == schemas.FIND_COORDINATOR:
            return h.find_coordinator(version, request)
        if api_key == schemas.INIT_PRODUCER_ID:
            if request["transactional_id"] is not None:
                return h.transactions.init_producer_id(self.txn_view(), version, request)
            return h.init_producer_id(version, request)
        if api_key in _ADMIN:
            return _ADMIN[api_key](self.listener.admin, version, request)
        if api_key == schemas.DELETE_RECORDS:
            return self.listener.admin.delete_records(self.handles, version, request)
        if api_key == schemas.OFFSET_FOR_LEADER_EPOCH:
            return self.listener.admin.offset_for_leader_epoch(self.handles, version, request)
        if api_key == schemas.ADD_PARTITIONS_TO_TXN:
            return h.transactions.add_partitions(self.txn_view(), version, request)
        if api_key == schemas.ADD_OFFSETS_TO_TXN:
            return h.transactions.add_offsets(self.txn_view(), version, request)
        if api_key == schemas.END_TXN:
            return h.transactions.end_txn(self.txn_view(), version, request)
        if api_key == schemas.TXN_OFFSET_COMMIT:
            return h.transactions.txn_offset_commit(version, request)
        if api_key == schemas.SASL_HANDSHAKE:
            return self._sasl_handshake(version, request)
        if api_key == schemas.SASL_AUTHENTICATE:
            return self._sasl_authenticate(request)
        raise AssertionError(f"api key {api_key} is in APIS but not dispatched")

    # -- SASL -----------------------------------------------------------------------

    def _sasl_handshake(self, version: int, request: dict[str, Any]) -> dict[str, Any]:
        offered = list(MECHANISMS) if self.listener.auth is KafkaAuth.SASL else []
        if self.state is not AuthState.HANDSHAKE:
            return {"error_code": ErrorCode.ILLEGAL_SASL_STATE, "mechanisms": offered}
        mechanism = self.listener.mechanism(request["mechanism"])
        if mechanism is None:
            return {"error_code": ErrorCode.UNSUPPORTED_SASL_MECHANISM, "mechanisms": offered}
        self.mechanism = mechanism
        self.state = AuthState.RAW_TOKENS if version == 0 else AuthState.AUTHENTICATING
        return {"mechanisms": offered}

    def _sasl_authenticate(self, request: dict[str, Any]) -> dict[str, Any]:
        if self.state is not AuthState.AUTHENTICATING or self.mechanism is None:
            log.warning("Kafka connection %s: SaslAuthenticate out of order", self.peer)
            self._close_after_reply()
            return {
                "error_code": ErrorCode.ILLEGAL_SASL_STATE,
                "error_message": "SaslAuthenticate before a SaslHandshake",
            }
        try:
            reply = self.mechanism.step(bytes(request["auth_bytes"]))
        except SaslFailure as exc:
            log.warning(
                "Kafka connection %s: authentication failed (%s): %s",
                self.peer,
                self.mechanism.name,
                exc,
            )
            self._close_after_reply()
            return {"error_code": ErrorCode.SASL_AUTHENTICATION_FAILED, "error_message": str(exc)}
        if self.mechanism.done:
            self.state = AuthState.AUTHENTICATED
        return {"auth_bytes": reply}

    def _close_after_reply(self) -> None:
        """The reply is sent, then the connection closed (a failed authentication)."""
        self.state = AuthState.HANDSHAKE
        self._close_after = True

    def _raw_token(self, token: bytearray) -> bytes:
        """A SaslHandshake v0 client's bare token: the bare answer (a failure closes)."""
        assert self.mechanism is not None
        try:
            reply = self.mechanism.step(bytes(token))
        except SaslFailure:
            log.warning(
                "Kafka connection %s: authentication failed (%s)", self.peer, self.mechanism.name
            )
            raise _Closed from None
        if self.mechanism.done:
            self.state = AuthState.AUTHENTICATED
        return reply


def registration(listener: KafkaListener | None) -> dict[str, Any]:
    """The fields of a broker registration (``/brokers/ids/<id>``) that name its Kafka
    endpoint, as Kafka's brokers write them (BrokerIdZNode): ``endpoints`` and the
    listener's security protocol; ``host`` and ``port`` name the PLAINTEXT endpoint
    only (null and -1 when there is none, for clients older than endpoints)."""
    if listener is None:
        return {"host": None, "port": -1, "endpoints": [],
                "listener_security_protocol_map": {}}  # fmt: skip
    protocol = listener.security_protocol
    plaintext = protocol == "PLAINTEXT"
    return {
        "host": HOST if plaintext else None,
        "port": listener.port if plaintext else -1,
        "endpoints": [f"{protocol}://{HOST}:{listener.port}"],
        "listener_security_protocol_map": {protocol: protocol},
        "jmx_port": -1,
        "features": {},
    }
