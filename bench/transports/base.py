"""The Transport interface: what a message-passing system must provide to be benchmarked.

A transport is anything that moves records from producer processes to consumer processes
on this host: multiprocessing.Queue, a ZeroMQ socket, a Redis stream, or the engine. The
suite only ever talks to it through the four small classes below.

Lifecycle, and which process calls what::

    parent (the suite)                    children (started by bench.transports.harness)
    ------------------                    ----------------------------------------------
    t = Transport()
    t.open(workdir)      once: servers
      for every workload (a harness.Session):
        t.prepare(spec, ctx)  queues  -->  C consumers: c = t.consumer(spec, i)
                                                        for every run: c.poll(timeout_s) ...
                                                        c.close()
                                      -->  P producers: p = t.producer(spec, i)
                                                        for every run:
                                                          p.send(value, key) or
                                                          p.send_batch(values, keys) ...
                                                          p.flush()
                                                        p.close()
        t.finish()            drop queues
    t.close()            once, always (finally): stop servers

A workload's runs (warm-ups, then the measured ones) go back to back through the same
queues and clients; ``spec.records_per_producer`` is each run's own (the spec given to
``prepare``, ``producer`` and ``consumer`` does not carry it). Consumers are created (and
have subscribed, bound or connected) before any producer is created; producers start
each run together, once every record of the run before has arrived. The transport object travels to
the children by fork inheritance, or by pickling under the spawn start method; attributes
listed in ``parent_only`` (server handles, clients) are left behind.

Records: every record starts with its send time, a little-endian int64 from
``time.perf_counter_ns()`` (CLOCK_MONOTONIC, the same clock in every process on Linux);
see bench.workload. A transport carries records as opaque bytes and never looks inside.

``Consumer.poll`` returns a list, either of records (each bytes-like: bytes, bytearray,
memoryview or an object with the buffer protocol whose first 8 bytes are the send time), or
of numpy arrays of ``spec.dtype``, each holding a batch of records. One poll returns one kind;
an empty list means nothing arrived within the timeout.

To add a transport: write ``bench/transports/<module>.py`` with a subclass decorated with
``@register``; the suite imports every module of the package. A transport that cannot run
here says why in ``missing()`` ("not installed: pip install pyzmq"); one that cannot run a
given workload raises ``Unsupported`` from ``prepare``.
"""

from __future__ import annotations

import importlib.util
import shutil
from abc import ABC, abstractmethod
from dataclasses import dataclass
from multiprocessing.context import BaseContext
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np

from bench.workload import record_dtype

__all__ = [
    "REGISTRY",
    "Consumer",
    "Producer",
    "RunSpec",
    "Transport",
    "Unsupported",
    "register",
    "requires_executable",
    "requires_module",
]


class Unsupported(Exception):
    """This transport cannot run this workload (for example a record over its message limit)."""


@dataclass(frozen=True)
class RunSpec:
    """One run: P producers each sending ``records_per_producer`` records to C consumers.

    ``batch == 1`` means one ``send`` call per record; ``batch > 1`` means ``send_batch``
    calls of that many records each (``records_per_producer`` is a multiple of it).
    ``rate`` (records/s over all producers) paces the producers for a latency run; None means
    as fast as possible. ``partitions`` is the topic's partition count, for transports that
    have partitions (the engine, Redis streams); others may ignore it. ``run_id`` is unique
    within one suite, for naming queues and sockets.
    """

    workload: str
    producers: int
    consumers: int
    records_per_producer: int
    record_size: int
    batch: int = 1
    rate: float | None = None
    partitions: int = 4
    run_id: int = 0

    @property
    def total_records(self) -> int:
        return self.producers * self.records_per_producer

    @property
    def dtype(self) -> np.dtype[Any]:
        """The numpy structured dtype of one record (``itemsize == record_size``)."""
        return record_dtype(self.record_size)

    @property
    def mode(self) -> str:
        return "per-record" if self.batch == 1 else "batched"


class Producer(ABC):
    """The sending end, used by one producer process. Never shared between processes."""

    @abstractmethod
    def send(self, value: bytes, key: bytes) -> None:
        """Send one record; may buffer (``flush`` pushes buffers out)."""

    def send_batch(self, values: np.ndarray, keys: np.ndarray) -> None:
        """Send ``len(values)`` records of ``spec.dtype`` (keys: an ``S16`` array, same length).

        The default sends them one at a time; transports that can ship a batch override it.
        """
        for value, key in zip(values, keys, strict=True):
            self.send(value.tobytes(), bytes(key))

    def push(self) -> None:
        """Hand every buffered record to the transport, waiting for no acknowledgement.

        Latency runs call it after each send. The default is ``flush``.
        """
        self.flush()

    def flush(self) -> None:  # noqa: B027 - optional hook, empty by default
        """Hand every buffered record to the transport and wait for what the transport
        acknowledges; each producer calls it once, after its last send."""

    def close(self) -> None:  # noqa: B027 - optional hook, empty by default
        """Release resources; records already sent must still reach the consumers."""


class Consumer(ABC):
    """The receiving end, used by one consumer process."""

    @abstractmethod
    def poll(self, timeout_s: float) -> list[Any]:
        """Wait up to ``timeout_s`` for records; return what arrived (see module docstring)."""

    def close(self) -> None:  # noqa: B027 - optional hook, empty by default
        """Release resources."""


class Transport(ABC):
    """A way of moving records between processes; one instance per suite run.

    Subclasses set ``name`` (the registry key and the label in tables and plots) and
    ``description``; ``order`` sorts tables and plots (engine transports 0-9, peers 10-89,
    physical limits 90-99).
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    order: ClassVar[int] = 50
    #: False for transports that have no meaningful end-to-end latency (memory copy).
    supports_latency: ClassVar[bool] = True
    #: Attributes that stay in the parent when the transport is pickled for spawn.
    parent_only: ClassVar[tuple[str, ...]] = ()
    #: True for a transport that measures a server the suite does not start (named by
    #: the environment): the test suite skips it, in CI too, when none is named.
    external: ClassVar[bool] = False
    #: The workloads (keys) the test suite's quick check runs on this transport (None:
    #: all; empty: none, and the transport is not even opened then);
    #: ``pytest bench/ --benchmark-only`` measures every workload whatever it says.
    checked: ClassVar[tuple[str, ...] | None] = None

    @classmethod
    def missing(cls) -> str | None:
        """None if this transport can run here, else what is missing and how to install it."""
        return None

    def open(self, workdir: Path) -> None:  # noqa: B027 - optional hook, empty by default
        """Once, before any run: start servers. ``workdir`` is a private temporary directory."""

    def close(self) -> None:  # noqa: B027 - optional hook, empty by default
        """Once, after the last run, also after failures (and after a failed open): stop
        servers, remove files. The suite closes a transport once the next one has opened
        (before that one measures), so that transports may share a server."""

    def prepare(self, spec: RunSpec, ctx: BaseContext) -> None:  # noqa: B027 - optional hook
        """Before each workload's runs, in the parent: create queues (with ``ctx``), clear
        server state."""

    def finish(self) -> None:  # noqa: B027 - optional hook, empty by default
        """After each workload's runs, in the parent, also after failures: drop what
        ``prepare`` made."""

    @abstractmethod
    def producer(self, spec: RunSpec, index: int) -> Producer:
        """In producer process ``index`` (0..P-1): connect and return the sending end."""

    @abstractmethod
    def consumer(self, spec: RunSpec, index: int) -> Consumer:
        """In consumer process ``index`` (0..C-1): subscribe and return the receiving end."""

    def run_in_process(self, spec: RunSpec) -> dict[str, int] | None:
        """Optionally measure without child processes (memory copy does).

        Return None to use producer and consumer processes (the default), or a report
        ``{"records": n, "first_send_ns": t0, "last_recv_ns": t1}``.
        """
        return None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for attribute in self.parent_only:
            state.pop(attribute, None)
        return state


T = TypeVar("T", bound=type[Transport])

#: Every registered transport class by name, in registration order.
REGISTRY: dict[str, type[Transport]] = {}


def register(cls: T) -> T:
    """Class decorator: make a transport known to the suite under ``cls.name``."""
    if cls.name in REGISTRY and REGISTRY[cls.name] is not cls:
        raise ValueError(f"transport name registered twice: name={cls.name}")
    REGISTRY[cls.name] = cls
    return cls


def requires_module(module: str, install: str) -> str | None:
    """A ``missing()`` helper: None if ``module`` can be imported, else the install hint."""
    if importlib.util.find_spec(module) is None:
        return f"not installed: {install}"
    return None


def requires_executable(program: str, install: str) -> str | None:
    """A ``missing()`` helper: None if ``program`` is on PATH, else the install hint."""
    if shutil.which(program) is None:
        return f"not installed: {install}"
    return None
