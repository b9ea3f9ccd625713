"""Who may use the Kafka listener: the data dir's credential, and SASL PLAIN and SCRAM-SHA-256.

The listener's port is on 127.0.0.1, open to every local user, so by default a client
authenticates with SASL (Kafka's SASL_PLAINTEXT security protocol) using the one
credential of the data dir::

    <data dir>/kafka.credentials    {"version": 1, "username": "engine", "password": ...}

made at the daemon's first start (0600, random password, never replaced), readable
only by the data dir's owner, who finds it in ``engine status --json``. ``engine start
--kafka-auth none`` opens the listener without authentication (Kafka's PLAINTEXT).

Mechanisms, server side, as Kafka's brokers run them:

- PLAIN (RFC 4616): one token, ``authzid NUL username NUL password``; the authzid is
  empty or the username.
- SCRAM-SHA-256 (RFC 5802, RFC 7677; Kafka's KIP-84): client-first ``n,,n=user,r=cnonce``;
  server-first ``r=cnonce+snonce,s=salt,i=4096``; client-final ``c=biws,r=nonce,p=proof``,
  checked against the stored key (H(HMAC(SaltedPassword, "Client Key"))); server-final
  ``v=ServerSignature``. The salted password is derived once per listener, with a random
  salt. No channel binding, no extensions but Kafka's ignored ones.

Every failure is :class:`SaslFailure`, whose message the client gets in the
SaslAuthenticate response before the connection closes; it never says which of the user
name and the password was wrong.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from engine.datadir import DataDir, fsync_directory
from engine.errors import AuthorizationError, EngineError

__all__ = [
    "CREDENTIAL_FILE",
    "MECHANISMS",
    "Credential",
    "KafkaAuth",
    "Plain",
    "SaslFailure",
    "ScramSha256",
    "ensure_credential",
    "read_credential",
]

CREDENTIAL_FILE = "kafka.credentials"
USERNAME = "engine"
PASSWORD_BYTES = 24
SCRAM_ITERATIONS = 4096  # Kafka's least for SCRAM-SHA-256
MECHANISMS = ("SCRAM-SHA-256", "PLAIN")


class KafkaAuth(enum.Enum):
    """How clients of the Kafka listener authenticate (``engine start --kafka-auth``)."""

    SASL = "sasl"
    """SASL (SCRAM-SHA-256 or PLAIN) with the data dir's credential: SASL_PLAINTEXT."""
    NONE = "none"
    """No authentication: PLAINTEXT, anyone who can reach 127.0.0.1 reads and writes."""

    @property
    def security_protocol(self) -> str:
        """Kafka's name for it, the listener's name in the broker registration."""
        return "SASL_PLAINTEXT" if self is KafkaAuth.SASL else "PLAINTEXT"


class SaslFailure(EngineError):
    """A SASL exchange failed: wrong credentials, or a token out of form."""


@dataclass(frozen=True)
class Credential:
    username: str
    password: str


def _path(data_dir: DataDir) -> Path:
    return data_dir.root / CREDENTIAL_FILE


def ensure_credential(data_dir: DataDir) -> Credential:
    """The data dir's credential, made if there is none yet (the daemon, at its start):
    written under a temporary name (0600), then hard-linked into place, which fails if
    one exists, so a credential once made is never replaced."""
    path = _path(data_dir)
    if not path.exists():
        body = {
            "version": 1,
            "username": USERNAME,
            "password": secrets.token_urlsafe(PASSWORD_BYTES),
        }
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, (json.dumps(body) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another start made it first: that one stands
        finally:
            tmp.unlink()
        fsync_directory(data_dir.root)
    return read_credential(data_dir)


def read_credential(data_dir: DataDir) -> Credential:
    """The data dir's credential; AuthorizationError when it cannot be read (another
    user's data dir, or none made yet)."""
    path = _path(data_dir)
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
        return Credential(str(body["username"]), str(body["password"]))
    except PermissionError:
        raise data_dir.not_yours() from None
    except FileNotFoundError:
        raise AuthorizationError(
            f"the data dir has no Kafka credential: path={path}: restart the daemon "
            f"(`engine stop --data-dir {data_dir.root}`, then `{data_dir.start_command()}`) "
            "to make it"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise AuthorizationError(f"cannot read the Kafka credential: path={path} ({exc})") from None


_FAILED = "Authentication failed: invalid credentials with SASL mechanism {}"


class Plain:
    """The server side of SASL PLAIN: one token, one answer (empty)."""

    name = "PLAIN"

    def __init__(self, credential: Credential) -> None:
        self._credential = credential
        self.done = False

    def step(self, token: bytes) -> bytes:
        parts = token.split(b"\x00")
        if len(parts) != 3:
            raise SaslFailure("Invalid SASL/PLAIN token: expected authzid NUL user NUL password")
        authzid, user, password = parts
        ok = hmac.compare_digest(user, self._credential.username.encode()) & hmac.compare_digest(
            password, self._credential.password.encode()
        )
        if not ok or (authzid and authzid != user):
            raise SaslFailure(_FAILED.format(self.name))
        self.done = True
        return b""


@dataclass(frozen=True)
class ScramKeys:
    """What a SCRAM server keeps of a password (RFC 5802 section 3)."""

    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes

    @classmethod
    def derive(cls, password: str, iterations: int = SCRAM_ITERATIONS) -> ScramKeys:
        salt = secrets.token_bytes(16)
        salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
        client_key = _hmac(salted, b"Client Key")
        return cls(
            salt, iterations, hashlib.sha256(client_key).digest(), _hmac(salted, b"Server Key")
        )


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def _attributes(message: bytes) -> dict[str, str]:
    """``a=1,b=2`` as {"a": "1", "b": "2"}; SaslFailure when not of that form."""
    out: dict[str, str] = {}
    try:
        text = message.decode("utf-8")
    except UnicodeDecodeError:
        raise SaslFailure("Invalid SCRAM message: not UTF-8") from None
    for part in text.split(","):
        key, eq, value = part.partition("=")
        if not eq or len(key) != 1:
            raise SaslFailure(f"Invalid SCRAM message: attribute {part!r}")
        out.setdefault(key, value)
    return out


class ScramSha256:
    """The server side of SCRAM-SHA-256: client-first -> server-first, client-final ->
    server-final (module docstring)."""

    name = "SCRAM-SHA-256"

    def __init__(self, credential: Credential, keys: ScramKeys) -> None:
        self._credential = credential
        self._keys = keys
        self._first: tuple[bytes, bytes, str] | None = None  # (gs2 header, bare, nonce)
        self._server_first = b""
        self._user_ok = False
        self.done = False

    def step(self, token: bytes) -> bytes:
        if self._first is None:
            return self._client_first(token)
        return self._client_final(token)

    def _client_first(self, token: bytes) -> bytes:
        # gs2-header: "n,," or "n,a=authzid," (no channel binding: "y" or "p" refused).
        flag, _, rest = token.partition(b",")
        authzid, _, bare = rest.partition(b",")
        if flag != b"n" or not bare:
            raise SaslFailure(
                "Invalid SCRAM client-first message: channel binding is not supported"
            )
        attrs = _attributes(bare)
        user = attrs.get("n", "").replace("=2C", ",").replace("=3D", "=")
        client_nonce = attrs.get("r", "")
        if not client_nonce or "m" in attrs:
            raise SaslFailure("Invalid SCRAM client-first message: no nonce")
        if authzid and authzid.decode("utf-8", "replace")[2:] != user:
            raise SaslFailure(_FAILED.format(self.name))
        # A wrong user name fails only at the proof, as a wrong password does.
        self._user_ok = hmac.compare_digest(user.encode(), self._credential.username.encode())
        nonce = client_nonce + secrets.token_urlsafe(18)
        self._first = (token[: len(token) - len(bare)], bare, nonce)
        keys = self._keys
        self._server_first = (
            f"r={nonce},s={base64.b64encode(keys.salt).decode()},i={keys.iterations}".encode()
        )
        return self._server_first

    def _client_final(self, token: bytes) -> bytes:
        assert self._first is not None
        if self.done:
            raise SaslFailure("Invalid SCRAM exchange: already authenticated")
        gs2_header, bare, nonce = self._first
        without_proof, sep, proof_part = token.rpartition(b",p=")
        attrs = _attributes(without_proof)
        # Kafka's broker checks that the client's nonce ends with the server-first one
        # (ScramSaslServer): librdkafka sends its own nonce in front of the whole of it.
        if not sep or not attrs.get("r", "").endswith(nonce):
            raise SaslFailure("Invalid SCRAM client-final message: nonce mismatch")
        if attrs.get("c") != base64.b64encode(gs2_header).decode():
            raise SaslFailure("Invalid SCRAM client-final message: channel binding mismatch")
        try:
            proof = base64.b64decode(proof_part, validate=True)
        except ValueError:
            raise SaslFailure("Invalid SCRAM client-final message: proof is not base64") from None
        auth_message = bare + b"," + self._server_first + b"," + without_proof
        keys = self._keys
        signature = _hmac(keys.stored_key, auth_message)
        if len(proof) != len(signature):
            raise SaslFailure(_FAILED.format(self.name))
        client_key = bytes(a ^ b for a, b in zip(proof, signature, strict=True))
        proof_ok = hmac.compare_digest(hashlib.sha256(client_key).digest(), keys.stored_key)
        if not (proof_ok and self._user_ok):
            raise SaslFailure(_FAILED.format(self.name))
        self.done = True
        server_signature = _hmac(keys.server_key, auth_message)
        return b"v=" + base64.b64encode(server_signature)
