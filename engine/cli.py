"""The ``engine`` command line (also ``python -m engine``).

Exit codes: 0 done; 1 an engine error, printed as one line ``engine: <message>``;
2 a usage error (argparse's usage line and message); 130 interrupted (Ctrl-C);
141 (128 + SIGPIPE) the reader of standard output went away, as in
``engine consume t | head -1``: the command stops quietly, as ``git log | head`` does.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import os
import signal
import sys
import time
from typing import TYPE_CHECKING, Any

from engine.datadir import DataDir

if TYPE_CHECKING:
    from engine.consumer import Consumer
    from engine.coordinator.session import SessionLimits


def _add_data_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir",
        default=None,
        help="the daemon's data dir (default: $ENGINE_DATA_DIR, else ~/.local/state/engine)",
    )


def version() -> str:
    """The installed distribution's version; the package's own from a bare checkout."""
    try:
        return importlib.metadata.version("engine")
    except importlib.metadata.PackageNotFoundError:
        from engine import __version__

        return __version__


def _needs_action(
    parser: argparse.ArgumentParser, dest: str, sub: argparse._SubParsersAction[Any]
) -> None:
    """Mark ``parser`` as needing one of ``sub``'s choices (checked by parse_args).

    Subcommands are not ``required=True``: argparse checks required arguments before
    it reports unrecognized ones, so `engine --bogus` would say "the following arguments
    are required: COMMAND" instead of naming --bogus."""
    parser.set_defaults(_needs=(dest, parser, sub))


def parse_args(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    args = parser.parse_args(argv)
    dest, owner, sub = args._needs
    if getattr(args, dest) is None:
        owner.error(f"{sub.metavar} is required: one of {', '.join(sub.choices)}")
    del args._needs
    return args


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="engine",
        description="A single-host streaming engine: Kafka and ZooKeeper for one box.",
    )
    parser.add_argument("--version", action="version", version=f"engine {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _needs_action(parser, "command", sub)

    p = sub.add_parser("start", help="start the coordinator and the brokers")
    _add_data_dir(p)
    p.add_argument("--brokers", type=int, default=3, help="number of broker processes (default 3)")
    p.add_argument("--foreground", action="store_true", help="run in this terminal")
    p.add_argument(
        "--coordinator",
        default=None,
        help="use this ZooKeeper ensemble (HOST:PORT,...) instead of starting one",
    )
    p.add_argument(
        "--tick-ms",
        type=int,
        default=None,
        help="the built-in coordinator's tick: sessions are checked for expiry once a "
        "tick (default 200)",
    )
    p.add_argument(
        "--min-session-timeout-ms",
        type=int,
        default=None,
        help="the shortest session timeout the built-in coordinator grants (default 2 ticks)",
    )
    p.add_argument(
        "--max-session-timeout-ms",
        type=int,
        default=None,
        help="the longest session timeout the built-in coordinator grants (default 20 "
        "ticks or 40000, whichever is longer)",
    )

    p.add_argument(
        "--auto-create-topics",
        action="store_true",
        help="create an unknown topic on first use (Kafka's auto.create.topics.enable); "
        "off by default",
    )
    p.add_argument(
        "--num-partitions", type=int, default=1, help="partitions of auto-created topics"
    )
    p.add_argument(
        "--shm-budget",
        default=None,
        metavar="SIZE",
        help="shared memory all partition rings may take together (512M, 4G, bytes; "
        "default: half of /dev/shm, at most a quarter of the memory)",
    )

    p.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        metavar="PORT",
        help="serve Prometheus metrics on 127.0.0.1:PORT (default: the last run's port "
        "if free, else any; `engine status --json` says where)",
    )
    p.add_argument(
        "--kafka-port",
        type=int,
        default=None,
        metavar="BASE",
        help="broker N serves Kafka's protocol on 127.0.0.1:BASE+N-1 (default: any free port)",
    )
    p.add_argument(
        "--kafka-auth",
        choices=["sasl", "none"],
        default="sasl",
        help="Kafka clients authenticate with SASL (SCRAM-SHA-256 or PLAIN, the credential in "
        "engine status --json; the default), or not at all (none)",
    )

    p = sub.add_parser("stop", help="stop the daemon gracefully (flushes every partition)")
    _add_data_dir(p)

    p = sub.add_parser("status", help="brokers, topics, partitions, offsets")
    _add_data_dir(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser(
        "top", help="a live view: rates, lag, ISR, ring fill (from the metrics; q quits)"
    )
    _add_data_dir(p)
    p.add_argument(
        "--interval", type=float, default=1.0, help="seconds between refreshes (default 1)"
    )

    p = sub.add_parser("topics", help="create, list, describe, delete topics")
    tsub = p.add_subparsers(dest="topics_command", metavar="ACTION")
    _needs_action(p, "topics_command", tsub)
    c = tsub.add_parser("create", help="create a topic")
    _add_data_dir(c)
    c.add_argument("topic")
    c.add_argument("--partitions", type=int, default=1)
    c.add_argument("--replication", type=int, default=1)
    c.add_argument("--config", action="append", default=[], metavar="KEY=VALUE")
    c = tsub.add_parser("list", help="list topics")
    _add_data_dir(c)
    c = tsub.add_parser("describe", help="describe a topic")
    _add_data_dir(c)
    c.add_argument("topic")
    c.add_argument("--json", action="store_true")
    c = tsub.add_parser("delete", help="delete a topic and its data")
    _add_data_dir(c)
    c.add_argument("topic")
    c = tsub.add_parser(
        "add-partitions",
        help="add partitions to a topic, up to --count in all",
        description="New records with a key may go to another partition than before (the "
        "key's hash modulo the partition count), as in Kafka.",
    )
    _add_data_dir(c)
    c.add_argument("topic")
    c.add_argument("--count", type=int, required=True, help="the topic's partitions in all")
    c = tsub.add_parser(
        "delete-records",
        help="delete a topic's records before an offset (moves the log start offset)",
    )
    _add_data_dir(c)
    c.add_argument("topic")
    c.add_argument(
        "--offset", type=int, required=True, help="delete the records before it (-1: all "
        "records up to the high watermark)",
    )
    c.add_argument("--partition", type=int, default=None, help="only this partition")
    c = tsub.add_parser(
        "elect-leaders",
        help="move leadership back to each partition's preferred replica (the first of "
        "its replicas) where it is in the ISR",
    )
    _add_data_dir(c)
    c.add_argument("--topic", default=None, help="only this topic (default: every topic)")
    c.add_argument("--partition", type=int, default=None, help="only this partition")
    c = tsub.add_parser(
        "reassign",
        help="move a partition's replicas to other brokers while it is written and read",
    )
    _add_data_dir(c)
    c.add_argument("topic")
    c.add_argument("--partition", type=int, required=True)
    c.add_argument(
        "--replicas", required=True, metavar="ID,ID,...",
        help="the broker ids of its new replicas, the preferred leader first",
    )
    c = tsub.add_parser(
        "alter",
        help="set (--config) or delete (--delete-config) topic configs; the others stay",
        description="Applies to the running brokers at once. ring.bytes and "
        "max.message.bytes are fixed when the topic is created.",
    )
    _add_data_dir(c)
    c.add_argument("topic")
    c.add_argument("--config", action="append", default=[], metavar="KEY=VALUE")
    c.add_argument("--delete-config", action="append", default=[], metavar="KEY")

    p = sub.add_parser("produce", help="send each line of standard input as a record")
    _add_data_dir(p)
    p.add_argument("topic")
    p.add_argument("--key", default=None, help="the key of every record")
    p.add_argument("--partition", type=int, default=None)
    p.add_argument("--acks", default="1", choices=["0", "1", "all"])

    p = sub.add_parser("consume", help="print records to standard output")
    _add_data_dir(p)
    p.add_argument("topic")
    p.add_argument("--from-beginning", action="store_true")
    p.add_argument("--partition", type=int, default=None)
    p.add_argument(
        "--offset",
        type=int,
        default=None,
        help="start at this offset (of --partition, else of every partition); one past "
        "the log end or before the log start is refused",
    )
    p.add_argument("--max", type=int, default=None, help="exit after this many records")
    p.add_argument("--timeout", type=float, default=None, help="exit after this many idle seconds")
    p.add_argument("--print-key", action="store_true")
    p.add_argument("--print-offset", action="store_true")
    p.add_argument(
        "--group",
        default=None,
        help="consume as a member of this consumer group; its offsets are committed on exit",
    )

    p = sub.add_parser(
        "groups", help="list, describe, delete consumer groups; reset their offsets"
    )
    gsub = p.add_subparsers(dest="groups_command", metavar="ACTION")
    _needs_action(p, "groups_command", gsub)
    c = gsub.add_parser("list", help="list consumer groups")
    _add_data_dir(c)
    c = gsub.add_parser(
        "describe", help="members, assignment, committed offset, log end offset, lag"
    )
    _add_data_dir(c)
    c.add_argument("group")
    c.add_argument("--json", action="store_true", help="machine-readable output")
    c = gsub.add_parser(
        "delete", help="delete a group without members and its committed offsets"
    )
    _add_data_dir(c)
    c.add_argument("group")
    c = gsub.add_parser(
        "reset-offsets",
        help="show, and with --execute set, a group's committed offsets (only without "
        "live members)",
        description="Prints the plan: per partition, the committed offset and the new one. "
        "Nothing changes unless --execute is given (--dry-run, the default, as in Kafka's "
        "kafka-consumer-groups.sh). The group must exist.",
    )
    _add_data_dir(c)
    c.add_argument("group")
    c.add_argument("--topic", required=True)
    target = c.add_mutually_exclusive_group(required=True)
    target.add_argument("--to-earliest", action="store_true", help="the log start offset")
    target.add_argument("--to-latest", action="store_true", help="the log end offset")
    target.add_argument(
        "--to-offset",
        type=int,
        default=None,
        metavar="N",
        help="N, clamped into [log start, log end] with a warning per partition",
    )
    mode = c.add_mutually_exclusive_group()
    mode.add_argument("--execute", action="store_true", help="set the offsets")
    mode.add_argument(
        "--dry-run", action="store_true", help="only show the plan (the default)"
    )

    p = sub.add_parser(
        "verify",
        help="check every log's batches (CRC, offsets) and indexes; repair from a replica",
    )
    _add_data_dir(p)
    p.add_argument("--topic", default=None, help="only this topic's logs")
    p.add_argument(
        "--repair",
        action="store_true",
        help="repair what is found from an intact replica (the daemon must be stopped)",
    )

    p = sub.add_parser("demo", help="a small IoT fleet: producers and a consumer, with figures")
    _add_data_dir(p)
    p.add_argument("--devices", type=int, default=1000)
    p.add_argument("--producers", type=int, default=4)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--rate", type=float, default=50_000, help="readings/s of the whole fleet")

    p = sub.add_parser("bench", help="the benchmark suite (from a source checkout)")
    p.add_argument("args", nargs=argparse.REMAINDER, help="passed to bench/suite.py")
    _add_coord_parser(sub)
    return parser


def _add_coord_parser(sub: argparse._SubParsersAction[Any]) -> None:
    """``engine coord``: a zkCli-like look at the coordinator's tree (engine/coordination/
    shell.py), authenticated as the data dir's owner."""
    p = sub.add_parser(
        "coord", help="the coordinator's tree: ls, get, set, rm, watch; locks and leaders"
    )
    csub = p.add_subparsers(dest="coord_command", metavar="ACTION")
    _needs_action(p, "coord_command", csub)
    c = csub.add_parser("ls", help="a znode's children (-R: every path below it)")
    _add_data_dir(c)
    c.add_argument("path", nargs="?", default="/")
    c.add_argument("-R", dest="recursive", action="store_true", help="the whole subtree")
    c = csub.add_parser("get", help="a znode's data (UTF-8, else escaped)")
    _add_data_dir(c)
    c.add_argument("path")
    c.add_argument("--stat", action="store_true", help="and its stat, as zkCli shows it")
    c = csub.add_parser("set", help="set a znode's data; creates it (and parents) if missing")
    _add_data_dir(c)
    c.add_argument("path")
    c.add_argument("data")
    c.add_argument("--version", type=int, default=None, help="only if at this data version")
    c = csub.add_parser("rm", help="delete a znode")
    _add_data_dir(c)
    c.add_argument("path")
    c.add_argument("-r", dest="recursive", action="store_true", help="and everything below")
    c.add_argument("--version", type=int, default=None, help="only if at this data version")
    c = csub.add_parser("watch", help="a znode's data (or children) now and at each change")
    _add_data_dir(c)
    c.add_argument("path")
    c.add_argument("--children", action="store_true", help="its children, not its data")
    c.add_argument("--count", type=int, default=None, metavar="N", help="stop after N lines")
    c = csub.add_parser("locks", help="each Lock and LeaseLock: its holder and waiters")
    _add_data_dir(c)
    c = csub.add_parser("leader", help="each election's leader and candidates (or NAME's)")
    _add_data_dir(c)
    c.add_argument("name", nargs="?", default=None)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:
        # Every argument after it is the suite's own, options first included
        # (argparse's REMAINDER does not take `engine bench --quick`).
        return cmd_bench(argparse.Namespace(command="bench", args=argv[1:]))
    args = parse_args(build_parser(), argv)
    from engine.errors import EngineError

    try:
        code = int(_COMMANDS[args.command](args) or 0)
        sys.stdout.flush()  # a reader that went away shows here, not at the exit's flush
        return code
    except EngineError as exc:
        print(f"engine: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # What is still buffered for standard output goes to /dev/null, so that the
        # interpreter's flush at exit does not fail again (Python's documented recipe).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 128 + signal.SIGPIPE


def cmd_start(args: argparse.Namespace) -> int:
    from engine import daemon

    dd = DataDir.resolve(args.data_dir)
    if args.brokers < 1:
        print("engine: --brokers must be at least 1", file=sys.stderr)
        return 2
    if args.num_partitions < 1:
        print("engine: --num-partitions must be at least 1", file=sys.stderr)
        return 2
    cluster: dict[str, Any] = {
        "auto.create.topics.enable": args.auto_create_topics,
        "num.partitions": args.num_partitions,
    }
    if args.shm_budget is not None:
        from engine import shm

        cluster[shm.BUDGET_KEY] = shm.check_budget(shm.parse_size(args.shm_budget))
    from engine.kafka.sasl import KafkaAuth

    if args.kafka_port is not None and not 0 < args.kafka_port < 65536:
        print(f"engine: --kafka-port must be a port number: {args.kafka_port}", file=sys.stderr)
        return 2
    kafka = {"kafka_port": args.kafka_port, "kafka_auth": KafkaAuth(args.kafka_auth)}
    limits = _session_limits(args)
    if args.foreground:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s daemon %(levelname)s %(name)s: %(message)s"
        )
        logging.getLogger("engine.kazoo").setLevel(logging.WARNING)
        return daemon.Daemon(
            dd, args.brokers, args.coordinator, cluster, limits,
            metrics_port=args.metrics_port, **kafka,
        ).run()
    t0 = time.monotonic()
    info = daemon.start_background(
        dd, args.brokers, args.coordinator, cluster, limits,
        metrics_port=args.metrics_port, **kafka,
    )
    print(
        f"engine started in {time.monotonic() - t0:.2f} s: data dir {dd.root}, coordinator "
        f"{info['coordinator']}, brokers {info['brokers']} (logs in {dd.log_dir})"
    )
    return 0


def _session_limits(args: argparse.Namespace) -> SessionLimits | None:
    """The built-in coordinator's tick and session timeout range given to `engine start`
    (None when none was); ConfigError when they do not fit, or come with --coordinator."""
    from engine.coordinator.session import SessionLimits
    from engine.errors import ConfigError

    given = (args.tick_ms, args.min_session_timeout_ms, args.max_session_timeout_ms)
    if all(value is None for value in given):
        return None
    if args.coordinator is not None:
        raise ConfigError(
            "--tick-ms and --min/--max-session-timeout-ms set the built-in coordinator; "
            "an external ZooKeeper has tickTime, minSessionTimeout and maxSessionTimeout "
            f"in its zoo.cfg: coordinator={args.coordinator}"
        )
    return SessionLimits.of(*given)


def cmd_stop(args: argparse.Namespace) -> int:
    from engine import daemon

    dd = DataDir.resolve(args.data_dir)
    if daemon.stop(dd):
        print(f"engine stopped: data dir {dd.root}")
        return 0
    cleaned = daemon.clean_up_after_crash(dd)
    left = ""
    if cleaned.rings:
        left = (
            f"; drained the {cleaned.rings} rings it left ({cleaned.records} offsets) into "
            "their logs and removed them"
        )
    print(f"engine was not running: data dir {dd.root}{left}")
    return 0


def status_report(data_dir: str | None) -> dict[str, Any]:
    from engine import metadata as md
    from engine.admin import Admin

    dd = DataDir.resolve(data_dir)
    info = dd.read_runtime()
    with Admin(data_dir) as admin:
        zk = admin._cluster.zk
        topics: list[dict[str, Any]] = []
        for name in admin.list_topics():
            try:
                d = admin.describe_topic(name)
            except Exception as exc:  # noqa: BLE001 - one broken topic must not hide the rest
                topics.append({"name": name, "error": str(exc)})
                continue
            topics.append(
                {
                    "name": d.name,
                    "topic_id": d.topic_id,
                    "config": d.config,
                    "partitions": [
                        p.__dict__ | {"replicas": list(p.replicas), "isr": list(p.isr)}
                        for p in d.partitions
                    ],
                }
            )
        return {
            "data_dir": str(dd.root),
            "daemon_pid": info["pid"],
            "coordinator": info["coordinator"],
            "processes": info.get("processes", {}),
            "metrics": info.get("metrics"),
            "controller": md.controller_id(zk),
            "brokers": {str(k): v for k, v in sorted(md.live_brokers(zk).items())},
            "shm": {"budget_bytes": md.shm_budget(zk), "used_bytes": md.shm_used(zk)},
            "topics": topics,
            "kafka": kafka_connection(dd, md.live_brokers(zk)),
        }


def kafka_connection(dd: DataDir, brokers: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """How a Kafka client connects (the brokers' registered endpoints, and the data dir's
    credential when they authenticate with SASL): engine status's "kafka" object."""
    from engine.kafka.sasl import MECHANISMS, read_credential

    protocol, servers = None, []
    for _, registration in sorted(brokers.items()):
        for endpoint in registration.get("endpoints") or ():
            name, _, address = str(endpoint).partition("://")
            protocol = protocol or name
            servers.append(address)
    out: dict[str, Any] = {"bootstrap_servers": ",".join(servers), "security_protocol": protocol}
    if protocol == "SASL_PLAINTEXT":
        credential = read_credential(dd)
        out |= {
            "sasl_mechanism": MECHANISMS[0],
            "sasl_username": credential.username,
            "sasl_password": credential.password,
        }
    return out


def cmd_status(args: argparse.Namespace) -> int:
    from engine.shm import format_size

    report = status_report(args.data_dir)
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
        return 0
    print(f"data dir     {report['data_dir']}")
    print(f"daemon       pid {report['daemon_pid']}")
    print(f"coordinator  {report['coordinator']}")
    print(f"metrics      {report['metrics']}")
    print(f"controller   broker {report['controller']}")
    kafka = report["kafka"]
    sasl = "; its credential: engine status --json" if "sasl_password" in kafka else ""
    print(f"kafka        {kafka['bootstrap_servers']} ({kafka['security_protocol']}{sasl})")
    budget, used = report["shm"]["budget_bytes"], report["shm"]["used_bytes"]
    print(f"shared mem   {format_size(used)} of a {format_size(budget)} budget (partition rings)")
    for bid, b in report["brokers"].items():
        print(f"broker {bid}     pid {b.get('pid')}")
    for t in report["topics"]:
        if "error" in t:
            print(f"topic {t['name']}: {t['error']}")
            continue
        print(f"topic {t['name']} ({len(t['partitions'])} partitions)")
        for p in t["partitions"]:
            print(
                f"  partition {p['partition']:>3}  leader {p['leader']}  "
                f"log_start {p['log_start_offset']}  log_end {p['log_end_offset']}  "
                f"hw {p['high_watermark']}"
            )
    return 0


def cmd_top(args: argparse.Namespace) -> int:
    from engine import top

    if not args.interval > 0:
        print(f"engine: --interval must be above 0: interval={args.interval}", file=sys.stderr)
        return 2
    return top.run(DataDir.resolve(args.data_dir), interval=args.interval)


def cmd_topics(args: argparse.Namespace) -> int:
    from engine.admin import Admin
    from engine.config import parse_config_pairs

    with Admin(args.data_dir) as admin:
        if args.topics_command == "create":
            d = admin.create_topic(
                args.topic, args.partitions, args.replication, parse_config_pairs(args.config)
            )
            print(f"created topic {d.name} with {len(d.partitions)} partitions")
        elif args.topics_command == "list":
            for name in admin.list_topics():
                print(name)
        elif args.topics_command == "describe":
            d = admin.describe_topic(args.topic)
            if args.json:
                print(
                    json.dumps(
                        {
                            "name": d.name,
                            "topic_id": d.topic_id,
                            "config": d.config,
                            "partitions": [p.__dict__ for p in d.partitions],
                        },
                        indent=2,
                    )
                )
            else:
                print(f"topic {d.name}  id {d.topic_id}")
                for p in d.partitions:
                    print(
                        f"  partition {p.partition}  leader {p.leader}  replicas {list(p.replicas)}"
                        f"  isr {list(p.isr)}  log_start {p.log_start_offset}"
                        f"  log_end {p.log_end_offset}"
                    )
        elif args.topics_command == "delete":
            admin.delete_topic(args.topic)
            print(f"deleted topic {args.topic}")
        elif args.topics_command == "add-partitions":
            before = len(admin.describe_topic(args.topic).partitions)
            d = admin.create_partitions({args.topic: args.count})[args.topic]
            print(f"topic {d.name}: {before} -> {len(d.partitions)} partitions")
        elif args.topics_command == "delete-records":
            from engine.record import TopicPartition

            if args.partition is None:
                count = len(admin.describe_topic(args.topic).partitions)
                chosen = range(count)
            else:
                chosen = range(args.partition, args.partition + 1)
            starts = admin.delete_records(
                {TopicPartition(args.topic, p): args.offset for p in chosen}
            )
            for tp, start in sorted(starts.items()):
                print(f"{tp.topic}-{tp.partition}: log start offset {start}")
        elif args.topics_command == "elect-leaders":
            from engine.record import TopicPartition

            tps: list[TopicPartition] | None = None
            if args.topic is not None:
                count = len(admin.describe_topic(args.topic).partitions)
                only = range(count)
                if args.partition is not None:
                    only = range(args.partition, args.partition + 1)
                tps = [TopicPartition(args.topic, p) for p in only]
            leaders = admin.perform_leader_election("preferred", tps)
            for tp, leader in sorted(leaders.items()):
                print(f"{tp.topic}-{tp.partition}: leader {leader}")
        elif args.topics_command == "reassign":
            from engine.errors import ConfigError
            from engine.record import TopicPartition

            try:
                brokers = [int(b) for b in args.replicas.split(",")]
            except ValueError:
                raise ConfigError(
                    f"--replicas must be broker ids separated by commas: {args.replicas!r}"
                ) from None
            tp = TopicPartition(args.topic, args.partition)
            replicas = admin.alter_partition_reassignments({tp: brokers})[tp]
            leader = admin.describe_topic(args.topic).partitions[args.partition].leader
            print(f"{tp.topic}-{tp.partition}: replicas {list(replicas)}, leader {leader}")
        elif args.topics_command == "alter":
            if not args.config and not args.delete_config:
                from engine.errors import ConfigError

                raise ConfigError(
                    "nothing to alter: give --config KEY=VALUE or --delete-config KEY"
                )
            config = admin.incremental_alter_configs(
                args.topic, parse_config_pairs(args.config), args.delete_config
            )
            changed = sorted({*parse_config_pairs(args.config), *args.delete_config})
            shown = " ".join(f"{k}={config[k]}" for k in changed)
            print(f"altered topic {args.topic}: {shown}")
    return 0


def cmd_produce(args: argparse.Namespace) -> int:
    from engine.producer import Producer

    acks: int | str = "all" if args.acks == "all" else int(args.acks)
    key = args.key.encode() if args.key is not None else None
    n = 0
    with Producer(args.data_dir, acks=acks) as producer:
        for line in sys.stdin.buffer:
            producer.send(args.topic, value=line.rstrip(b"\n"), key=key, partition=args.partition)
            n += 1
        producer.flush()
    print(f"produced {n} records to {args.topic}", file=sys.stderr)
    return 0


def cmd_consume(args: argparse.Namespace) -> int:
    from engine.consumer import Consumer
    from engine.errors import ConfigError
    from engine.record import TopicPartition

    if args.offset is not None and args.group is not None and args.partition is None:
        raise ConfigError(
            "--offset needs --partition when consuming with --group: the group's members "
            "start at its committed offsets (change them with `engine groups reset-offsets`)"
        )
    reset = "earliest" if args.from_beginning else "latest"
    with Consumer(
        data_dir=args.data_dir, auto_offset_reset=reset, group_id=args.group
    ) as consumer:
        if args.partition is not None:
            consumer.assign([TopicPartition(args.topic, args.partition)])
        else:
            consumer.subscribe([args.topic])
        if args.offset is not None:
            _seek_checked(consumer, args.offset)
        n = 0
        idle_since = time.monotonic()
        out = sys.stdout.buffer
        while args.max is None or n < args.max:
            want = None if args.max is None else args.max - n
            records = consumer.poll(timeout=0.2, max_records=want)
            if not records:
                if args.timeout is not None and time.monotonic() - idle_since > args.timeout:
                    break
                continue
            idle_since = time.monotonic()
            for r in records:
                prefix = b""
                if args.print_offset:
                    prefix += f"{r.partition}:{r.offset}\t".encode()
                if args.print_key:
                    prefix += (r.key or b"") + b"\t"
                out.write(prefix + (r.value or b"") + b"\n")
            out.flush()
            n += len(records)
    return 0


def _seek_checked(consumer: Consumer, offset: int) -> None:
    """Seek every assigned partition to ``offset``, which must lie in [log start, log end]
    of each: a consumer seeking outside would silently jump to the end (its reset
    policy; Kafka's console consumer does that), so this refuses with the numbers."""
    from engine.errors import OffsetOutOfRangeError

    tps = sorted(consumer.assignment())
    starts, ends = consumer.beginning_offsets(tps), consumer.end_offsets(tps)
    for tp in tps:
        start, end = max(starts[tp], 0), ends[tp]
        if offset > end:
            raise OffsetOutOfRangeError(
                f"--offset {offset} is past the log end offset of {tp.topic}-{tp.partition}: "
                f"offset={offset} log_end_offset={end}"
            )
        if offset < start:
            raise OffsetOutOfRangeError(
                f"--offset {offset} is before the log start offset of "
                f"{tp.topic}-{tp.partition}: offset={offset} log_start_offset={start}"
            )
        consumer.seek(tp, offset)


def cmd_groups(args: argparse.Namespace) -> int:
    from engine import group as grp
    from engine import offset_store
    from engine.admin import Admin

    with Admin(args.data_dir) as admin:
        if args.groups_command == "list":
            for name in offset_store.list_groups(admin._cluster.zk):
                print(name)
        elif args.groups_command == "describe":
            d = grp.describe_group(admin, args.group)
            if args.json:
                print(
                    json.dumps(
                        {
                            "group": d.group,
                            "state": d.state,
                            "generation": d.generation,
                            "protocol": d.protocol,
                            "leader": d.leader,
                            "members": d.members,
                            "partitions": [p.__dict__ for p in d.partitions],
                        },
                        indent=2,
                        sort_keys=True,
                    )
                )
                return 0
            print(
                f"group {d.group}  state {d.state}  generation {d.generation}  "
                f"protocol {d.protocol or '-'}  members {len(d.members)}"
            )
            for member, info in d.members.items():
                tps = ", ".join(f"{t}-{p}" for t, p in info.get("assignment", [])) or "(idle)"
                if offset_store.member_kind(info) == offset_store.KIND_KAFKA:
                    who = f"kafka client {info.get('client_id')}"
                else:
                    who = f"pid {info.get('pid')}"
                print(f"  member {member}  {who}  host {info.get('host')}  {tps}")
            print(
                f"  {'TOPIC':<20} {'PARTITION':>9} {'COMMITTED':>10} {'LOG-END':>10} "
                f"{'LAG':>8}  OWNER"
            )
            for p in d.partitions:
                committed = "-" if p.committed is None else str(p.committed)
                lag = "-" if p.lag is None else str(p.lag)
                print(
                    f"  {p.topic:<20} {p.partition:>9} {committed:>10} {p.log_end_offset:>10} "
                    f"{lag:>8}  {p.owner or '-'}"
                )
        elif args.groups_command == "delete":
            admin.delete_consumer_groups([args.group])
            print(f"deleted group {args.group}")
        elif args.groups_command == "reset-offsets":
            to = "earliest" if args.to_earliest else "latest" if args.to_latest else "offset"
            plan = grp.plan_reset_offsets(admin, args.group, args.topic, to, args.to_offset)
            for row in plan:
                if row.clamped:
                    print(f"engine: warning: {grp.clamp_message(row)}", file=sys.stderr)
            print(f"{'TOPIC':<20} {'PARTITION':>9} {'COMMITTED':>10} {'NEW-OFFSET':>10}")
            for row in plan:
                committed = "-" if row.committed is None else str(row.committed)
                print(f"{row.topic:<20} {row.partition:>9} {committed:>10} {row.new_offset:>10}")
            if args.execute:
                grp.write_reset(admin, args.group, plan)
                print(f"set the committed offsets of group {args.group}", file=sys.stderr)
            else:
                print(
                    "dry run: nothing was changed; add --execute to set these offsets",
                    file=sys.stderr,
                )
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Exit 0 when every log checked is intact (after the repair, with --repair), else 1."""
    import contextlib

    from engine import verify

    dd = DataDir.resolve(args.data_dir)
    if not dd.root.is_dir():
        print(f"engine: no such data dir: data_dir={dd.root}", file=sys.stderr)
        return 2
    # What a repair's recovery cuts, the repair's own lines say.
    logging.getLogger("engine.log").setLevel(logging.ERROR)
    lock = verify.stopped_daemon(dd) if args.repair else contextlib.nullcontext()
    with lock:
        replicas = verify.verify(dd, args.topic)
        if not replicas:
            what = f"topic={args.topic} " if args.topic else ""
            print(f"engine: no log found: {what}data_dir={dd.root}", file=sys.stderr)
            return 2
        for problem in (p for r in replicas for p in r.problems):
            print(problem.line())
        for note in (p for r in replicas for p in r.notes):
            print(f"note: {note.line()}")
        print(_verify_summary(replicas))
        if args.repair and any(r.problems for r in replicas):
            for line in verify.repair(replicas):
                print(line)
            replicas = verify.verify(dd, args.topic)
            for problem in (p for r in replicas for p in r.problems):
                print(problem.line())
            for note in (p for r in replicas for p in r.notes):
                print(f"note: {note.line()}")
            print(f"after the repair: {_verify_summary(replicas)}")
    return 1 if any(r.problems for r in replicas) else 0


def _verify_summary(replicas: list[Any]) -> str:
    partitions = {(r.topic, r.partition) for r in replicas}
    bad = [r for r in replicas if r.problems]
    head = f"verified {len(replicas)} replicas of {len(partitions)} partitions"
    notes = sum(len(r.notes) for r in replicas)
    tail = f" ({notes} notes)" if notes else ""
    if not bad:
        return f"{head}: no problems{tail}"
    count = sum(len(r.problems) for r in bad)
    return f"{head}: {count} problems in {len(bad)} replicas{tail}"


def cmd_demo(args: argparse.Namespace) -> int:
    from engine.demo import run_demo

    return run_demo(
        args.data_dir,
        devices=args.devices,
        producers=args.producers,
        seconds=args.seconds,
        rate=args.rate,
    )


def cmd_bench(args: argparse.Namespace) -> int:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    suite = os.path.join(root, "bench", "suite.py")
    if not os.path.exists(suite):
        print(
            "engine: `engine bench` runs from a source checkout (bench/suite.py not found)",
            file=sys.stderr,
        )
        return 2
    sys.path.insert(0, root)
    try:
        from bench.suite import main as bench_main
    except ModuleNotFoundError as exc:  # the suite's own dependencies (hdrh, matplotlib)
        print(
            f"engine: `engine bench` needs the benchmark extras: pip install -e '{root}[bench]' "
            f"(missing module: {exc.name})",
            file=sys.stderr,
        )
        return 2
    return int(bench_main(args.args))


def cmd_coord(args: argparse.Namespace) -> int:
    from engine import metadata as md
    from engine.coordination import shell

    if args.coord_command == "rm" and args.recursive and args.version is not None:
        print("engine: rm -r deletes whatever the versions: leave out --version",
              file=sys.stderr)  # fmt: skip
        return 2
    zk = md.connect(DataDir.resolve(args.data_dir))
    try:
        if args.coord_command == "ls":
            for name in shell.ls(zk, args.path, args.recursive):
                print(name)
        elif args.coord_command == "get":
            data, stat = shell.get(zk, args.path)
            print(shell.show_data(data))
            if args.stat:
                print("\n".join(shell.show_stat(stat)))
        elif args.coord_command == "set":
            shell.set_data(zk, args.path, args.data.encode(), args.version)
        elif args.coord_command == "rm":
            shell.rm(zk, args.path, args.recursive, args.version)
        elif args.coord_command == "watch":
            for count, line in enumerate(shell.watch(zk, args.path, args.children), 1):
                print(line, flush=True)
                if args.count is not None and count >= args.count:
                    break
        elif args.coord_command == "locks":
            print(f"{'KIND':<6} {'NAME':<24} {'HOLDER':<28} WAITING")
            for lock in shell.locks(zk):
                holder = lock.holder or "-"
                if lock.renewed_s_ago is not None:
                    holder += f" (renewed {lock.renewed_s_ago:.1f} s ago)"
                waiting = ", ".join(lock.waiting) or "-"
                print(f"{lock.kind:<6} {lock.name:<24} {holder:<28} {waiting}")
        elif args.coord_command == "leader":
            print(f"{'ELECTION':<24} {'LEADER':<28} CANDIDATES")
            for election in shell.elections(zk, args.name):
                leader = election.leader or "-"
                print(f"{election.name:<24} {leader:<28} {', '.join(election.candidates) or '-'}")
    finally:
        zk.stop()
        zk.close()
    return 0


_COMMANDS = {
    "start": cmd_start,
    "stop": cmd_stop,
    "status": cmd_status,
    "top": cmd_top,
    "topics": cmd_topics,
    "produce": cmd_produce,
    "consume": cmd_consume,
    "groups": cmd_groups,
    "verify": cmd_verify,
    "demo": cmd_demo,
    "bench": cmd_bench,
    "coord": cmd_coord,
}
