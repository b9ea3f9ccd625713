"""HDR histograms of end-to-end latency in nanoseconds (the ``hdrhistogram`` package).

Consumers collect raw latencies in a numpy array while they run (cheap), then fold them
into a histogram once at the end (``from_latencies``) and send it to the parent encoded
(base64 text, as HdrHistogram's own tools write it), where the runs are merged.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from hdrh.histogram import HdrHistogram

__all__ = ["cdf", "decode", "encode", "from_latencies", "merge", "new", "percentiles_us"]

LOWEST_NS = 1
HIGHEST_NS = 60_000_000_000  # one minute
SIGNIFICANT_FIGURES = 3


def new() -> HdrHistogram:
    return HdrHistogram(LOWEST_NS, HIGHEST_NS, SIGNIFICANT_FIGURES)


def from_latencies(latencies_ns: np.ndarray) -> HdrHistogram:
    """A histogram of ``latencies_ns`` (clipped into the trackable range)."""
    histogram = new()
    clipped = np.clip(latencies_ns, LOWEST_NS, HIGHEST_NS)
    values, counts = np.unique(clipped, return_counts=True)
    for value, count in zip(values.tolist(), counts.tolist(), strict=True):
        histogram.record_value(value, count)
    return histogram


def encode(histogram: HdrHistogram) -> str:
    encoded: bytes = histogram.encode()
    return encoded.decode("ascii")


def decode(text: str) -> HdrHistogram:
    histogram: HdrHistogram = HdrHistogram.decode(text.encode("ascii"))
    return histogram


def merge(encoded: Iterable[str]) -> HdrHistogram:
    """One histogram holding every value of the encoded histograms."""
    total = new()
    for text in encoded:
        total.add(decode(text))
    return total


def percentiles_us(histogram: HdrHistogram) -> dict[str, float]:
    """p50, p99, p99.9, max and mean in microseconds."""
    return {
        "p50": histogram.get_value_at_percentile(50.0) / 1e3,
        "p99": histogram.get_value_at_percentile(99.0) / 1e3,
        "p99.9": histogram.get_value_at_percentile(99.9) / 1e3,
        "max": histogram.get_max_value() / 1e3,
        "mean": histogram.get_mean_value() / 1e3,
    }


def cdf(histogram: HdrHistogram) -> tuple[np.ndarray, np.ndarray]:
    """(latency in microseconds, fraction of records at or below it), for plotting."""
    values: list[int] = []
    cumulative: list[int] = []
    for item in histogram.get_recorded_iterator():
        values.append(item.value_iterated_to)
        cumulative.append(item.total_count_to_this_value)
    total = max(histogram.get_total_count(), 1)
    return np.asarray(values, dtype=float) / 1e3, np.asarray(cumulative, dtype=float) / total
