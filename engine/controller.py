"""The controller: the one broker that turns topic requests into partition state.

Elected through the ephemeral ``/controller`` znode (first to create it wins;
the others watch it and try again when it vanishes). Each win bumps
``/controller_epoch``. While in charge it:

- gives every partition of a new topic its state znode (leader: the first live
  replica of its assignment, ISR: the live replicas, leader epoch 0);
- carries out deletion requests under ``/admin/delete_topics``: removes the
  topic's znodes, which makes the brokers drop the replicas and their data;
- fails leaders over: when a leader's broker is gone, the first live member of
  the ISR becomes leader with the leader epoch bumped (no live ISR member: the
  partition has no leader, unless the topic allows unclean election, which takes
  any live replica), and the old leader's ring is sealed so that producers still
  mapping it look the new leader up; dead brokers leave every ISR.

It runs on its broker's main thread only (the broker calls :meth:`act` after
every watch event), so it needs no locks. Crash behaviour: every action is an
idempotent znode write, so a new controller that takes over half-way simply
finishes the job.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable

from kazoo.client import KazooClient
from kazoo.exceptions import (
    BadVersionError,
    NoAuthError,
    NodeExistsError,
    NoNodeError,
    NotEmptyError,
)

from engine import metadata as md
from engine.errors import UnknownTopicError
from engine.offset_store import CONSUMERS, list_groups

log = logging.getLogger("engine.controller")

#: Elections one call of Controller.elect runs while it finds /controller made by
#: someone other than a broker; then the next watch event or pass tries again.
ELECTION_ATTEMPTS = 3


class Controller:
    """Election and the controller's duties for one broker."""

    def __init__(
        self,
        zk: KazooClient,
        broker_id: int,
        poke: Callable[..., object],
        seal: Callable[[str, int, int, int], None] | None = None,
    ) -> None:
        self.zk = zk
        self.broker_id = broker_id
        self.poke = poke
        # (topic id, partition, broker, new epoch): seal that broker's ring of the partition
        self.seal = seal
        self.epoch = 0
        self.active = False

    def elect(self) -> bool:
        """Try to become controller; watch the node either way. Returns whether we are.

        /controller is an ephemeral directly under the root, which is open to all
        (engine/acl.py): anyone may delete it, or make one that names any broker id, or
        one the brokers cannot even read. A broker's own is owned by the session that
        registered the broker; any other is removed here and the election run again at
        once (the events of a node the brokers cannot read never reach them, its
        deletion included)."""
        payload = md.encode(
            {"version": 1, "brokerid": self.broker_id, "timestamp": str(int(time.time() * 1000))}
        )
        current: int | None = None
        for _ in range(ELECTION_ATTEMPTS):
            with contextlib.suppress(NodeExistsError):
                self.zk.create(md.CONTROLLER, payload, ephemeral=True, makepath=True)
            self.zk.exists(md.CONTROLLER, watch=self.poke)  # first: a later change fires it
            current, impostor = self._read_controller()
            if not impostor:
                break
            log.warning("removing a /controller that no registered broker made: brokerid=%s",
                        current)
            with contextlib.suppress(NoNodeError):
                self.zk.delete(md.CONTROLLER)
            current = None
        was = self.active
        self.active = current == self.broker_id
        if self.active and not was:
            self.epoch = self._bump_epoch()
            log.info("broker %d is the controller, epoch %d", self.broker_id, self.epoch)
        return self.active

    def _read_controller(self) -> tuple[int | None, bool]:
        """The broker id /controller names (None when there is none, or it names none),
        and whether it is an impostor: a node no registered broker's session made."""
        broker = None
        try:
            data, stat = self.zk.get(md.CONTROLLER)
            broker = int(md.decode(data)["brokerid"])
            registration = self.zk.exists(md.broker_path(broker))
        except NoNodeError:
            return None, False
        except (NoAuthError, ValueError, KeyError, TypeError):
            return broker, True
        if registration is None or registration.ephemeralOwner != stat.ephemeralOwner:
            return broker, True
        return broker, False

    def _bump_epoch(self) -> int:
        self.zk.ensure_path(md.CONTROLLER_EPOCH)
        while True:
            data, stat = self.zk.get(md.CONTROLLER_EPOCH)
            epoch = int(data.decode() or 0) + 1
            try:
                self.zk.set(md.CONTROLLER_EPOCH, str(epoch).encode(), version=stat.version)
                return epoch
            except BadVersionError:  # another controller raced us: read again
                continue

    def act(self) -> None:
        """Bring partition state in line with requests; call after any watch fires."""
        if not self.elect():
            return
        self.zk.ensure_path(md.DELETE_TOPICS)
        self.zk.ensure_path(md.BROKER_TOPICS)
        for topic in self.zk.get_children(md.DELETE_TOPICS, watch=self.poke):
            self._delete_topic(topic)
        # The watch first, then the read: a broker that registers in between is then
        # in ``live`` or fires the watch. (Read, then watch, missed it: after a daemon
        # restart a partition whose only in-sync broker registered just then stayed
        # offline for good.)
        self.zk.get_children(md.BROKER_IDS, watch=self.poke)
        live = set(md.live_brokers(self.zk))
        for topic in self.zk.get_children(md.BROKER_TOPICS, watch=self.poke):
            self._create_missing_states(topic, live)
            self._fail_over(topic, live)
            self._complete_reassignments(topic, live)
        self._elect_preferred(live)

    def _elect_preferred(self, live: set[int]) -> None:
        """Carry out a preferred-leader election request (Admin.perform_leader_election):
        each partition named whose first assigned replica is live, in the ISR and not the
        leader gets it as leader, the leader epoch bumped, and the old leader's ring is
        sealed (its producers look the new leader up; it follows from now on). Then the
        request goes. A partition whose preferred replica is not in the ISR keeps its
        leader, as in Kafka."""
        try:
            data, _ = self.zk.get(md.PREFERRED_ELECTION, watch=self.poke)
        except NoNodeError:
            self.zk.exists(md.PREFERRED_ELECTION, watch=self.poke)
            return
        done = True
        for item in (md.decode(data) or {}).get("partitions", []):
            topic, partition = str(item["topic"]), int(item["partition"])
            try:
                assignment = md.read_topic(self.zk, topic).assignment
                sdata, stat = self.zk.get(md.state_path(topic, partition))
            except (UnknownTopicError, NoNodeError):
                continue
            state = md.PartitionState.from_json(md.decode(sdata))
            preferred = assignment.replicas.get(partition, (-1,))[0]
            if state.leader == preferred or preferred not in state.isr or preferred not in live:
                continue
            new = dataclasses.replace(
                state, leader=preferred, leader_epoch=state.leader_epoch + 1,
                controller_epoch=self.epoch,
            )  # fmt: skip
            if not self._write(md.state_path(topic, partition), stat.version, new):
                done = False  # changed meanwhile: the next pass looks again
            else:
                log.info("%s-%d: preferred leader %d -> %d, epoch %d", topic, partition,
                         state.leader, preferred, new.leader_epoch)  # fmt: skip
                if self.seal is not None and state.leader >= 0:
                    self.seal(assignment.topic_id, partition, state.leader, new.leader_epoch)
        if done:
            with contextlib.suppress(NoNodeError):
                self.zk.delete(md.PREFERRED_ELECTION)

    def _create_missing_states(self, topic: str, live: set[int]) -> None:
        """Give each partition of ``topic`` that has none its first state. The lookups,
        then the creations, go out together: one round trip (and one coordinator fsync)
        for all partitions instead of one per partition."""
        try:
            data, _ = self.zk.get(md.topic_path(topic), watch=self.poke)  # partitions added
        except NoNodeError:
            return
        assignment = md.TopicAssignment.from_json(topic, md.decode(data))
        lookups = {
            partition: self.zk.exists_async(md.state_path(topic, partition))
            for partition in assignment.replicas
        }
        creations = []
        for partition, replicas in assignment.replicas.items():
            if lookups[partition].get() is not None:
                continue
            alive = [b for b in replicas if b in live]
            if not alive:
                log.warning(
                    "no live replica for %s-%d yet: replicas %s", topic, partition, replicas
                )
                continue
            state = md.PartitionState(
                leader=alive[0], leader_epoch=0, isr=tuple(alive), controller_epoch=self.epoch
            )
            path = md.state_path(topic, partition)
            creation = self.zk.create_async(path, md.encode(state.to_json()), makepath=True)
            creations.append((partition, alive, creation))
        for partition, alive, creation in creations:
            try:
                creation.get()
                log.info("partition %s-%d: leader %d, isr %s", topic, partition, alive[0], alive)
            except NodeExistsError:
                pass

    def _fail_over(self, topic: str, live: set[int]) -> None:
        try:
            meta = md.read_topic(self.zk, topic)
        except Exception:  # noqa: BLE001 - deleted meanwhile
            return
        unclean = bool(meta.config.get("unclean.leader.election.enable", False))
        for partition, replicas in meta.assignment.replicas.items():
            path = md.state_path(topic, partition)
            try:
                data, stat = self.zk.get(path)
            except NoNodeError:
                continue
            state = md.PartitionState.from_json(md.decode(data))
            alive_isr = tuple(b for b in state.isr if b in live)
            if state.leader in live:
                if alive_isr != state.isr:  # dead brokers leave the ISR at once
                    self._write(path, stat.version, dataclasses.replace(state, isr=alive_isr))
                continue
            candidates = [b for b in replicas if b in alive_isr]
            if not candidates and unclean:
                candidates = [b for b in replicas if b in live]
            if not candidates:
                if state.leader != -1:
                    log.warning("%s-%d has no live in-sync replica: offline", topic, partition)
                    self._write(path, stat.version, dataclasses.replace(
                        state, leader=-1, leader_epoch=state.leader_epoch + 1,
                        controller_epoch=self.epoch,
                    ))
                continue
            new = md.PartitionState(
                leader=candidates[0],
                leader_epoch=state.leader_epoch + 1,
                isr=tuple(candidates) if alive_isr else (candidates[0],),
                controller_epoch=self.epoch,
            )
            if self._write(path, stat.version, new):
                log.info(
                    "%s-%d: leader %d -> %d, epoch %d, isr %s", topic, partition,
                    state.leader, new.leader, new.leader_epoch, list(new.isr),
                )
                if self.seal is not None and state.leader >= 0:
                    self.seal(meta.assignment.topic_id, partition, state.leader, new.leader_epoch)

    def _complete_reassignments(self, topic: str, live: set[int]) -> None:
        """Finish each reassignment of ``topic`` (md.reassign_partitions) whose added
        replicas are all in the ISR: the replicas become the new ones only, the ISR loses
        the old ones, a leader among the old ones hands over to the first new replica in
        the ISR (its ring sealed), the leader epoch is bumped; topic and state in one
        transaction. The partition's state is watched meanwhile: its ISR grows by the
        leader's writes, which must wake this controller."""
        try:
            data, tstat = self.zk.get(md.topic_path(topic))
        except NoNodeError:
            return
        assignment = md.TopicAssignment.from_json(topic, md.decode(data))
        moving = sorted(set(assignment.adding) | set(assignment.removing))
        if not moving:
            return
        replicas, adding = dict(assignment.replicas), dict(assignment.adding)
        removing = dict(assignment.removing)
        done = []
        for partition in moving:
            path = md.state_path(topic, partition)
            try:
                sdata, sstat = self.zk.get(path, watch=self.poke)
            except NoNodeError:
                continue
            state = md.PartitionState.from_json(md.decode(sdata))
            if not set(adding.get(partition, ())) <= set(state.isr):
                continue  # the new replicas are still catching up
            target = tuple(b for b in replicas[partition] if b not in removing.get(partition, ()))
            isr = tuple(b for b in state.isr if b in target)
            leader = state.leader
            if leader not in target:
                leader = next((b for b in target if b in isr and b in live), -1)
            if leader < 0 or not isr:
                continue
            new = md.PartitionState(leader, state.leader_epoch + 1, isr, self.epoch)
            replicas[partition] = target
            adding.pop(partition, None)
            removing.pop(partition, None)
            done.append((partition, path, sstat.version, new, state.leader))
        if not done:
            return
        moved = dataclasses.replace(
            assignment, replicas=replicas, adding=adding, removing=removing
        )
        tx = self.zk.transaction()
        tx.set_data(md.topic_path(topic), md.encode(moved.to_json()), version=tstat.version)
        for _, path, version, new, _ in done:
            tx.set_data(path, md.encode(new.to_json()), version=version)
        if any(isinstance(r, Exception) for r in tx.commit()):
            self.poke()  # something changed meanwhile: look again
            return
        for partition, _, _, new, old_leader in done:
            log.info("%s-%d: replicas now %s, leader %d, epoch %d", topic, partition,
                     list(replicas[partition]), new.leader, new.leader_epoch)  # fmt: skip
            if self.seal is not None and old_leader >= 0 and old_leader != new.leader:
                self.seal(assignment.topic_id, partition, old_leader, new.leader_epoch)

    def _write(self, path: str, version: int, state: md.PartitionState) -> bool:
        try:
            self.zk.set(path, md.encode(state.to_json()), version=version)
        except (BadVersionError, NoNodeError):
            self.poke()  # someone else wrote it: look again
            return False
        return True

    def _delete_topic(self, topic: str) -> None:
        log.info("deleting topic %s", topic)
        # Seal every replica's ring first: a producer still mapping one must not append a
        # record that the deletion then removes (it looks the topic up, and finds none).
        try:
            data, _ = self.zk.get(md.topic_path(topic))
            assignment = md.TopicAssignment.from_json(topic, md.decode(data))
        except NoNodeError:
            assignment = None
        if assignment is not None and self.seal is not None:
            for partition, replicas in assignment.replicas.items():
                for broker in replicas:
                    self.seal(assignment.topic_id, partition, broker, -1)
        paths = [md.topic_path(topic), md.config_path(topic)]
        # Groups' committed offsets of the topic go too: a topic made again with the
        # same name must not resume at an old offset (Kafka drops them likewise).
        for group in list_groups(self.zk):
            paths += [f"{CONSUMERS}/{group}/offsets/{topic}", f"{CONSUMERS}/{group}/owners/{topic}"]
        for path in paths:
            with contextlib.suppress(NoNodeError):
                self.zk.delete(path, recursive=True)
        with contextlib.suppress(NoNodeError, NotEmptyError):
            self.zk.delete(f"{md.DELETE_TOPICS}/{topic}")
