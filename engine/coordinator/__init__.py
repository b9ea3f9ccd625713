"""The coordinator: a ZooKeeper-compatible server (one process, asyncio, durable).

Modules, one concept each: ``jute`` (the wire format), ``tree`` (znodes, ACLs and
transactions), ``session`` (sessions and expiry), ``watch`` (watches), ``txnlog``
(transaction log, snapshots, recovery), ``server`` (TCP server and request handling).

Run it with ``python -m engine.coordinator --data-dir DIR [--port-file FILE]``, or from
Python with :func:`engine.coordinator.server.serve` or :func:`main`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Sequence

from engine.errors import ConfigError, DaemonAlreadyRunningError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m engine.coordinator",
        description="A ZooKeeper-compatible coordinator for the engine.")
    parser.add_argument("--data-dir", required=True, help="transaction log and snapshots")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=0, help="port (0 picks a free one)")
    parser.add_argument("--port-fallback", action="store_true",
                        help="if --port is taken, listen on a free one instead of failing")
    parser.add_argument("--port-file", help="write the bound port here once listening")
    parser.add_argument("--tick-ms", type=int, default=None,
                        help="how often expired sessions are looked for (default 200)")
    parser.add_argument("--min-session-timeout-ms", type=int, default=None,
                        help="the shortest session timeout granted (default 2 ticks)")
    parser.add_argument("--max-session-timeout-ms", type=int, default=None,
                        help="the longest session timeout granted (default 20 ticks or "
                        "40000, whichever is longer)")
    parser.add_argument("--snapshot-every", type=int, default=10000,
                        help="transactions between snapshots")
    parser.add_argument("--log-level", default="INFO", help="logging level for stderr")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, run until SIGTERM/SIGINT, return the exit code."""
    from engine.coordinator.server import serve
    from engine.coordinator.session import SessionLimits

    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logger = logging.getLogger("engine.coordinator")
    if args.snapshot_every <= 0:
        logger.error("the snapshot interval must be positive: snapshot_every=%d",
                     args.snapshot_every)
        return 2
    try:
        limits = SessionLimits.of(args.tick_ms, args.min_session_timeout_ms,
                                  args.max_session_timeout_ms)
    except ConfigError as exc:
        logger.error("%s", exc)
        return 2
    try:
        return asyncio.run(serve(args.data_dir, args.host, args.port, args.port_file,
                                 limits, args.snapshot_every,
                                 port_fallback=args.port_fallback))
    except DaemonAlreadyRunningError as exc:
        logger.error("%s", exc)
        return 1
