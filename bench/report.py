"""Output of the suite: a markdown table, a JSON file with every run, PNG plots.

Plots use matplotlib's Agg backend (no display needed). Three figures:

- ``throughput.png``: IoT fleet records/s per producer count, per-record and batched, one
  bar per transport (each engine acknowledgement mode is its own transport, drawn first).
- ``latency_cdf.png``: the fraction of records delivered within a latency, per transport,
  one panel per fixed rate (all measured runs merged).
- ``size_sweep.png``: records/s and MB/s against record size, memory copy and page-cache
  write (dashed) as the ceilings.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench import hdr

if TYPE_CHECKING:
    from bench.suite import Row, Settings

__all__ = ["count", "machine_info", "markdown", "plots", "write_json"]

TIMES = "\N{MULTIPLICATION SIGN}"
# Physical limits, drawn dashed in grey: the memory copy any shared-memory transport must
# make, the page-cache write any transport that persists every record must make, and the
# latency of a bare shared-memory hand-over between two spinning processes.
CEILINGS = {"memcopy": "0.35", "pagecache": "0.6", "spin-floor": "0.45"}
PACKAGES = (
    "engine",
    "numpy",
    "posix-ipc",
    "pyzmq",
    "faster-fifo",
    "redis",
    "hiredis",
    "hdrhistogram",
    "matplotlib",
    "pytest-benchmark",
)


def count(value: float | None) -> str:
    """1234567 -> "1.23M"."""
    if value is None:
        return "-"
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            return f"{value / limit:.3g}{suffix}"
    return f"{value:.3g}"


def _ratio(value: float | None) -> str:
    if value is None:
        return ""
    return f" ({value:.2g}{TIMES})" if value < 10 else f" ({value:,.0f}{TIMES})"


def _status(row: Row) -> str:
    if row.status == "not installed":
        return "not installed"
    if row.status == "unsupported":
        return "n/a"
    return "failed"


# --- markdown ---------------------------------------------------------------------------


def markdown(rows: list[Row], statuses: dict[str, dict[str, str]], reference: str,
             settings: Settings) -> str:  # fmt: skip
    """Tables: fleet throughput, latency, size sweep; then what did not run and why."""
    info = machine_info()
    lines = [
        f"## Benchmark ({'quick' if settings.quick else 'full'})",
        "",
        f"Machine: {info['cpu_model']}, {info['cpu_count']} cores, Linux {info['kernel']}, "
        f"Python {info['python']}. Median of {settings.reps} runs; "
        f"{settings.consumers} consumer process(es).",
        f"Ratios ({TIMES}) are to **{reference}** on the same workload"
        + ("" if reference.startswith("engine") or settings.only else _NO_ENGINE)
        + "; for latency, the ratio of p99s.",
        "",
    ]
    transports = _ordered_transports(rows)
    fleet = _workloads(rows, "fleet")
    if fleet:
        lines += ["### IoT fleet: records/s (100-byte records)", ""]
        lines += _pivot(rows, transports, fleet, lambda r: count(r.records_per_s) + _ratio(r.ratio))
    latency = _workloads(rows, "latency")
    if latency:
        lines += ["### End-to-end latency at a fixed rate (µs: p50 / p99 / p99.9)", ""]
        lines += _pivot(rows, transports, latency, _latency_cell)
    sweep = _workloads(rows, "sweep")
    if sweep:
        lines += ["### Record-size sweep, one producer, batched: records/s · MB/s", ""]
        lines += _pivot(
            rows,
            transports,
            sweep,
            lambda r: f"{count(r.records_per_s)} · {r.mb_per_s or 0:,.0f}" + _ratio(r.ratio),
        )
    notes = _notes(rows, statuses, every=not settings.only)
    if notes:
        lines += ["### Not measured", "", *notes, ""]
    return "\n".join(lines)


def _latency_cell(row: Row) -> str:
    p50, p99, p999 = (row.latency_us(p) for p in ("p50", "p99", "p99.9"))
    cell = f"{p50:,.0f} / {p99:,.0f} / {p999:,.0f}" + _ratio(row.ratio)
    if any(r["notes"] for r in row.measured()):
        cell += " †"
    return cell


def _ordered_transports(rows: list[Row]) -> list[str]:
    seen: dict[str, None] = {}
    for row in rows:
        seen.setdefault(row.transport)
    return list(seen)


def _workloads(rows: list[Row], kind: str) -> list[Any]:
    seen: dict[str, Any] = {}
    for row in rows:
        if row.workload.kind == kind:
            seen.setdefault(row.workload.key, row.workload)
    return list(seen.values())


def _pivot(rows: list[Row], transports: list[str], workloads: list[Any], cell: Any) -> list[str]:
    index = {(r.transport, r.workload.key): r for r in rows}
    lines = [
        "| transport | " + " | ".join(w.label for w in workloads) + " |",
        "|---|" + "---:|" * len(workloads),
    ]
    for name in transports:
        cells = []
        for workload in workloads:
            row = index.get((name, workload.key))
            if row is None:
                cells.append("")
            elif row.status == "ok":
                cells.append(cell(row))
            else:
                cells.append(_status(row))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if any(
        r.status == "ok" and any(run["notes"] for run in r.measured())
        for r in rows
        if r.workload.key in {w.key for w in workloads}
    ):
        lines += ["", "† the producers could not send at the rate asked for (see the JSON)."]
    lines.append("")
    return lines


#: Said only of a run of every transport (with --only, the engine may just not be asked for).
_NO_ENGINE = " (no engine transport is registered yet)"


def _notes(rows: list[Row], statuses: dict[str, dict[str, str]], every: bool) -> list[str]:
    notes: dict[str, None] = {}
    for name, status in statuses.items():
        if status["status"] != "available":
            notes.setdefault(f"- **{name}**: {status['status']}")
    # One line per transport and reason, naming every workload it holds for.
    labels: dict[tuple[str, str, str], list[str]] = {}
    for row in rows:
        if row.status in ("unsupported", "failed"):
            labels.setdefault((row.transport, row.status, row.reason or ""), []).append(
                row.workload.label
            )
    for (transport, outcome, reason), workloads in labels.items():
        notes.setdefault(f"- **{transport}**, {', '.join(workloads)}: {outcome}: {reason}")
    if every and not any(name.startswith("engine") for name in statuses):
        notes.setdefault(
            '- **engine** (acks=0, acks=1, acks="all"): no engine transport is registered yet '
            "(bench/transports/engine_*.py)"
        )
    return list(notes)


# --- JSON ---------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    """CPU, cores, kernel, Python, package versions and the limits that shape the results."""
    cpu_model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions: dict[str, str | None] = {}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    redis_server = shutil.which("redis-server")
    if redis_server:
        completed = subprocess.run(
            [redis_server, "--version"], capture_output=True, text=True, check=False
        )
        versions["redis-server"] = completed.stdout.strip()
    limits = {}
    for name in ("msg_max", "msgsize_max"):
        with contextlib.suppress(OSError, ValueError):
            limits[f"mqueue.{name}"] = int(Path("/proc/sys/fs/mqueue", name).read_text())
    return {
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "kernel": platform.release(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
        "load_average": os.getloadavg(),
        "packages": versions,
        "limits": limits,
    }


def write_json(path: Path, rows: list[Row], statuses: dict[str, dict[str, str]],
               reference: str, settings: Settings, started: float,
               argv: Sequence[str] | None) -> None:  # fmt: skip
    """Machine info, parameters, the reference, every transport's status and every run."""
    from dataclasses import asdict

    document = {
        "suite": "engine bench",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "elapsed_s": time.time() - started,
        "command": [sys.argv[0], *(argv if argv is not None else sys.argv[1:])],
        "machine": machine_info(),
        "parameters": asdict(settings),
        "reference": reference,
        "transports": statuses,
        "rows": [row.to_json() for row in rows],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=1) + "\n")


# --- plots --------------------------------------------------------------------------------


def plots(directory: Path, rows: list[Row], reference: str) -> list[Path]:
    """Write the three figures into ``directory``; return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for kind, draw in (
        ("fleet", _plot_throughput),
        ("latency", _plot_latency),
        ("sweep", _plot_sweep),
    ):
        ok = [r for r in rows if r.workload.kind == kind and r.status == "ok"]
        if ok:
            written.append(draw(directory, ok, reference))
    return written


def _colors(transports: list[str]) -> dict[str, Any]:
    import matplotlib.pyplot as plt

    # The engine's own API in reds, the engine through its Kafka listener in oranges,
    # Kafka itself in purples; the other peers in tab10's colours.
    families = {"engine-kafka": "Oranges", "engine": "Reds", "kafka": "Purples"}
    colors: dict[str, Any] = {}
    for prefix, cmap in families.items():
        members = [t for t in transports if t.startswith(prefix) and t not in colors]
        shades = plt.get_cmap(cmap)
        for i, name in enumerate(members):
            colors[name] = shades(0.55 + 0.4 * i / max(len(members) - 1, 1))
    peers = [t for t in transports if t not in colors]
    tab = plt.get_cmap("tab10")
    for i, name in enumerate(peers):
        colors[name] = CEILINGS.get(name) or tab([0, 2, 9, 6, 5, 8][i % 6])
    return colors


def _plot_throughput(directory: Path, rows: list[Row], reference: str) -> Path:
    import matplotlib.pyplot as plt

    transports = _ordered_transports(rows)
    colors = _colors(transports)
    modes = [("per-record", 1), ("batched", 0)]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5), sharey=True)
    width = 0.8 / max(len(transports), 1)
    for ax, (mode, per_record) in zip(axes, modes, strict=True):
        selected = [r for r in rows if (r.workload.batch == 1) == bool(per_record)]
        producers = sorted({r.workload.producers for r in selected})
        for i, name in enumerate(transports):
            xs, ys = [], []
            for j, p in enumerate(producers):
                for r in selected:
                    if r.transport == name and r.workload.producers == p and r.records_per_s:
                        xs.append(j + (i - (len(transports) - 1) / 2) * width)
                        ys.append(r.records_per_s)
            ax.bar(xs, ys, width, label=name, color=colors[name])
        ax.set_xticks(range(len(producers)), [f"P={p}" for p in producers])
        ax.set_yscale("log")
        ax.set_title(f"{mode} sends")
        ax.set_xlabel("producer processes (one consumer process)")
        ax.grid(axis="y", which="both", alpha=0.3)
    axes[0].set_ylabel("records/s (median)")
    axes[1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    engine = any(t.startswith("engine") for t in transports)
    fig.suptitle(
        "IoT fleet, 100-byte records: throughput per acknowledgement mode, peers beside it"
        + ("" if engine else "\n(no engine transport registered yet)")
    )
    fig.tight_layout()
    path = directory / "throughput.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_latency(directory: Path, rows: list[Row], reference: str) -> Path:
    import matplotlib.pyplot as plt

    workloads = _workloads(rows, "latency")
    transports = _ordered_transports(rows)
    colors = _colors(transports)
    fig, axes = plt.subplots(1, len(workloads), figsize=(6.5 * len(workloads), 4.8), squeeze=False)
    for ax, workload in zip(axes[0], workloads, strict=True):
        for row in rows:
            if row.workload.key != workload.key:
                continue
            histogram = row.merged_histogram()
            if histogram is None:
                continue
            xs, ys = hdr.cdf(histogram)
            p99 = row.latency_us("p99") or 0
            ax.step(xs, ys, where="post", color=colors[row.transport],
                    ls="--" if row.transport in CEILINGS else "-",
                    label=f"{row.transport} (p99 {p99:,.0f} µs)")  # fmt: skip
        ax.set_xscale("log")
        ax.set_ylim(0, 1.0)
        ax.set_xlabel("end-to-end latency, µs (log)")
        ax.set_ylabel("fraction of records")
        ax.set_title(f"latency CDF at {workload.label}")
        for level in (0.5, 0.99):
            ax.axhline(level, color="0.7", lw=0.8, ls=":")
        ax.grid(which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path = directory / "latency_cdf.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_sweep(directory: Path, rows: list[Row], reference: str) -> Path:
    import matplotlib.pyplot as plt

    transports = _ordered_transports(rows)
    colors = _colors(transports)
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    for name in transports:
        mine = sorted(
            (r for r in rows if r.transport == name and r.records_per_s),
            key=lambda r: r.workload.record_size,
        )
        if not mine:
            continue
        sizes = [r.workload.record_size for r in mine]
        style = "--" if name in CEILINGS else "-"
        left.plot(sizes, [r.records_per_s for r in mine], style, marker="o",
                  color=colors[name], label=name)  # fmt: skip
        right.plot(sizes, [r.mb_per_s for r in mine], style, marker="o",
                   color=colors[name], label=name)  # fmt: skip
    for ax, unit in ((left, "records/s"), (right, "MB/s")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("record size, bytes")
        ax.set_ylabel(f"{unit} (median)")
        ax.grid(which="both", alpha=0.3)
    right.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle("Record-size sweep: one producer, one consumer, batched sends")
    fig.tight_layout()
    path = directory / "size_sweep.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
