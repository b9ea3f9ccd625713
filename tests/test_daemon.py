"""The `engine` command and the daemon's life: start, status, stop, crashes, recovery."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import struct
from pathlib import Path

import pytest
from engine_harness import Daemon, listening_sockets, wait_for

from engine import Admin, Consumer, DaemonNotRunningError, Producer, TopicPartition
from engine.datadir import DataDir, pid_alive


def consume(data_dir: Path, topic: str, partition: int, expect: int) -> list:
    with Consumer(data_dir=data_dir, auto_offset_reset="earliest") as c:
        c.assign([TopicPartition(topic, partition)])
        out: list = []
        wait_for(
            lambda: out.extend(c.poll(timeout=0.2, max_records=100_000)) or len(out) >= expect,
            timeout=30,
            what=f"{expect} records of {topic}-{partition}",
        )
        return out


def test_quick_start_commands(daemon: Daemon) -> None:
    daemon.cli("topics", "create", "iot", "--partitions", "4")
    daemon.cli("produce", "iot", "--key", "dev-1", input=b"hello\n")
    out = daemon.cli("consume", "iot", "--from-beginning", "--max", "1", timeout=30)
    assert out.stdout == b"hello\n"
    status = json.loads(daemon.cli("status", "--json").stdout)
    assert status["coordinator"].startswith("127.0.0.1:")
    assert sorted(status["brokers"]) == ["1", "2"]
    assert status["controller"] in (1, 2)
    (iot,) = [t for t in status["topics"] if t["name"] == "iot"]
    assert sum(p["log_end_offset"] for p in iot["partitions"]) == 1
    assert "partition" in daemon.cli("status").stdout.decode()
    assert daemon.cli("topics", "list").stdout.split() == [b"iot"]


def test_second_daemon_on_the_same_data_dir_is_refused(daemon: Daemon) -> None:
    out = daemon.cli("start", "--data-dir", str(daemon.data_dir), check=False)
    assert out.returncode == 1
    assert b"already runs" in out.stderr


def test_clients_name_the_start_command_when_no_daemon_runs(tmp_path: Path) -> None:
    with pytest.raises(DaemonNotRunningError, match="engine start --data-dir"):
        Producer(tmp_path / "nothing-here")
    out = Daemon(tmp_path / "nothing-here").cli("status", check=False)
    assert out.returncode == 1 and b"engine start" in out.stderr


def test_engine_bench_passes_its_options_to_the_suite(tmp_path: Path) -> None:
    """`engine bench --quick ...` as the README says (the options are the suite's). The
    `test` extras hold what the suite needs to list and run."""
    cli = Daemon(tmp_path / "unused")
    out = cli.cli("bench", "--quick", "--list", check=False)
    assert out.returncode == 0, out.stderr.decode()
    assert b"engine-acks1" in out.stdout and b"mp-queue" in out.stdout
    out = cli.cli("bench", "--only", "no-such-transport", "--quick", check=False)
    assert out.returncode == 2 and b"unknown transport: no-such-transport" in out.stdout


def test_engine_bench_names_the_extras_when_the_suite_cannot_import(tmp_path: Path) -> None:
    """Without the suite's own dependencies `engine bench` says how to install them (an
    `hdrh` package that fails to import stands in for a missing one)."""
    shadow = tmp_path / "shadow" / "hdrh"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'hdrh'\", name='hdrh')\n"
    )
    cli = Daemon(tmp_path / "unused")
    cli.env["PYTHONPATH"] = os.pathsep.join(
        [str(shadow.parent), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    out = cli.cli("bench", "--quick", "--list", check=False)
    assert out.returncode == 2, out.stderr.decode()
    assert b"needs the benchmark extras: pip install -e" in out.stderr
    assert b"[bench]' (missing module: hdrh)" in out.stderr


def test_a_daemon_started_in_process_is_stopped_and_reaped_without_warnings(
    tmp_path: Path,
) -> None:
    """daemon.start_background from Python (the benchmark transports do): the daemon
    runs detached, stop() ends it and reaps it, and no "subprocess is still running"
    ResourceWarning escapes (warnings are errors here, as under `pytest bench/`)."""
    from engine import daemon as engine_daemon
    from engine.datadir import DataDir

    data_dir = DataDir.resolve(str(tmp_path / "engine"))
    info = engine_daemon.start_background(data_dir, brokers=1, coordinator=None)
    try:
        with Admin(str(tmp_path / "engine")) as admin:
            admin.create_topic("inproc", partitions=1)
    finally:
        assert engine_daemon.stop(data_dir)
    assert not pid_alive(int(info["pid"]))
    assert not engine_daemon.stop(data_dir)  # stopped: nothing to stop


def test_the_data_dir_its_files_and_its_rings_are_private_to_the_owner(daemon: Daemon) -> None:
    """The data dir and every directory in it 0700, every file 0600, every ring of the
    daemon in /dev/shm 0600: all owned by the engine's uid."""
    with Admin(daemon.data_dir) as admin:
        admin.create_topic("private", partitions=2)
    with Producer(daemon.data_dir) as p:
        p.send("private", b"secret").get()
    uid = os.getuid()
    directories, files = [daemon.data_dir], []
    for parent, dirnames, filenames in os.walk(daemon.data_dir):
        directories += [Path(parent, name) for name in dirnames]
        files += [Path(parent, name) for name in filenames]
    prefix = DataDir.resolve(daemon.data_dir).ring_prefix()
    rings = [Path("/dev/shm", name) for name in os.listdir("/dev/shm") if name.startswith(prefix)]
    # What the daemon keeps: logs, segments and indexes, the coordinator's data, rings.
    assert any(f.suffix == ".log" and f.parent.name == "private-0" for f in files), files
    assert any(f.parent.name == "logs" for f in files), files
    assert len(rings) >= 2, f"no rings of {prefix} in /dev/shm"

    def wrong(paths: list[Path], mode: int) -> list[tuple[str, str, int]]:
        out = []
        for path in paths:
            st = path.lstat()
            if stat.S_IMODE(st.st_mode) != mode or st.st_uid != uid:
                out.append((str(path), oct(stat.S_IMODE(st.st_mode)), st.st_uid))
        return out

    assert wrong(directories, 0o700) == [], "directories must be 0700"
    assert wrong(files, 0o600) == [], "files must be 0600"
    assert wrong(rings, 0o600) == [], "rings must be 0600"


def test_every_process_of_the_daemon_listens_on_127_0_0_1_only(daemon: Daemon) -> None:
    """Every listening TCP socket of the daemon and its children (the coordinator, the
    brokers: their pids are in engine.json) is bound to 127.0.0.1, none to 0.0.0.0 or ::."""
    runtime = daemon.runtime()
    pids = [int(runtime["pid"]), *(int(pid) for pid in runtime["processes"].values())]
    listening = {pid: listening_sockets(pid) for pid in pids}
    coordinator_port = int(runtime["coordinator"].rsplit(":", 1)[1])
    exposed = {pid: addrs for pid, addrs in listening.items()
               if any(host != "127.0.0.1" for host, _ in addrs)}  # fmt: skip
    assert exposed == {}, f"listening beyond 127.0.0.1: {exposed}"
    assert ("127.0.0.1", coordinator_port) in {a for addrs in listening.values() for a in addrs}


def test_stop_flushes_and_start_again_keeps_every_record(daemon: Daemon) -> None:
    with Admin(daemon.data_dir) as admin:
        admin.create_topic("keep", partitions=2)
    with Producer(daemon.data_dir) as p:
        offsets = [p.send("keep", b"r%d" % i, partition=i % 2).get().offset for i in range(1000)]
    daemon.stop()
    assert not (daemon.data_dir / "engine.json").exists()
    daemon.start()
    got = consume(daemon.data_dir, "keep", 0, 500) + consume(daemon.data_dir, "keep", 1, 500)
    assert sorted((r.partition, r.offset, r.value) for r in got) == sorted(
        (i % 2, offsets[i], b"r%d" % i) for i in range(1000)
    )
    with Producer(daemon.data_dir) as p:  # appends continue at the log end
        assert p.send("keep", b"next", partition=0).get().offset == 500


def test_kill_9_of_a_broker_loses_no_record(daemon: Daemon) -> None:
    with Admin(daemon.data_dir) as admin:
        admin.create_topic("crash", partitions=1)
        leader = admin.describe_topic("crash").partitions[0].leader
    with Producer(daemon.data_dir) as p:
        for i in range(5000):
            p.send("crash", struct.pack("<I", i), partition=0)
        pid = daemon.runtime()["processes"][f"broker-{leader}"]
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not pid_alive(pid), what="the broker to die")
        # The ring outlives the broker: producers go on appending meanwhile.
        for i in range(5000, 6000):
            p.send("crash", struct.pack("<I", i), partition=0)
    # The daemon restarts the broker, which resumes the ring where the log ends.
    wait_for(
        lambda: daemon.runtime()["processes"][f"broker-{leader}"] != pid,
        what="the daemon to restart the broker",
    )
    got = consume(daemon.data_dir, "crash", 0, 6000)
    assert [r.offset for r in got] == list(range(6000))
    assert [struct.unpack("<I", r.value)[0] for r in got] == list(range(6000))


def test_a_torn_segment_tail_is_cut_at_the_last_intact_record(daemon: Daemon) -> None:
    with Admin(daemon.data_dir) as admin:
        admin.create_topic("torn", partitions=1)
        leader = admin.describe_topic("torn").partitions[0].leader
    with Producer(daemon.data_dir, acks=1) as p:  # a batch per record
        for i in range(100):
            p.send("torn", b"%03d" % i + b"t" * 50, partition=0)
    daemon.stop()
    segment = daemon.data_dir / f"broker-{leader}" / "torn-0" / ("0" * 20 + ".log")
    size = segment.stat().st_size
    per_record = size // 100
    with open(segment, "r+b") as f:
        f.truncate(size - per_record // 2)  # cut the last record in half
    daemon.start()
    got = consume(daemon.data_dir, "torn", 0, 99)
    assert [r.offset for r in got] == list(range(99))
    log = (daemon.data_dir / "logs" / f"broker-{leader}.log").read_text()
    # The recovery says what it cut: the half record, from the one segment, at offset 99.
    cuts = re.findall(
        r"log recovery cut a torn or corrupt tail: directory=(\S+) segment=(\d+) "
        r"bytes_cut=(\d+) log_end_offset=(\d+)",
        log,
    )
    assert [(Path(d).name, int(s), int(b) > 0, int(e)) for d, s, b, e in cuts] == [
        ("torn-0", 0, True, 99)
    ], log[-3000:]
    with Producer(daemon.data_dir) as p:
        assert p.send("torn", b"after", partition=0).get().offset == 99


def test_retention_by_size_deletes_old_segments(daemon: Daemon) -> None:
    with Admin(daemon.data_dir) as admin:
        admin.create_topic(
            "ret",
            partitions=1,
            config={
                "segment.bytes": 16384,
                "retention.bytes": 32768,
                "ring.bytes": 1 << 16,
                "max.message.bytes": 4096,
            },
        )
        with Producer(daemon.data_dir) as p:
            for i in range(3000):
                p.send("ret", b"%05d" % i + b"r" * 80, partition=0)
        wait_for(
            lambda: admin.describe_topic("ret").partitions[0].log_start_offset > 0,
            what="retention to advance the log start offset",
        )
        start = admin.describe_topic("ret").partitions[0].log_start_offset
    with Consumer(data_dir=daemon.data_dir, auto_offset_reset="earliest") as c:
        c.assign([TopicPartition("ret", 0)])
        first = c.poll(timeout=5, max_records=1)
        assert first and first[0].offset >= start


def test_stop_of_a_daemon_that_is_not_running_says_so(tmp_path: Path) -> None:
    out = Daemon(tmp_path / "none").cli("stop", "--data-dir", str(tmp_path / "none"))
    assert b"not running" in out.stdout


def test_auto_create_is_off_by_default_and_can_be_turned_on(tmp_path: Path) -> None:
    d = Daemon(tmp_path / "auto", brokers=1)
    try:
        d.cli(
            "start",
            "--data-dir",
            str(d.data_dir),
            "--brokers",
            "1",
            "--auto-create-topics",
            "--num-partitions",
            "2",
        )
        with Producer(d.data_dir) as p:
            md = p.send("made-on-first-use", b"v", key=b"k").get()
        with Admin(d.data_dir) as admin:
            assert len(admin.describe_topic("made-on-first-use").partitions) == 2
        assert md.offset == 0
    finally:
        d.stop()
        d.kill_everything()


def test_a_broker_writes_every_threads_stack_to_its_log_on_request(daemon: Daemon) -> None:
    """`kill -USR1` of a live broker (what the daemon does before it kills one that did
    not stop in time) puts every thread's stack in its log; the broker goes on."""
    from engine.daemon import DUMP_STACKS_SIGNAL

    pid = daemon.runtime()["processes"]["broker-1"]
    log_path = daemon.data_dir / "logs" / "broker-1.log"
    os.kill(pid, DUMP_STACKS_SIGNAL)
    wait_for(lambda: "engine/broker.py" in log_path.read_text(errors="replace"),
             what="the stacks in the broker's log")  # fmt: skip
    assert "Thread 0x" in log_path.read_text(errors="replace")
    with Admin(daemon.data_dir) as admin:
        admin.create_topic("after-dump", partitions=1)
    with Producer(daemon.data_dir) as p:
        assert p.send("after-dump", b"still serving").get().offset == 0
    assert daemon.runtime()["processes"]["broker-1"] == pid


def test_a_broker_that_does_not_stop_in_time_dumps_its_stacks_then_is_killed(
    tmp_path: Path,
) -> None:
    import sys

    from engine.daemon import DUMP_STACKS_SIGNAL, Child

    hang = (
        "import faulthandler, signal, sys, time\n"
        f"faulthandler.register({int(DUMP_STACKS_SIGNAL)}, all_threads=True)\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('up', flush=True)\n"
        "def stuck_in_shutdown():\n"
        "    time.sleep(600)\n"
        "stuck_in_shutdown()\n"
    )
    child = Child("broker-9", [sys.executable, "-c", hang], tmp_path / "broker-9.log")
    child.start(tmp_path)
    try:
        wait_for(lambda: "up" in child.log_path.read_text(), what="the child to start")
        child.stop(grace_s=0.5)
        assert child.proc is not None and child.proc.returncode == -signal.SIGKILL
        text = child.log_path.read_text()
        assert "stuck_in_shutdown" in text and "Current thread" in text
    finally:
        if child.proc is not None and child.proc.poll() is None:
            child.proc.kill()
            child.proc.wait()
        if child.log_file is not None:
            child.log_file.close()


def test_a_broker_stops_when_signalled_many_times_in_a_row(daemon: Daemon) -> None:
    """A burst of SIGTERMs (the daemon sends two when it stops; an impatient user
    more): the broker stops at once, cleanly. (A handler that set threading Events
    hung when the second signal came while the first one's Event.set() held its
    lock.)"""
    pid = daemon.runtime()["processes"]["broker-1"]
    log_path = daemon.data_dir / "logs" / "broker-1.log"
    for _ in range(300):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            break
    wait_for(lambda: not pid_alive(pid), timeout=10, what="the broker to exit")
    assert "broker 1 stopped" in log_path.read_text(errors="replace")


def test_the_brokers_signal_handler_takes_no_lock() -> None:
    """The handler runs in the main thread between two bytecodes, possibly while that
    thread holds the lock of the very Event it would set (inside Event.wait or set):
    it must return without taking it, and the main loop then stops."""
    import threading

    from engine.broker import Broker

    broker = Broker.__new__(Broker)  # no coordinator needed for this
    broker._wake, broker._stopping = threading.Event(), threading.Event()
    broker._signalled = False
    with broker._wake._cond:  # as if the signal came inside _wake.set() or wait()
        done = threading.Event()
        handler = threading.Thread(target=lambda: (broker.on_signal(), done.set()))
        handler.start()
        handler.join(5)
        assert done.is_set(), "the signal handler blocked on the Event's lock"
    broker._wait_for_work()
    assert broker._stopping.is_set()
