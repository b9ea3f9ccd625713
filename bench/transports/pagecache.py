"""The durable ceiling: how fast one process appends bytes to a file (``os.write``).

Not a transport that moves records between processes: it appends the run's bytes, in
chunks of at least 1 MiB (as memcopy), to a new file in the suite's working directory
(the file system the engine's logs are on), without fsync, and removes the file after
the run. That is the least any transport that persists every record must do, and what
the engine's drain does with each byte on top of the shared-memory hand-over (its logs
are written the same way, into the page cache, flushed by the kernel). The records/s
figure is that bandwidth divided by the record size.

On a virtual machine whose memory the host backs lazily, pages the page cache has not used
before cost several times what reused ones do; this row shows what the machine gives.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from bench.transports.base import Consumer, Producer, RunSpec, Transport, Unsupported, register
from bench.transports.memcopy import ceiling_sizes


@register
class PageCacheWrite(Transport):
    name = "pagecache"
    description = "os.write of the run's bytes to a new file, no fsync, one process (ceiling)"
    order = 91
    supports_latency = False

    def open(self, workdir: Path) -> None:
        self.directory = Path(workdir)

    def run_in_process(self, spec: RunSpec) -> dict[str, int] | None:
        total, chunk = ceiling_sizes(spec, "a file write")
        source = memoryview(np.random.default_rng(0).integers(0, 256, chunk, dtype=np.uint8))
        path = self.directory / f"pagecache-{spec.run_id}-{os.getpid()}.data"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            written = 0
            start = time.perf_counter_ns()
            while written < total:
                written += os.write(fd, source[: min(chunk, total - written)])
            end = time.perf_counter_ns()
        finally:
            os.close(fd)
            path.unlink()
        return {"records": written // spec.record_size, "first_send_ns": start, "last_recv_ns": end}

    def producer(self, spec: RunSpec, index: int) -> Producer:
        raise Unsupported("pagecache runs in process")

    def consumer(self, spec: RunSpec, index: int) -> Consumer:
        raise Unsupported("pagecache runs in process")
