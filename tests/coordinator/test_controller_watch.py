"""The controller's watches against the coordinator (and ZooKeeper): no missed broker."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from kazoo.client import KazooClient
from zkharness import wait_until

from engine import controller as ctl
from engine import metadata as md


def test_a_broker_registering_while_the_controller_reads_the_live_set_is_not_missed(
    make_client: Callable[..., KazooClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Broker 2 registers right after the controller has read the live brokers: the
    controller's watch on /brokers/ids must fire for it, so that it acts again. (With
    the read before the watch, a restarted daemon's partition whose in-sync broker
    registered just then stayed offline: seen in CI.)"""
    zk, other = make_client(), make_client()
    events: list[Any] = []
    controller = ctl.Controller(zk, broker_id=1, poke=lambda *a: events.append(a))
    read = md.live_brokers
    raced: list[bool] = []

    def live_then_a_registration(client: KazooClient) -> dict[int, dict[str, Any]]:
        out = read(client)
        if not raced:
            raced.append(True)
            other.create(md.broker_path(2), md.encode({"version": 5}), ephemeral=True)
        return out

    monkeypatch.setattr(md, "live_brokers", live_then_a_registration)
    zk.ensure_path(md.BROKER_TOPICS)
    # a controller is a registered broker: its session owns both nodes
    zk.create(md.broker_path(1), md.encode({"version": 5}), ephemeral=True, makepath=True)
    controller.act()
    assert raced and controller.active
    wait_until(
        lambda: any(a and getattr(a[0], "path", None) == md.BROKER_IDS for a in events),
        timeout=10,
        what="the /brokers/ids watch to fire for broker 2",
    )
