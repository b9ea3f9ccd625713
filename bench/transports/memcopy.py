"""The physical limit: how fast one core copies memory with numpy (``np.copyto``).

Not a transport that moves records between processes: it copies the run's bytes, in chunks
of at least 1 MiB, from one 64 MiB buffer into another in the suite's own process, which is
the least any shared-memory transport must do (write each byte once). The records/s figure
is that bandwidth divided by the record size.
"""

from __future__ import annotations

import time

import numpy as np

from bench.transports.base import Consumer, Producer, RunSpec, Transport, Unsupported, register

BUFFER_BYTES = 64 << 20
MIN_CHUNK_BYTES = 1 << 20


def ceiling_sizes(spec: RunSpec, what: str) -> tuple[int, int]:
    """The bytes of an in-process ceiling run and its chunk (whole records, at least
    MIN_CHUNK_BYTES); a latency workload is unsupported."""
    if spec.rate is not None:
        raise Unsupported(f"{what} has no end-to-end latency")
    chunk = max(spec.record_size * spec.batch, MIN_CHUNK_BYTES)
    return spec.total_records * spec.record_size, chunk - chunk % spec.record_size


@register
class MemoryCopy(Transport):
    name = "memcopy"
    description = "np.copyto between two 64 MiB buffers in one process (bandwidth ceiling)"
    order = 90
    supports_latency = False

    def run_in_process(self, spec: RunSpec) -> dict[str, int] | None:
        total, chunk = ceiling_sizes(spec, "a memory copy")
        size = max(BUFFER_BYTES, 2 * chunk)
        source, target = self._buffers(size)
        offsets = range(0, size - chunk + 1, chunk)
        copied = 0
        start = time.perf_counter_ns()
        while copied < total:
            for offset in offsets:
                length = min(chunk, total - copied)
                np.copyto(target[offset : offset + length], source[offset : offset + length])
                copied += length
                if copied >= total:
                    break
        end = time.perf_counter_ns()
        return {"records": copied // spec.record_size, "first_send_ns": start, "last_recv_ns": end}

    def _buffers(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Two buffers of ``size`` bytes, every page touched; kept for the next run."""
        buffers: tuple[np.ndarray, np.ndarray] | None = getattr(self, "buffers", None)
        if buffers is not None and len(buffers[0]) == size:
            return buffers
        buffers = self.buffers = None  # let the old pair go before making the new one
        source = np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8)
        target = np.zeros(size, dtype=np.uint8)
        np.copyto(target, source)
        self.buffers = (source, target)
        return self.buffers

    def producer(self, spec: RunSpec, index: int) -> Producer:
        raise Unsupported("memcopy runs in process")

    def consumer(self, spec: RunSpec, index: int) -> Consumer:
        raise Unsupported("memcopy runs in process")
