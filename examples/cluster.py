"""Where the examples run: the engine on this machine, or any Kafka cluster.

Every example takes ``--data-dir`` (the engine's data dir; by default the engine's
own default) or ``--bootstrap-servers host:port,...`` (a Kafka cluster: the engine's
Producer, Consumer and Admin then run there through confluent-kafka, unchanged). The
cluster's login: ``--security-protocol``, ``--sasl-mechanism``, ``--sasl-username``,
and the password from ENGINE_SASL_PASSWORD only (a command line is visible to every
local user). Each option also has its environment variable: ENGINE_BOOTSTRAP_SERVERS,
ENGINE_SECURITY_PROTOCOL, ENGINE_SASL_MECHANISM, ENGINE_SASL_USERNAME.

    ENGINE_SASL_PASSWORD=... python examples/orders.py --bootstrap-servers 127.0.0.1:9092 \\
        --security-protocol SASL_PLAINTEXT --sasl-mechanism SCRAM-SHA-256 --sasl-username engine
"""

from __future__ import annotations

import argparse
import os
from typing import Any

_KAFKA = ("bootstrap_servers", "security_protocol", "sasl_mechanism", "sasl_username")


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """--data-dir, and the Kafka cluster's options (defaults from the environment)."""
    ap.add_argument("--data-dir", default=None, help="the engine's data dir")
    for name in _KAFKA:
        env = f"ENGINE_{name.upper()}"
        ap.add_argument(
            f"--{name.replace('_', '-')}",
            default=os.environ.get(env) or None,
            help=f"a Kafka cluster's {name.replace('_', ' ')} (default: ${env})",
        )


def where(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments that put a Producer, Consumer or Admin where ``args`` say."""
    if args.bootstrap_servers is None:
        return {"data_dir": args.data_dir}
    options = {name: getattr(args, name) for name in _KAFKA if getattr(args, name)}
    password = os.environ.get("ENGINE_SASL_PASSWORD")
    if password:
        options["sasl_password"] = password
    return options
