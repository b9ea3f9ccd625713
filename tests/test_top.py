"""`engine top` in a pseudo-terminal: what it shows, and how it ends."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator

from engine_harness import Daemon

from engine import Producer

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
ROWS, COLUMNS = 50, 160


def _as_from_a_shell() -> None:
    """In the child, before exec: the pty becomes its controlling terminal (Ctrl-C there
    sends it SIGINT), and SIGINT is at its default as a shell leaves it. A child inherits
    an ignored SIGINT, and Python then keeps ignoring it: some test before this one left
    the test process ignoring it, and Ctrl-C then did nothing."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Terminal:
    """`engine top` running on a pseudo-terminal it has as its controlling terminal."""

    def __init__(self, daemon: Daemon) -> None:
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
        env = dict(daemon.env, TERM="xterm")
        env.pop("COLUMNS", None)
        env.pop("LINES", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "engine", "top", "--data-dir", str(daemon.data_dir)],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            start_new_session=True,
            preexec_fn=_as_from_a_shell,
        )
        os.close(slave)
        self.master = master
        self.output = b""

    def read(self, timeout: float) -> None:
        """What the program wrote within ``timeout`` seconds (less once it is quiet)."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([self.master], [], [], min(left, 0.1))
            if not ready:
                continue
            try:
                chunk = os.read(self.master, 65536)
            except OSError:  # the program ended: the pty is closed (EIO)
                return
            if not chunk:
                return
            self.output += chunk

    def screen(self) -> str:
        """The last whole frame, as text without escape sequences."""
        frames = self.output.decode("utf-8", "replace").split("\x1b[H\x1b[2J")
        whole = frames[-2] if len(frames) > 2 else frames[-1]
        return ANSI.sub("", whole).replace("\r", "")

    def wait_for_screen(self, predicate: re.Pattern[str], timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.read(0.2)
            match = predicate.search(self.screen())
            if match:
                return match.group(0)
            if self.proc.poll() is not None:
                break
        raise AssertionError(f"no {predicate.pattern!r} on the screen:\n{self.screen()}")

    def send(self, data: bytes) -> None:
        os.write(self.master, data)

    def exit_code(self, timeout: float) -> int:
        """The program's exit status within ``timeout`` seconds (its output read meanwhile)."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            self.read(0.1)
        self.read(0.2)
        return self.proc.wait(timeout=max(deadline - time.monotonic(), 0.1))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)


@contextlib.contextmanager
def top(daemon: Daemon) -> Iterator[Terminal]:
    terminal = Terminal(daemon)
    try:
        yield terminal
    finally:
        terminal.close()


@contextlib.contextmanager
def producing(daemon: Daemon, topic: str) -> Iterator[None]:
    """Records keep coming into ``topic`` meanwhile."""
    stop = threading.Event()

    def produce() -> None:
        with Producer(daemon.data_dir, acks=1) as p:
            while not stop.is_set():
                p.send(topic, b"reading" * 10)
                stop.wait(0.002)

    sender = threading.Thread(target=produce)
    sender.start()
    try:
        yield
    finally:
        stop.set()
        sender.join()


def test_top_shows_the_topic_with_its_rates_and_q_quits(shared_daemon: Daemon, topic: str) -> None:
    with producing(shared_daemon, topic), top(shared_daemon) as terminal:
        # The topic's line: its name, "all" partitions, then records/s in (not zero).
        line = terminal.wait_for_screen(re.compile(rf"^{topic}\s+all\s+([1-9][\d.]*k?)\s.*$", re.M))
        assert "B" in line  # bytes/s in, with its unit
        screen = terminal.screen()
        assert "under-replicated: none" in screen
        assert re.search(r"^\s+0\s+[12]\s+1/1\s", screen, re.M)  # partition 0: leader, ISR
        terminal.send(b"q")
        assert terminal.exit_code(timeout=5) == 0
        assert terminal.output.endswith(b"\x1b[?25h\x1b[?1049l")  # the screen given back


def test_top_ends_cleanly_on_ctrl_c(shared_daemon: Daemon, topic: str) -> None:
    with top(shared_daemon) as terminal:
        terminal.wait_for_screen(re.compile(rf"^{topic}\s+all", re.M))
        terminal.send(b"\x03")  # the terminal's interrupt character: SIGINT
        assert terminal.exit_code(timeout=5) == 0
        assert terminal.output.endswith(b"\x1b[?25h\x1b[?1049l")
        assert b"Traceback" not in terminal.output


def test_top_says_so_and_exits_when_the_daemon_stops(daemon: Daemon) -> None:
    with top(daemon) as terminal:
        terminal.wait_for_screen(re.compile(r"brokers up 1,2"))
        daemon.stop()
        assert terminal.exit_code(timeout=15) == 1
        text = terminal.output.decode("utf-8", "replace")
        assert "engine top: the daemon stopped" in text
        assert "Traceback" not in text
