"""The benchmark suite: every registered transport over the IoT workloads, side by side.

    python bench/suite.py [--quick] [--json out.json] [--plot out/] [--only NAME,...]

``engine bench`` calls ``main(argv)``. See bench/README.md for the workloads and figures.

Each (transport, workload) pair is measured as: warm-up runs that grow until one lasts a
tenth of the target duration (they also size the measured runs), then ``--reps`` measured
runs of about ``--duration`` seconds each; the figure reported is their median. Latency
runs are paced at a fixed rate and are not sized: rate x duration records.
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: python bench/suite.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import hdr, report
from bench.transports import BROKEN, discover
from bench.transports.base import RunSpec, Transport, Unsupported
from bench.transports.harness import SUSTAINED, RunError, RunResult, Session, TransportBroken
from bench.workload import IOT_RECORD_SIZE, sweep_sizes

__all__ = ["Row", "Settings", "Workload", "main", "plan", "run_suite"]

#: Ratios are to this transport when it is registered and can run here.
PREFERRED_REFERENCE = "engine-acks1"
#: Otherwise to this one.
FALLBACK_REFERENCE = "mp-queue"
#: Records per send_batch call in the batched workloads.
BATCH_RECORDS = 1000
#: A batch holds at most this many bytes (large records get smaller batches).
BATCH_BYTES = 256 << 10
#: Measured runs move at most this many bytes / records, whatever the warm-up suggests.
#: (A workload's runs together then stay within what Linux lets a write leave dirty in
#: the page cache before it starts writing back, 10% of the free memory by default:
#: the engine's runs are not timed against the disk.)
MAX_RUN_BYTES = 512 << 20
MAX_RUN_RECORDS = 50_000_000
#: Warm-up runs grow tenfold while their rate grows more than this (module docstring).
WARMUP_GROWTH = 2.0


@dataclass(frozen=True)
class Workload:
    """One column of the results: what is sent, by how many processes, how fast."""

    key: str
    kind: str  # "fleet", "latency" or "sweep"
    label: str
    producers: int
    consumers: int
    record_size: int
    batch: int
    rate: float | None = None

    def spec(self, records_per_producer: int, run_id: int) -> RunSpec:
        return RunSpec(
            workload=self.kind,
            producers=self.producers,
            consumers=self.consumers,
            records_per_producer=records_per_producer,
            record_size=self.record_size,
            batch=self.batch,
            rate=self.rate,
            run_id=run_id,
        )


@dataclass
class Settings:
    quick: bool = False
    reps: int = 5
    duration_s: float = 1.0
    latency_duration_s: float = 2.0
    consumers: int = 1
    start_method: str = "fork"
    workloads: tuple[str, ...] = ("fleet", "latency", "sweep")
    only: tuple[str, ...] = ()
    reference: str | None = None


@dataclass
class Row:
    """The result of one transport on one workload: every run and their median."""

    workload: Workload
    transport: str
    status: str = "ok"  # ok, not installed, unsupported, failed
    reason: str = ""
    runs: list[dict[str, Any]] = field(default_factory=list)
    ratio: float | None = None

    def measured(self) -> list[dict[str, Any]]:
        return [r for r in self.runs if not r["warmup"]]

    @property
    def records_per_s(self) -> float | None:
        runs = self.measured()
        return statistics.median(r["records_per_s"] for r in runs) if runs else None

    @property
    def mb_per_s(self) -> float | None:
        runs = self.measured()
        return statistics.median(r["mb_per_s"] for r in runs) if runs else None

    def latency_us(self, percentile: str) -> float | None:
        runs = [r for r in self.measured() if r.get("latency_us")]
        if not runs:
            return None
        return float(statistics.median(r["latency_us"][percentile] for r in runs))

    def merged_histogram(self) -> Any:
        encoded = [r["latency_hdr"] for r in self.measured() if r.get("latency_hdr")]
        return hdr.merge(encoded) if encoded else None

    def to_json(self) -> dict[str, Any]:
        return {
            "workload": dataclasses.asdict(self.workload),
            "transport": self.transport,
            "status": self.status,
            "reason": self.reason,
            "records_per_s": self.records_per_s,
            "mb_per_s": self.mb_per_s,
            "latency_us": {p: self.latency_us(p) for p in ("p50", "p99", "p99.9")}
            if self.workload.kind == "latency"
            else None,
            "ratio_to_reference": self.ratio,
            "runs": self.runs,
        }


def plan(settings: Settings) -> list[Workload]:
    """The workloads of a quick or a full run, filtered by ``settings.workloads``."""
    c = settings.consumers
    size = IOT_RECORD_SIZE
    workloads: list[Workload] = []
    # The quick run keeps one workload per target: per record, batched, fan-in (P=4
    # per record), latency, 1 KiB; and 64 KiB for the large end.
    for p in (1, 4) if settings.quick else (1, 4, 16):
        workloads.append(
            Workload(f"fleet-p{p}-record", "fleet", f"P={p} per-record", p, c, size, 1)
        )
        if p == 1 or not settings.quick:
            workloads.append(
                Workload(f"fleet-p{p}-batch", "fleet", f"P={p} batched", p, c, size, BATCH_RECORDS)
            )
    for rate in (20_000,) if settings.quick else (20_000, 100_000):
        label = f"{rate // 1000}k records/s"
        workloads.append(Workload(f"latency-{rate}", "latency", label, 1, c, size, 1, rate))
    for record_size in sweep_sizes(settings.quick):
        batch = max(1, min(BATCH_RECORDS, BATCH_BYTES // record_size))
        label = f"{record_size} B batched"
        workloads.append(Workload(f"sweep-{record_size}", "sweep", label, 1, c, record_size, batch))
    return [w for w in workloads if w.kind in settings.workloads]


class Progress:
    """One line per run on stderr, with elapsed and estimated remaining time."""

    def __init__(self, planned: int, stream: Any = sys.stderr) -> None:
        self.planned = max(planned, 1)
        self.done = 0
        self.start = time.monotonic()
        self.stream = stream

    def step(self, text: str, count: bool = True) -> None:
        if count:
            self.done += 1
        elapsed = time.monotonic() - self.start
        left = elapsed / max(self.done, 1) * max(self.planned - self.done, 0)
        print(
            f"[{self.done:3d}/{self.planned}  {_clock(elapsed)} elapsed, ~{_clock(left)} left] "
            f"{text}",
            file=self.stream,
            flush=True,
        )


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}:{seconds:02d}"


class _Runs:
    """Numbers each workload's session (queue, socket and topic names use it)."""

    def __init__(self) -> None:
        self.next_id = 0

    def __call__(self) -> int:
        self.next_id += 1
        return self.next_id


def _record(result: RunResult, spec: RunSpec, warmup: bool) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "warmup": warmup,
        "producers": spec.producers,
        "consumers": spec.consumers,
        "records_per_producer": spec.records_per_producer,
        "record_size": spec.record_size,
        "batch": spec.batch,
        "rate": spec.rate,
        "records": result.records,
        "wall_s": result.wall_s,
        "send_s": result.send_s,
        "records_per_s": result.records_per_s,
        "mb_per_s": result.mb_per_s,
        "notes": result.notes,
        "max_late_s": result.max_late_s,
    }
    if result.latency_hdr is not None:
        entry["latency_us"] = hdr.percentiles_us(hdr.decode(result.latency_hdr))
        entry["latency_hdr"] = result.latency_hdr
    return entry


def _measure(
    transport: Transport,
    workload: Workload,
    settings: Settings,
    ctx: Any,
    run_ids: _Runs,
    progress: Progress,
) -> Row:
    if workload.kind == "latency" and not transport.supports_latency:
        raise Unsupported("no end-to-end latency")
    row = Row(workload, transport.name)
    with Session(transport, workload.spec(0, run_ids()), ctx) as session:
        _measure_runs(session, row, settings, progress)
    return row


def _measure_runs(session: Session, row: Row, settings: Settings, progress: Progress) -> None:
    """The warm-up runs, then ``settings.reps`` measured runs, all in one session."""
    workload = row.workload
    name = f"{row.transport:<18} {workload.label:<20}"

    def once(records_per_producer: int, warmup: bool, timeout_s: float) -> RunResult:
        result = session.run(records_per_producer, timeout_s)
        spec = dataclasses.replace(session.spec, records_per_producer=records_per_producer)
        row.runs.append(_record(result, spec, warmup))
        return result

    if workload.kind == "latency":
        assert workload.rate is not None
        per_producer = int(workload.rate * settings.latency_duration_s) // workload.producers
        # Warm-up: a tenth of a run. A transport that cannot send at the rate (Redis
        # Streams, one round trip per record) gets runs sized by what it sent, so that
        # they last about as long as the others' instead of timing out; its cells are
        # flagged (the producers' rate is in the notes).
        probe = once(max(per_producer // 10, 1), True, 30 + 5 * settings.latency_duration_s)
        sent_per_s = probe.records / probe.send_s if probe.send_s > 0 else workload.rate
        sized = ""
        if sent_per_s < SUSTAINED * workload.rate:
            records = int(sent_per_s * settings.latency_duration_s)
            per_producer = max(records // workload.producers, 1)
            sized = f" of {report.count(workload.rate)}/s asked: runs sized to that"
        progress.step(f"{name} warm-up: sent {report.count(sent_per_s)}/s{sized}")
        for rep in range(settings.reps):
            result = once(per_producer, False, 30 + 5 * settings.latency_duration_s)
            assert result.latency_hdr is not None
            lat = hdr.percentiles_us(hdr.decode(result.latency_hdr))
            achieved = result.records_per_s
            notes = f"  ({'; '.join(result.notes)})" if result.notes else ""
            progress.step(
                f"{name} rep {rep + 1}/{settings.reps}: p50 {lat['p50']:.0f} µs, "
                f"p99 {lat['p99']:.0f} µs, p99.9 {lat['p99.9']:.0f} µs at "
                f"{report.count(achieved)}/s{notes}"
            )
        return

    batch = workload.batch
    # Warm-up: grow until a run lasts a tenth of the target and its rate no longer grows
    # with its size (a run of a transport that batches for milliseconds, such as a Kafka
    # client's, lasts that long at any size: its rate then is its latency's), or a run
    # after the first lasts the whole target (the first can be slow once: a new topic's
    # leaders); the last one's rate sizes the real runs.
    per_producer = max(batch * 4, 2000 // workload.producers // batch * batch, batch)
    previous = None
    while True:
        result = once(per_producer, True, 20)
        rate = result.records_per_s
        steady = previous is not None and rate < WARMUP_GROWTH * previous
        if (
            (result.wall_s >= settings.duration_s / 10 and steady)
            or (result.wall_s >= settings.duration_s and previous is not None)
            or per_producer * workload.producers >= MAX_RUN_RECORDS
        ):
            break
        previous = rate
        per_producer *= 10
    progress.step(f"{name} warm-up: {report.count(rate)}/s")
    total = rate * settings.duration_s
    total = min(total, MAX_RUN_RECORDS, MAX_RUN_BYTES / workload.record_size)
    per_producer = max(int(total) // workload.producers // batch * batch, batch)
    for rep in range(settings.reps):
        result = once(per_producer, False, 30 + 20 * settings.duration_s)
        progress.step(
            f"{name} rep {rep + 1}/{settings.reps}: {report.count(result.records_per_s)}/s, "
            f"{result.mb_per_s:,.0f} MB/s"
        )


def run_suite(
    settings: Settings, progress_stream: Any = sys.stderr
) -> tuple[list[Row], dict[str, dict[str, str]], str]:
    """Measure; return the rows, every transport's status, and the reference's name."""
    registry = discover()
    names = list(registry)
    if settings.only:
        unknown = [n for n in settings.only if n not in registry]
        if unknown:
            raise SystemExit(f"unknown transport: {', '.join(unknown)}; known: {', '.join(names)}")
        names = [n for n in names if n in settings.only]
    workloads = plan(settings)
    statuses: dict[str, dict[str, str]] = {}
    runnable: list[str] = []
    for name in names:
        cls = registry[name]
        missing = cls.missing()
        statuses[name] = {"description": cls.description, "status": missing or "available"}
        if missing is None:
            runnable.append(name)
    for module, error in BROKEN.items():
        statuses[f"module {module}"] = {"description": "", "status": f"import failed: {error}"}

    reference = _reference(settings, registry, runnable)
    ctx = multiprocessing.get_context(settings.start_method)
    planned = len(runnable) * len(workloads) * (settings.reps + 1)  # a warm-up each
    progress = Progress(planned, progress_stream)
    run_ids = _Runs()
    rows: list[Row] = []
    # Each transport is closed once the next one has opened (before it measures), so
    # that transports sharing a server keep it: the engine modes share one daemon.
    previous: Transport | None = None
    with tempfile.TemporaryDirectory(prefix="engine-bench-") as tmp:
        try:
            for name in names:
                if name not in runnable:
                    rows += [
                        Row(w, name, "not installed", statuses[name]["status"]) for w in workloads
                    ]
                    progress.step(f"{name}: {statuses[name]['status']}", count=False)
                    continue
                transport = registry[name]()
                try:
                    failure = _open(transport, Path(tmp), progress)
                finally:
                    if previous is not None:
                        previous.close()
                    previous = transport
                if failure is None:
                    rows += _measure_transport(
                        transport, workloads, settings, ctx, run_ids, progress
                    )
                else:
                    rows += [Row(w, name, "failed", failure) for w in workloads]
        finally:
            if previous is not None:
                previous.close()
    _ratios(rows, reference)
    return rows, statuses, reference


def _open(transport: Transport, tmp: Path, progress: Progress) -> str | None:
    """Open ``transport`` in its own directory under ``tmp``; why it cannot start, or None."""
    workdir = tmp / transport.name
    workdir.mkdir()
    try:
        transport.open(workdir)
    except Exception as error:  # noqa: BLE001 - a transport that cannot start is reported, not fatal
        failure = f"could not start: {_first_line(error)}"
        progress.step(f"{transport.name}: {failure}", count=False)
        return failure
    return None


def _measure_transport(
    transport: Transport,
    workloads: list[Workload],
    settings: Settings,
    ctx: Any,
    run_ids: _Runs,
    progress: Progress,
) -> list[Row]:
    """Every workload on an opened transport (run_suite closes it, also on errors)."""
    rows: list[Row] = []
    for index, workload in enumerate(workloads):
        try:
            rows.append(_measure(transport, workload, settings, ctx, run_ids, progress))
        except Unsupported as error:
            rows.append(Row(workload, transport.name, "unsupported", str(error)))
            progress.step(f"{transport.name} {workload.label}: n/a: {error}", count=False)
        except RunError as error:
            rows.append(Row(workload, transport.name, "failed", _first_line(error)))
            progress.step(f"{transport.name} {workload.label}: FAILED: {error}", count=False)
            if isinstance(error, TransportBroken):
                skipped = f"not run: {_first_line(error)}"
                rows += [Row(w, transport.name, "failed", skipped) for w in workloads[index + 1 :]]
                break
    return rows


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


def _reference(
    settings: Settings, registry: dict[str, type[Transport]], runnable: list[str]
) -> str:
    if settings.reference:
        return settings.reference
    if PREFERRED_REFERENCE in runnable:
        return PREFERRED_REFERENCE
    return FALLBACK_REFERENCE


def _ratios(rows: list[Row], reference: str) -> None:
    """Each row's figure divided by the reference's on the same workload."""
    by_workload = {r.workload.key: r for r in rows if r.transport == reference and r.status == "ok"}
    for row in rows:
        ref = by_workload.get(row.workload.key)
        if ref is None or row.status != "ok":
            continue
        if row.workload.kind == "latency":
            mine, theirs = row.latency_us("p99"), ref.latency_us("p99")
        else:
            mine, theirs = row.records_per_s, ref.records_per_s
        if mine is not None and theirs:
            row.ratio = mine / theirs


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="engine bench",
        description="Benchmark the engine side by side with multiprocessing.Queue, "
        "faster-fifo, pyzmq, POSIX message queues, Redis Streams, memory copy, a "
        "page-cache write and a bare shared-memory hand-over (the latency floor).",
    )
    parser.add_argument("--quick", action="store_true", help="about a minute: one "
                        "workload per target, 3 runs each, shorter runs")  # fmt: skip
    parser.add_argument("--json", type=Path, metavar="FILE", help="write every run as JSON")
    parser.add_argument("--plot", type=Path, metavar="DIR", help="write PNG plots into DIR")
    parser.add_argument("--markdown", type=Path, metavar="FILE", help="also write the table")
    parser.add_argument("--only", default="", metavar="NAME,...", help="only these transports")
    parser.add_argument("--workloads", default="fleet,latency,sweep", metavar="KIND,...",
                        help="fleet, latency, sweep (default: all)")  # fmt: skip
    parser.add_argument("--reps", type=int, help="measured runs per figure (3 quick, 5 full)")
    parser.add_argument("--duration", type=float, help="seconds per measured run "
                        "(0.12 quick, 1.0 full)")  # fmt: skip
    parser.add_argument("--latency-duration", type=float, metavar="S", help="seconds per "
                        "latency run (0.25 quick, 2.0 full)")  # fmt: skip
    parser.add_argument("--consumers", type=int, default=1, help="consumer processes (1)")
    parser.add_argument("--reference", help=f"transport for the ratio column "
                        f"(default {PREFERRED_REFERENCE}, else {FALLBACK_REFERENCE})")  # fmt: skip
    parser.add_argument("--start-method", default="fork", choices=("fork", "spawn", "forkserver"))
    parser.add_argument("--list", action="store_true", help="list transports and exit")
    return parser.parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    quick = bool(args.quick)
    return Settings(
        quick=quick,
        reps=args.reps or (3 if quick else 5),
        duration_s=args.duration or (0.12 if quick else 1.0),
        latency_duration_s=args.latency_duration or (0.25 if quick else 2.0),
        consumers=args.consumers,
        start_method=args.start_method,
        workloads=tuple(w for w in args.workloads.split(",") if w),
        only=tuple(n for n in args.only.split(",") if n),
        reference=args.reference,
    )


def main(argv: Sequence[str] | None = None, print_: Callable[[str], None] = print) -> int:
    """Run the suite as ``engine bench [options]``; returns the process exit code."""
    args = parse_args(argv)
    if args.list:
        for name, cls in discover().items():
            print_(f"{name:<20} {cls.missing() or 'available':<40} {cls.description}")
        for module, error in BROKEN.items():
            print_(f"{'module ' + module:<20} import failed: {error}")
        return 0
    settings = settings_from(args)
    started = time.time()
    try:
        rows, statuses, reference = run_suite(settings)
    except SystemExit as error:  # an unknown transport name
        print_(str(error))
        return 2
    except KeyboardInterrupt:
        print_("interrupted")
        return 130
    except Exception:  # noqa: BLE001 - the top level prints the traceback and exits 1
        traceback.print_exc()
        return 1
    table = report.markdown(rows, statuses, reference, settings)
    print_(table)
    if args.markdown:
        args.markdown.write_text(table)
    if args.json:
        report.write_json(args.json, rows, statuses, reference, settings, started, argv)
        print(f"wrote {args.json}", file=sys.stderr)
    if args.plot:
        for path in report.plots(args.plot, rows, reference):
            print(f"wrote {path}", file=sys.stderr)
    return 1 if any(r.status == "failed" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
