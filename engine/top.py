"""``engine top``: a live view of the daemon's metrics in the terminal.

It reads the daemon's metrics endpoint (what Prometheus sees; its URL is in the runtime
file) every ``interval`` seconds and redraws: per topic and partition the records and
bytes per second in and out (from the counters' change between two scrapes), the
leader, ISR and ring fill, the under-replicated and offline partitions, and the lag of
every consumer group. Plain ANSI escapes on the alternate screen (as top(1)): it works
over SSH and in any terminal; lines are cut to the terminal's width.

Keys: ``q`` quits (status 0). Ctrl-C quits too (status 0). When the daemon stops (its
endpoint no longer answers), it says so and exits with status 1. The terminal's modes
are restored however it ends.

Pure functions (:func:`parse`, :func:`rates`, :func:`render`) apart from the terminal
loop (:func:`run`), so that the view can be checked without a terminal.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import sys
import termios
import time
import tty
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TextIO

from prometheus_client.parser import text_string_to_metric_families

from engine.datadir import DataDir
from engine.errors import DaemonNotRunningError

#: A sample's identity: its name and its labels, sorted.
Key = tuple[str, tuple[tuple[str, str], ...]]

SCRAPE_TIMEOUT_S = 5.0
_ENTER = "\x1b[?1049h\x1b[?25l"  # the alternate screen, the cursor hidden
_LEAVE = "\x1b[?25h\x1b[?1049l"
_HOME = "\x1b[H\x1b[2J"
_BOLD, _RED, _RESET = "\x1b[1m", "\x1b[31m", "\x1b[0m"


@dataclass
class Scrape:
    """One reading of the endpoint: every sample's value, and when it was taken."""

    at: float
    values: dict[Key, float] = field(default_factory=dict)

    def series(self, name: str) -> Iterator[tuple[dict[str, str], float]]:
        for (n, labels), value in self.values.items():
            if n == name:
                yield dict(labels), value

    def get(self, name: str, **labels: str) -> float | None:
        return self.values.get((name, tuple(sorted(labels.items()))))


def parse(text: str, at: float) -> Scrape:
    """The Prometheus text exposition ``text``, as a Scrape taken at ``at``."""
    scrape = Scrape(at)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            scrape.values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return scrape


def rates(before: Scrape | None, now: Scrape, name: str) -> dict[Key, float]:
    """Per second, the change of counter ``name`` in each series since ``before`` (a
    series new since, or that went back, counts from 0: Prometheus' reset rule)."""
    out: dict[Key, float] = {}
    if before is None or now.at <= before.at:
        return out
    elapsed = now.at - before.at
    for key, value in now.values.items():
        if key[0] != name:
            continue
        old = before.values.get(key, 0.0)
        out[key] = (value - old if value >= old else value) / elapsed
    return out


def _by_partition(r: dict[Key, float]) -> dict[tuple[str, int], float]:
    """Rates summed per (topic, partition) (over the leader label)."""
    out: dict[tuple[str, int], float] = {}
    for (_, labels), value in r.items():
        d = dict(labels)
        key = (d.get("topic", ""), int(d.get("partition", "0")))
        out[key] = out.get(key, 0.0) + value
    return out


def _human(value: float, unit: str = "") -> str:
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.1f}{prefix}{unit}"
    return f"{value:.0f}{unit}" if value == int(value) or abs(value) >= 10 else f"{value:.1f}{unit}"


def render(before: Scrape | None, now: Scrape, title: str, color: bool = False) -> list[str]:
    """The view's lines (not cut to a width)."""
    bold, red, reset = (_BOLD, _RED, _RESET) if color else ("", "", "")
    rin = _by_partition(rates(before, now, "engine_partition_records_in_total"))
    bin_ = _by_partition(rates(before, now, "engine_partition_bytes_in_total"))
    rout = _by_partition(rates(before, now, "engine_partition_records_out_total"))
    bout = _by_partition(rates(before, now, "engine_partition_bytes_out_total"))
    lines = [f"{bold}{title}{reset}"]
    up = [b["broker"] for b, v in now.series("engine_broker_up") if v == 1]
    down = [b["broker"] for b, v in now.series("engine_broker_up") if v != 1]
    coord = "up" if now.get("engine_coordinator_up") == 1 else f"{red}DOWN{reset}"
    sessions = now.get("engine_coordinator_sessions")
    znodes = now.get("engine_coordinator_znodes")
    watches = now.get("engine_coordinator_watches")
    lines.append(
        f"brokers up {','.join(sorted(up, key=int)) or '-'}"
        + (f"  {red}down {','.join(sorted(down, key=int))}{reset}" if down else "")
        + f"   coordinator {coord}"
        + (f", {sessions:.0f} sessions" if sessions is not None else "")
        + (f", {znodes:.0f} znodes" if znodes is not None else "")
        + (f", {watches:.0f} watches" if watches is not None else "")
    )
    lines.append("")
    parts: dict[tuple[str, int], dict[str, float]] = {}
    for name in (
        "engine_partition_leader",
        "engine_partition_isr_size",
        "engine_partition_replicas",
        "engine_partition_log_end_offset",
        "engine_partition_high_watermark",
        "engine_partition_ring_fill_ratio",
    ):
        for labels, value in now.series(name):
            key = (labels["topic"], int(labels["partition"]))
            parts.setdefault(key, {})[name.removeprefix("engine_partition_")] = value
    header = (
        f"{'TOPIC':<24} {'PART':>4} {'LEADER':>6} {'ISR':>5} {'REC/S IN':>9} "
        f"{'B/S IN':>8} {'REC/S OUT':>9} {'B/S OUT':>8} {'END':>10} {'RING':>5}"
    )
    lines.append(f"{bold}{header}{reset}")
    topics = sorted({t for t, _ in parts})
    for topic in topics:
        keys = sorted(k for k in parts if k[0] == topic)
        total = [sum(r.get(k, 0.0) for k in keys) for r in (rin, bin_, rout, bout)]
        lines.append(
            f"{bold}{topic:<24.24} {'all':>4} {'':>6} {'':>5} {_human(total[0]):>9} "
            f"{_human(total[1], 'B'):>8} {_human(total[2]):>9} {_human(total[3], 'B'):>8}{reset}"
        )
        for key in keys:
            p = parts[key]
            isr, replicas = int(p.get("isr_size", 0)), int(p.get("replicas", 0))
            leader = int(p.get("leader", -1))
            isr_text = f"{isr}/{replicas}"
            if isr < replicas or leader < 0:
                isr_text = f"{red}{isr_text:>5}{reset}"
            end = p.get("log_end_offset")
            fill = p.get("ring_fill_ratio")
            lines.append(
                f"{'':<24} {key[1]:>4} {leader if leader >= 0 else 'none':>6} {isr_text:>5} "
                f"{_human(rin.get(key, 0.0)):>9} {_human(bin_.get(key, 0.0), 'B'):>8} "
                f"{_human(rout.get(key, 0.0)):>9} {_human(bout.get(key, 0.0), 'B'):>8} "
                f"{int(end) if end is not None else '-':>10} "
                f"{f'{fill:.0%}' if fill is not None else '-':>5}"
            )
    if not topics:
        lines.append("(no topics)")
    under = sorted(
        (labels["topic"], int(labels["partition"]))
        for labels, v in now.series("engine_partition_under_replicated")
        if v == 1
    )
    offline = sorted(
        (labels["topic"], int(labels["partition"]))
        for labels, v in now.series("engine_partition_offline")
        if v == 1
    )
    lines.append("")
    lines.append(
        "under-replicated: "
        + (f"{red}{', '.join(f'{t}-{p}' for t, p in under)}{reset}" if under else "none")
        + ("   offline: " + f"{red}{', '.join(f'{t}-{p}' for t, p in offline)}{reset}"
           if offline else "")
    )  # fmt: skip
    lines.append("")
    groups_header = f"{'GROUP':<24} {'TOPIC':<24} {'PART':>4} {'COMMITTED':>10} {'LAG':>10}"
    lines.append(f"{bold}{groups_header}{reset}")
    groups = sorted(
        (labels["group"], labels["topic"], int(labels["partition"]), value)
        for labels, value in now.series("engine_group_lag")
    )
    for group, topic, partition, lag in groups:
        committed = now.get(
            "engine_group_committed_offset", group=group, partition=str(partition), topic=topic
        )
        lines.append(
            f"{group:<24.24} {topic:<24.24} {partition:>4} "
            f"{int(committed) if committed is not None else '-':>10} {int(lag):>10}"
        )
    if not groups:
        lines.append("(no committed offsets)")
    return lines


def scrape(url: str) -> Scrape:
    """One reading of the endpoint; OSError when it does not answer."""
    with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_S) as response:
        text = response.read().decode("utf-8")
    return parse(text, time.monotonic())


def metrics_url(data_dir: DataDir) -> str:
    """The running daemon's metrics URL; DaemonNotRunningError when it serves none."""
    url = data_dir.read_runtime().get("metrics")
    if not url:
        raise DaemonNotRunningError(
            f"the engine daemon for data_dir={data_dir.root} serves no metrics: restart it "
            f"with `{data_dir.start_command()}`"
        )
    return str(url)


def run(data_dir: DataDir, interval: float = 1.0, out: TextIO | None = None) -> int:
    """The live view until ``q``, Ctrl-C (0) or the daemon's end (1, with a message)."""
    out = out or sys.stdout
    url = metrics_url(data_dir)
    stdin = sys.stdin.fileno()
    interactive = os.isatty(stdin)
    saved = termios.tcgetattr(stdin) if interactive else None
    title = f"engine top  {data_dir.root}  {url}"
    before: Scrape | None = None
    stopped = ""
    try:
        if interactive:
            tty.setcbreak(stdin)
        out.write(_ENTER)
        while True:
            try:
                now = scrape(url)
            except (OSError, ValueError):
                stopped = f"engine top: the daemon stopped ({url} does not answer)"
                return 1
            width, height = shutil.get_terminal_size()
            clock = time.strftime("%H:%M:%S")
            lines = render(before, now, f"{title}  {clock}  (q quits)", color=interactive)
            out.write(_HOME + "\r\n".join(_cut(line, width) for line in lines[:height]))
            out.flush()
            before = now
            deadline = time.monotonic() + interval
            while (left := deadline - time.monotonic()) > 0:
                if not interactive:
                    time.sleep(left)
                    break
                ready, _, _ = select.select([stdin], [], [], left)
                if ready and b"q" in os.read(stdin, 1024).lower():
                    return 0
    except KeyboardInterrupt:
        return 0
    finally:
        if saved is not None:
            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
        with contextlib.suppress(OSError, ValueError):
            out.write(_LEAVE)
            out.flush()
        if stopped:
            print(stopped, file=sys.stderr)


def _cut(line: str, width: int) -> str:
    """``line`` cut to ``width`` visible characters (escape sequences kept whole)."""
    visible, out, i = 0, [], 0
    while i < len(line):
        if line[i] == "\x1b":
            end = line.find("m", i)
            end = len(line) - 1 if end < 0 else end
            out.append(line[i : end + 1])
            i = end + 1
            continue
        if visible < width:
            out.append(line[i])
            visible += 1
        i += 1
    return "".join(out)
