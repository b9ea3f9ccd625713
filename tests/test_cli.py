"""The `engine` command line as users meet it: options, errors as one line, pipes,
consume's --offset and groups reset-offsets (each `python -m engine` in a subprocess)."""

from __future__ import annotations

import importlib.metadata
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from engine_harness import Daemon, wait_for

from engine import Admin, Consumer, Producer, TopicPartition
from engine.group import describe_group

SIGPIPE_EXIT = 128 + signal.SIGPIPE


def no_daemon(tmp_path: Path) -> Daemon:
    """A Daemon whose cli() runs commands that need no running daemon."""
    return Daemon(tmp_path / "no-daemon")


@pytest.fixture
def group_with_commits(shared_daemon: Daemon, topic: str) -> Iterator[str]:
    """A group without members that committed offset 1 on each of the topic's three
    partitions, which hold three records each."""
    with Producer(shared_daemon.data_dir) as p:
        for partition in range(3):
            p.send_batch(topic, [b"a", b"b", b"c"], partition=partition)
    group = f"cli-{uuid.uuid4().hex[:6]}"
    with Consumer(data_dir=shared_daemon.data_dir, group_id=group) as c:
        c.assign([TopicPartition(topic, p) for p in range(3)])
        c.commit({TopicPartition(topic, p): 1 for p in range(3)})
    yield group


def committed(data_dir: Path, group: str) -> list[int | None]:
    with Admin(data_dir) as admin:
        return [row.committed for row in describe_group(admin, group).partitions]


# -- options ----------------------------------------------------------------


def test_version_prints_the_installed_version(tmp_path: Path) -> None:
    out = no_daemon(tmp_path).cli("--version")
    assert out.stdout.decode() == f"engine {importlib.metadata.version('engine')}\n"


def test_an_unknown_option_is_named_not_a_missing_command(tmp_path: Path) -> None:
    cli = no_daemon(tmp_path)
    for args in (["--bogus"], ["topics", "--bogus"], ["groups", "list", "--bogus"]):
        out = cli.cli(*args, check=False)
        assert out.returncode == 2
        assert b"unrecognized arguments: --bogus" in out.stderr, out.stderr
    out = cli.cli(check=False)
    assert out.returncode == 2
    assert b"COMMAND is required: one of start, stop, status" in out.stderr
    out = cli.cli("topics", check=False)
    assert out.returncode == 2
    assert b"ACTION is required: one of create, list, describe, delete" in out.stderr


# -- errors: one line ---------------------------------------------------------


def assert_one_line(out: subprocess.CompletedProcess[bytes], *parts: str) -> str:
    err = out.stderr.decode()
    assert out.returncode == 1, err
    assert err.startswith("engine: ") and err.count("\n") == 1, err
    for part in parts:
        assert part in err, err
    return err


@pytest.mark.parametrize("foreground", [False, True], ids=["background", "foreground"])
def test_start_on_a_data_dir_that_cannot_be_used_says_why_in_one_line(
    tmp_path: Path, foreground: bool
) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory\n")
    cases = {
        a_file: "exists and is not a directory",
        a_file / "under": "a part of the path is not a directory",
        Path("/proc/engine-test-cannot-create"): "no such file or directory",
    }
    extra = ["--foreground"] if foreground else []
    for data_dir, reason in cases.items():
        out = Daemon(data_dir).cli("start", "--data-dir", str(data_dir), *extra, check=False)
        assert_one_line(out, f"cannot use the data dir: data_dir={data_dir}", reason)


def test_start_on_a_data_dir_the_user_cannot_write_says_why_in_one_line(tmp_path: Path) -> None:
    """A directory the user may not write into: root may write anywhere, so as root the
    command runs as the user nobody (setpriv), in a directory it can read but not write."""
    as_user: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: cannot run as another user")
        as_user = [setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
        probe = subprocess.run([*as_user, sys.executable, "-c", "import engine"], check=False)
        if probe.returncode != 0:
            pytest.skip("the user nobody cannot run this interpreter and checkout")
    parent = Path(tempfile.mkdtemp(prefix="engine-ro-"))
    try:
        parent.chmod(0o555)  # readable and searchable by all, writable by nobody but root
        for data_dir, path in [
            (parent / "engine", parent / "engine"),  # cannot be created
            (parent, parent / "engine.lock"),  # exists, cannot be written into
        ]:
            out = subprocess.run(
                [*as_user, sys.executable, "-m", "engine", "start", "--data-dir", str(data_dir)],
                capture_output=True,
                check=False,
            )
            assert_one_line(
                out, f"cannot use the data dir: data_dir={data_dir} ({path}: permission denied)"
            )
    finally:
        parent.chmod(0o755)
        shutil.rmtree(parent)


# -- pipes closed early -------------------------------------------------------


def test_consume_into_head_stops_quietly(shared_daemon: Daemon, topic: str, tmp_path: Path) -> None:
    """More than a pipe's buffer (64 KiB) and head's read: consume is still writing
    when head exits."""
    values = [b"%05d" % i + b"x" * 95 for i in range(20_000)]  # 2 MB
    with Producer(shared_daemon.data_dir) as p:
        p.send_batch(topic, values, partition=0)
    err = tmp_path / "consume.err"
    engine = shlex.join([sys.executable, "-m", "engine"])
    command = (
        f"set -o pipefail; {engine} consume {topic} --partition 0 --from-beginning "
        f"--timeout 10 2>{shlex.quote(str(err))} | head -1"
    )
    out = subprocess.run(
        ["bash", "-c", command], capture_output=True, env=shared_daemon.env, timeout=60
    )
    assert out.stdout == values[0] + b"\n"
    assert err.read_text() == ""
    assert out.returncode == SIGPIPE_EXIT


def test_printing_commands_into_a_closed_pipe_stop_quietly(
    shared_daemon: Daemon, topic: str, group_with_commits: str
) -> None:
    for args in [
        ["status"],
        ["status", "--json"],
        ["topics", "list"],
        ["topics", "describe", topic],
        ["groups", "list"],
        ["groups", "describe", group_with_commits],
        ["groups", "reset-offsets", group_with_commits, "--topic", topic, "--to-earliest"],
        ["consume", topic, "--partition", "0", "--from-beginning", "--max", "3"],
    ]:
        read_end, write_end = os.pipe()
        os.close(read_end)  # nobody will ever read: the first write fails with EPIPE
        try:
            out = subprocess.run(
                [sys.executable, "-m", "engine", *args],
                stdout=write_end,
                stderr=subprocess.PIPE,
                env=shared_daemon.env,
                timeout=60,
            )
        finally:
            os.close(write_end)
        assert (out.returncode, out.stderr) == (SIGPIPE_EXIT, b""), args


# -- consume --offset -----------------------------------------------------------


def test_consume_from_an_offset_past_the_log_end_is_refused(
    shared_daemon: Daemon, topic: str
) -> None:
    with Producer(shared_daemon.data_dir) as p:
        p.send_batch(topic, [b"r0", b"r1", b"r2"], partition=1)
    out = shared_daemon.cli(
        "consume", topic, "--partition", "1", "--offset", "9", "--timeout", "1", check=False
    )
    assert_one_line(out, f"of {topic}-1", "offset=9 log_end_offset=3")
    # Every partition without --partition: those with fewer records refuse it.
    out = shared_daemon.cli("consume", topic, "--offset", "2", "--timeout", "1", check=False)
    assert_one_line(out, f"of {topic}-0", "offset=2 log_end_offset=0")
    out = shared_daemon.cli(
        "consume", topic, "--partition", "1", "--offset", "2", "--timeout", "1"
    )
    assert out.stdout == b"r2\n"
    out = shared_daemon.cli(
        "consume", topic, "--partition", "1", "--offset", "3", "--timeout", "1"
    )
    assert out.stdout == b""  # the log end itself: waits for the next record


def test_consume_from_an_offset_before_the_log_start_is_refused(shared_daemon: Daemon) -> None:
    topic = f"ret-{uuid.uuid4().hex[:6]}"
    with Admin(shared_daemon.data_dir) as admin:
        admin.create_topic(
            topic,
            partitions=1,
            config={
                "segment.bytes": 16384,
                "retention.bytes": 32768,
                "ring.bytes": 1 << 16,
                "max.message.bytes": 4096,
            },
        )
        try:
            with Producer(shared_daemon.data_dir) as p:
                for i in range(3000):
                    p.send(topic, b"%05d" % i + b"r" * 80, partition=0)
            start = wait_for(
                lambda: admin.describe_topic(topic).partitions[0].log_start_offset,
                what="retention to advance the log start offset",
            )
            out = shared_daemon.cli(
                "consume", topic, "--partition", "0", "--offset", "0", "--timeout", "1",
                check=False,
            )  # fmt: skip
            # Retention may move on between the two reads: the number is the later one.
            err = assert_one_line(out, f"before the log start offset of {topic}-0", "offset=0")
            assert int(err.rsplit("log_start_offset=", 1)[1]) >= start
        finally:
            admin.delete_topic(topic)


def test_consume_with_a_group_refuses_an_offset_without_a_partition(
    shared_daemon: Daemon, topic: str
) -> None:
    out = shared_daemon.cli(
        "consume", topic, "--group", "g", "--offset", "0", "--timeout", "1", check=False
    )
    assert_one_line(out, "--offset needs --partition", "reset-offsets")


# -- groups reset-offsets -----------------------------------------------------


def test_reset_offsets_shows_the_plan_and_changes_nothing_without_execute(
    shared_daemon: Daemon, topic: str, group_with_commits: str
) -> None:
    group = group_with_commits
    args = ("groups", "reset-offsets", group, "--topic", topic, "--to-latest")
    for mode in ([], ["--dry-run"]):
        out = shared_daemon.cli(*args, *mode)
        rows = [line.split() for line in out.stdout.decode().splitlines()]
        assert rows == [
            ["TOPIC", "PARTITION", "COMMITTED", "NEW-OFFSET"],
            [topic, "0", "1", "3"],
            [topic, "1", "1", "3"],
            [topic, "2", "1", "3"],
        ]
        assert b"dry run: nothing was changed; add --execute" in out.stderr
        assert committed(shared_daemon.data_dir, group) == [1, 1, 1]
    out = shared_daemon.cli(*args, "--execute")
    assert [line.split()[-1] for line in out.stdout.decode().splitlines()[1:]] == ["3"] * 3
    assert b"dry run" not in out.stderr
    assert committed(shared_daemon.data_dir, group) == [3, 3, 3]


def test_reset_offsets_of_an_unknown_group_is_refused_and_creates_nothing(
    shared_daemon: Daemon, topic: str
) -> None:
    group = f"never-{uuid.uuid4().hex[:6]}"
    for mode in ([], ["--execute"]):
        out = shared_daemon.cli(
            "groups", "reset-offsets", group, "--topic", topic, "--to-earliest", *mode,
            check=False,
        )  # fmt: skip
        assert_one_line(out, f"unknown consumer group: group={group!r}", "--group")
    assert group not in shared_daemon.cli("groups", "list").stdout.decode().split()


def test_reset_to_an_offset_outside_the_log_warns_for_each_partition(
    shared_daemon: Daemon, topic: str, group_with_commits: str
) -> None:
    group = group_with_commits
    out = shared_daemon.cli(
        "groups", "reset-offsets", group, "--topic", topic, "--to-offset", "99", "--execute"
    )
    warnings = [line for line in out.stderr.decode().splitlines() if "warning" in line]
    assert warnings == [
        f"engine: warning: offset 99 is past the log end offset 3 of {topic}-{p}: "
        "set to 3 instead"
        for p in range(3)
    ]
    assert committed(shared_daemon.data_dir, group) == [3, 3, 3]
    out = shared_daemon.cli(
        "groups", "reset-offsets", group, "--topic", topic, "--to-offset", "2", "--execute"
    )
    assert b"warning" not in out.stderr
    assert committed(shared_daemon.data_dir, group) == [2, 2, 2]
