"""Fixtures that start real engine daemons (coordinator + broker processes) and always stop them."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from engine_harness import Daemon, running_daemon
from kafka_harness import Kafka, Target, engine_target, kafka_target, require_kafka, running_kafka

from engine import Admin


@pytest.fixture(scope="session")
def shared_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon for the tests that only create their own topics."""
    with running_daemon(tmp_path_factory.mktemp("engine-shared"), brokers=2) as d:
        yield d


@pytest.fixture(scope="session")
def real_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kafka]:
    """One real Kafka broker (KRaft, scripts/kafka) for the whole session: the oracle the
    Kafka listener's answers are compared with. Skipped with the reason where Java or
    Kafka's jars cannot be had; in CI (CI=true) that fails."""
    require_kafka()
    with running_kafka(tmp_path_factory.mktemp("kafka-real"), nodes=1) as k:
        yield k


@pytest.fixture(scope="module")
def oracle_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """The engine side of the oracle tests: one broker (as the real Kafka has one node),
    SASL as by default."""
    with running_daemon(tmp_path_factory.mktemp("engine-oracle"), brokers=1) as d:
        yield d


@pytest.fixture(scope="module", params=["engine", "kafka"])
def target(request: pytest.FixtureRequest) -> Target:
    """Each side of an oracle comparison in turn: the engine's Kafka listener, then a real
    Kafka; a test asserts Kafka's answers and so holds the engine to them."""
    if request.param == "engine":
        return engine_target(request.getfixturevalue("oracle_daemon"))
    return kafka_target(request.getfixturevalue("real_kafka"))


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    """Keep each phase's report on the test item (fixtures look at report_call)."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture
def daemon(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Daemon]:
    """A daemon of the test's own, for tests that kill, stop or restart it. When the
    test failed, the tails of its processes' logs are printed (shown with the failure)."""
    with running_daemon(tmp_path / "engine", brokers=2) as d:
        yield d
        report = getattr(request.node, "report_call", None)
        if report is not None and report.failed:
            d.print_logs()


@pytest.fixture
def admin(shared_daemon: Daemon) -> Iterator[Admin]:
    with Admin(shared_daemon.data_dir) as a:
        yield a


@pytest.fixture
def topic(admin: Admin) -> Iterator[str]:
    """A fresh 3-partition topic on the shared daemon, deleted afterwards."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    admin.create_topic(name, partitions=3)
    yield name
    if name in admin.list_topics():
        admin.delete_topic(name)

