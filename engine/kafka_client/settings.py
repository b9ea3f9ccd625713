"""Where a Kafka cluster is and how to log in: the connection options, checked once.

:class:`Connection` takes the connection options out of the keyword arguments of
``Producer``, ``Consumer`` or ``Admin`` (the rest are the class's own options, checked
by its own validator) and turns them into librdkafka's settings. librdkafka's log lines
go to the ``engine.kafka_client`` logger (a library never prints).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.errors import ConfigError, UnsupportedOnKafkaError

log = logging.getLogger("engine.kafka_client")

#: The options that select a Kafka cluster and log in to it.
CONNECTION_OPTIONS = (
    "bootstrap_servers",
    "security_protocol",
    "sasl_mechanism",
    "sasl_username",
    "sasl_password",
    "kafka_config",
)
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "GSSAPI", "OAUTHBEARER")


def wants_kafka(options: Mapping[str, Any]) -> bool:
    """Whether a constructor's keyword arguments name a Kafka cluster."""
    return options.get("bootstrap_servers") is not None


@dataclass(frozen=True)
class Connection:
    """A Kafka cluster's address and credential (``sasl_password`` is kept out of repr)."""

    bootstrap_servers: str
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    kafka_config: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def take(cls, options: dict[str, Any], data_dir: object = None) -> Connection:
        """Remove the connection options from ``options`` and check them; ConfigError
        (one line naming the option) when one is wrong, or when a data dir is given too."""
        given = {name: options.pop(name) for name in CONNECTION_OPTIONS if name in options}
        if data_dir is not None:
            raise ConfigError(
                "give data_dir (the engine on this machine) or bootstrap_servers (a Kafka "
                f"cluster), not both: data_dir={str(data_dir)!r} "
                f"bootstrap_servers={given.get('bootstrap_servers')!r}"
            )
        servers = given.get("bootstrap_servers")
        if isinstance(servers, (list, tuple)):
            servers = ",".join(str(s) for s in servers)
        if not isinstance(servers, str) or not servers.strip():
            raise ConfigError(
                "bootstrap_servers must be 'host:port[,host:port...]': "
                f"bootstrap_servers={servers!r}"
            )
        protocol = given.get("security_protocol") or "PLAINTEXT"
        if not isinstance(protocol, str) or protocol.upper() not in SECURITY_PROTOCOLS:
            raise ConfigError(
                f"security_protocol must be one of {SECURITY_PROTOCOLS}: "
                f"security_protocol={protocol!r}"
            )
        protocol = protocol.upper()
        mechanism = given.get("sasl_mechanism")
        sasl = {k: given.get(k) for k in ("sasl_mechanism", "sasl_username", "sasl_password")}
        for name, value in sasl.items():
            if value is not None and (not isinstance(value, str) or not value):
                shown = "(hidden)" if name == "sasl_password" else repr(value)
                raise ConfigError(f"{name} must be a non-empty str: {name}={shown}")
        if protocol.startswith("SASL"):
            if mechanism is None:
                mechanism = "PLAIN"
            if mechanism.upper() not in SASL_MECHANISMS:
                raise ConfigError(
                    f"sasl_mechanism must be one of {SASL_MECHANISMS}: sasl_mechanism={mechanism!r}"
                )
            mechanism = mechanism.upper()
        elif any(v is not None for v in sasl.values()):
            named = next(k for k, v in sasl.items() if v is not None)
            raise ConfigError(
                f"{named} needs security_protocol SASL_PLAINTEXT or SASL_SSL: "
                f"security_protocol={protocol!r}"
            )
        extra = given.get("kafka_config") or {}
        if not isinstance(extra, Mapping) or not all(isinstance(k, str) for k in extra):
            raise ConfigError(
                "kafka_config must be a dict of librdkafka settings (str keys): "
                f"kafka_config={type(extra).__name__}"
            )
        return cls(
            servers.strip(),
            protocol,
            mechanism if protocol.startswith("SASL") else None,
            sasl["sasl_username"],
            sasl["sasl_password"],
            dict(extra),
        )

    def librdkafka(
        self, settings: Mapping[str, Any], health: ClientHealth | None = None
    ) -> dict[str, Any]:
        """librdkafka's configuration: the connection, then ``settings`` (the class's
        own options, translated), then ``kafka_config``, which has the last word.
        ``health`` receives the client-wide errors."""
        config: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.security_protocol,
            "logger": log,
            "error_cb": health if health is not None else ClientHealth(),
        }
        if self.sasl_mechanism is not None:
            config["sasl.mechanism"] = self.sasl_mechanism
        if self.sasl_username is not None:
            config["sasl.username"] = self.sasl_username
        if self.sasl_password is not None:
            config["sasl.password"] = self.sasl_password
        config.update(settings)
        config.update(self.kafka_config)
        return config


class ClientHealth:
    """librdkafka's client-wide errors (a broker down, a failed login; its error_cb),
    logged. librdkafka retries by itself, and a call that needed the cluster fails
    with a transport error or a timeout: ``auth_error``, the last failed login, lets
    engine.kafka_client.errors name the real cause (AuthorizationError)."""

    def __init__(self) -> None:
        self.auth_error: Any = None

    def __call__(self, error: Any) -> None:
        if error.code() == -169:  # KafkaError._AUTHENTICATION
            self.auth_error = error
        log.info("kafka client: %s", error)


def refuse(option: str, what: str) -> UnsupportedOnKafkaError:
    """The error for an engine-only option or method used on a Kafka cluster."""
    return UnsupportedOnKafkaError(
        f"{what} exists only on the engine's own cluster (data_dir), not on a Kafka "
        f"cluster (bootstrap_servers): {option}"
    )
