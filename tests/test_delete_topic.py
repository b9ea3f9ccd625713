"""Deleting a topic: once delete_topic() returns, nothing can be appended to it."""

from __future__ import annotations

import uuid

import pytest
from engine_harness import Daemon

from engine import Admin, Producer, UnknownTopicError


@pytest.mark.parametrize("acks", [1, "all"])
def test_a_send_after_delete_topic_returns_is_refused_not_acknowledged(
    shared_daemon: Daemon, admin: Admin, acks: int | str
) -> None:
    """A producer already open on the topic (its leaders' rings mapped) must not land a
    record in a ring the deletion is about to remove: the rings are sealed before the
    topic's znodes go, and a sealed ring sends the producer to the metadata, which no
    longer has the topic."""
    name = f"gone-{uuid.uuid4().hex[:8]}"
    admin.create_topic(name, partitions=2, replication=2)
    with Producer(shared_daemon.data_dir, acks=acks, enable_idempotence=False) as p:
        for i in range(20):
            p.send(name, b"before", key=str(i).encode()).get(timeout=10)
        admin.delete_topic(name)
        for i in range(20):
            with pytest.raises(UnknownTopicError):
                p.send(name, b"after", key=str(i).encode()).get(timeout=10)
        with pytest.raises(UnknownTopicError):
            p.send_batch(name, [b"after"] * 10).get(timeout=10)
    assert name not in admin.list_topics()
