"""Topic configs are checked up front, and a topic is created whole or not at all."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from engine_harness import running_daemon

from engine import Admin, ConfigError, EngineTimeoutError
from engine import metadata as md
from engine.config import validate_topic_config
from engine.ring import Ring, unlink


def assert_not_registered(admin: Admin, name: str) -> None:
    zk = admin._cluster.zk
    assert name not in admin.list_topics()
    assert zk.exists(md.topic_path(name)) is None
    assert zk.exists(md.config_path(name)) is None
    assert zk.exists(f"{md.DELETE_TOPICS}/{name}") is None


BAD_CONFIGS = [
    ({"max.message.bytes": 0}, "below its minimum 128", "max.message.bytes"),
    ({"max.message.bytes": 127}, "below its minimum 128", "max.message.bytes"),
    ({"ring.bytes": 2**40}, "power of two in [65536, 1073741824]", "ring.bytes"),
    ({"ring.bytes": 3 << 20}, "power of two in [65536, 1073741824]", "ring.bytes"),
    ({"ring.bytes": 1 << 15}, "below its minimum 65536", "ring.bytes"),
    (
        {"ring.bytes": 1 << 21, "max.message.bytes": 1 << 20},
        "above its limit 1048552 for ring.bytes=2097152 (a batch of max.message.bytes, its "
        "61-byte header included, plus the 24-byte frame header must fit in half the ring)",
        "max.message.bytes",
    ),
    ({"segment.bytes": 2**40}, "out of range [14, 2147483647]", "segment.bytes"),
]


@pytest.mark.parametrize(("config", "limit", "key"), BAD_CONFIGS)
def test_a_bad_config_is_refused_in_one_line_naming_the_key_and_its_limit(
    config: dict, limit: str, key: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        validate_topic_config(config)
    message = str(refused.value)
    assert limit in message
    assert f"key={key!r}" in message
    assert "\n" not in message


@pytest.mark.parametrize("ring_bytes", [1 << 16, 1 << 21])
def test_the_largest_and_smallest_batch_limits_a_config_allows_are_what_its_ring_takes(
    ring_bytes: int,
) -> None:
    name = f"/engine-test-{uuid.uuid4().hex[:12]}"
    try:
        for message in (128, ring_bytes // 2 - 24):
            validate_topic_config({"ring.bytes": ring_bytes, "max.message.bytes": message})
            # As a replica makes it: a frame is the batch and its 24-byte header.
            Ring.create(name, ring_bytes, max_frame_length=message + 24, replace=True).close()
    finally:
        unlink(name)


def test_an_existing_topic_with_a_ring_above_the_cap_still_opens() -> None:
    """A topic an older version made with a larger ring is read back as it is."""
    config = {"ring.bytes": 1 << 31}
    assert validate_topic_config(config, existing=True)["ring.bytes"] == 1 << 31
    with pytest.raises(ConfigError):
        validate_topic_config(config)


@pytest.mark.parametrize("config", [{"max.message.bytes": 0}, {"ring.bytes": 2**40}])
def test_create_topic_refuses_a_bad_config_and_registers_nothing(
    admin: Admin, config: dict
) -> None:
    name = f"bad-{uuid.uuid4().hex[:8]}"
    with pytest.raises(ConfigError):
        admin.create_topic(name, config=config, timeout=5)
    assert_not_registered(admin, name)


def test_a_topic_whose_leader_never_comes_up_leaves_nothing_behind(tmp_path: Path) -> None:
    """The one broker cannot make the partition's directory (its own directory was
    replaced by a file): the replica never starts, and the creation is undone. The
    broker says why once, on one line, instead of a traceback on every retry."""
    with running_daemon(tmp_path / "engine", brokers=1) as daemon:
        broker_dir = daemon.data_dir / "broker-1"
        aside = daemon.data_dir / "broker-1.aside"
        broker_dir.rename(aside)
        broker_dir.write_bytes(b"")
        try:
            with Admin(daemon.data_dir) as admin:
                with pytest.raises(EngineTimeoutError) as failed:
                    admin.create_topic("stuck", timeout=3)
                assert "topic 'stuck' was not created (it was deleted again)" in str(failed.value)
                assert_not_registered(admin, "stuck")
                log = (daemon.data_dir / "logs" / "broker-1.log").read_text()
                assert log.count("cannot start the replica of stuck-0: NotADirectoryError") == 1
                assert "Traceback" not in log
                broker_dir.unlink()
                aside.rename(broker_dir)
                admin.create_topic("stuck", timeout=10)  # the name is free again
        finally:
            if aside.exists():
                broker_dir.unlink(missing_ok=True)
                aside.rename(broker_dir)
