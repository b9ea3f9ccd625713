"""The orders story (examples/orders.py): three groups, each gets every order once, in order."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

from engine_harness import Daemon

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_orders_example_each_group_gets_every_order_once_in_per_customer_order(
    shared_daemon: Daemon,
) -> None:
    topic = f"orders-{uuid.uuid4().hex[:6]}"
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "orders.py"), "--data-dir", str(shared_daemon.data_dir),
         "--topic", topic, "--orders", "300", "--customers", "12"],
        capture_output=True,
        timeout=120,
        env=shared_daemon.env,
    )
    text = proc.stdout.decode()
    assert proc.returncode == 0, text + proc.stderr.decode()
    lines = {line.split()[0]: line for line in text.splitlines() if "processes" in line}
    assert sorted(lines) == ["analytics", "invoice", "notification"]
    for line in lines.values():
        assert "300 orders  duplicates 0  every order once: True  per-customer order: True" in line
    assert lines["invoice"].count("idle") == 1  # 4 processes, 3 partitions
    assert text.splitlines()[-1] == "OK"
    shared_daemon.cli("topics", "delete", topic)
