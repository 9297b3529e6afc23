"""A test cluster of Raft cores wired by an in-memory network, driven synchronously.

Every node is driven as the driver contract says: take a ``Ready``, persist its entries and hard
state, send its messages, apply its committed entries, ``advance()``. The network is reliable and
first in, first out, except for links cut on purpose. Nothing here uses a clock or sleeps.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from dledger_mq.raft.pure.core import Config, RaftCore, ReadState, Ready, Role
from dledger_mq.raft.pure.log_store import MemoryLogStore
from dledger_mq.raft.pure.messages import Entry, HardState, Message

THREE_NODES = ("n1", "n2", "n3")
FIVE_NODES = ("n1", "n2", "n3", "n4", "n5")

#: Big enough for any log in these tests.
ALL_BYTES = 1 << 62


def store_with(
    terms: Iterable[int], term: int = 0, vote: str | None = None, commit: int = 0
) -> MemoryLogStore:
    """A store whose log holds one entry per term in ``terms`` (index 1 first)."""
    store = MemoryLogStore()
    entries = [
        Entry(index=index, term=entry_term, data=f"{index}@{entry_term}".encode())
        for index, entry_term in enumerate(terms, start=1)
    ]
    store.append(entries)
    store.set_hard_state(HardState(term=term, vote=vote, commit=commit))
    return store


def stored_entries(store: MemoryLogStore) -> list[Entry]:
    return store.entries(store.first_index(), store.last_index() + 1, ALL_BYTES)


def stored_terms(store: MemoryLogStore) -> list[int]:
    return [entry.term for entry in stored_entries(store)]


def log_entries(core: RaftCore) -> list[Entry]:
    """The core's view of its log, persisted or not."""
    return core.log.slice(1, core.log.last_index() + 1, ALL_BYTES)


def log_terms(core: RaftCore) -> list[int]:
    return [entry.term for entry in log_entries(core)]


def all_messages(ready: Ready) -> list[Message]:
    """Everything a Ready sends, those that may go before its write first."""
    return [*ready.messages_before_persist, *ready.messages]


class Network:
    """Cores and their stores, plus a queue of messages in flight.

    ``sent`` records every message a node handed to the network (cut links included), in order,
    so tests can assert on what was said; ``applied`` and ``hard_states`` record, per node and
    per life, what the driver applied and persisted.
    """

    def __init__(
        self,
        members: tuple[str, ...] = THREE_NODES,
        *,
        learners: tuple[str, ...] = (),
        seed: int = 0,
        stores: Mapping[str, MemoryLogStore] | None = None,
        **config_overrides: Any,
    ) -> None:
        """``members`` vote; ``learners`` are replicated to and do not (``Config.learners``)."""
        self.voters = members
        self.learners = learners
        members = (*members, *learners)
        self.members = members
        self.seed = seed
        self.config_overrides = config_overrides
        self.stores = {
            node_id: (stores or {}).get(node_id) or MemoryLogStore() for node_id in members
        }
        self.cores: dict[str, RaftCore] = {}
        self.lives = dict.fromkeys(members, 0)
        self.applied: dict[str, list[Entry]] = {}
        self.hard_states: dict[str, list[HardState]] = {}
        self.queue: deque[Message] = deque()
        self.sent: list[Message] = []
        self.cut_links: set[tuple[str, str]] = set()
        #: Nodes whose (durable) recovering mark is set: they lost their log (``wipe``) or
        #: the end of it (``lose_tail``: also in ``lost_tails``).
        self.recovering_marks: set[str] = set()
        self.lost_tails: set[str] = set()
        #: Every read confirmed, per node (``Ready.read_states``).
        self.read_states: dict[str, list[ReadState]] = {node_id: [] for node_id in members}
        #: Per node, the (voters, learners) it starts with when not the group's (``join``).
        self.bootstraps: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}
        for node_id in members:
            self.start(node_id)

    # -- nodes -------------------------------------------------------------------------------

    def config(self, node_id: str) -> Config:
        voters, learners = self.bootstraps.get(node_id, (self.voters, self.learners))
        return Config(node_id=node_id, members=voters, learners=learners, **self.config_overrides)

    def join(self, node_id: str) -> RaftCore:
        """A new, empty replica whose bootstrap is the group's voters with itself as a learner
        (as a node started to be added is configured); the others do not know it yet."""
        self.bootstraps[node_id] = (self.voters, (node_id,))
        self.members = (*self.members, node_id)
        self.stores[node_id] = MemoryLogStore()
        self.lives[node_id] = 0
        self.read_states[node_id] = []
        return self.start(node_id)

    def start(self, node_id: str, applied: int = 0) -> RaftCore:
        """Build ``node_id``'s core from its store, as a process does when it starts."""
        rng = random.Random(f"{self.seed}-{node_id}-{self.lives[node_id]}")
        core = RaftCore(
            self.config(node_id),
            self.stores[node_id],
            rng,
            applied=applied,
            recovering=node_id in self.recovering_marks,
            lost_tail=node_id in self.lost_tails,
        )
        self.cores[node_id] = core
        self.applied[node_id] = []
        self.hard_states[node_id] = []
        return core

    def crash(self, node_id: str) -> None:
        """Stop ``node_id``; whatever it had not persisted is gone, its messages are dropped."""
        del self.cores[node_id]
        self.lives[node_id] += 1

    def wipe(self, node_id: str) -> RaftCore:
        """``node_id`` lost its disk: it starts again from an empty log, recovering."""
        if node_id in self.cores:
            self.crash(node_id)
        self.stores[node_id] = MemoryLogStore()
        self.recovering_marks.add(node_id)
        return self.start(node_id)

    def lose_tail(self, node_id: str, entries: int = 1) -> RaftCore:
        """``node_id`` crashes and its log's last ``entries`` are cut at start (rot where a torn
        write could be): its term and vote stay; it starts recovering, having lost its tail."""
        if node_id in self.cores:
            self.crash(node_id)
        store = self.stores[node_id]
        kept = stored_entries(store)[:-entries] if entries else stored_entries(store)
        survivor = MemoryLogStore()
        survivor.append(kept)
        hard_state = store.hard_state()
        last_index = kept[-1].index if kept else 0
        survivor.set_hard_state(
            HardState(hard_state.term, hard_state.vote, min(hard_state.commit, last_index))
        )
        self.stores[node_id] = survivor
        self.recovering_marks.add(node_id)
        self.lost_tails.add(node_id)
        return self.start(node_id)

    def restart(self, node_id: str, applied: int = 0) -> RaftCore:
        if node_id in self.cores:
            self.crash(node_id)
        return self.start(node_id, applied)

    # -- links -------------------------------------------------------------------------------

    def cut(self, source: str, target: str) -> None:
        """Drop every message from ``source`` to ``target`` (one direction)."""
        self.cut_links.add((source, target))

    def isolate(self, node_id: str) -> None:
        for other in self.members:
            if other != node_id:
                self.cut(node_id, other)
                self.cut(other, node_id)

    def heal(self) -> None:
        self.cut_links.clear()

    # -- driving -----------------------------------------------------------------------------

    def handle_ready(self, node_id: str) -> Ready:
        """One pass of the driver loop for ``node_id``: send what may go early (a leader's
        appends), persist, send the rest, apply, advance."""
        core = self.cores[node_id]
        store = self.stores[node_id]
        ready = core.ready()
        for message in ready.messages_before_persist:
            self.send(message)
        store.append(list(ready.entries))
        if ready.hard_state is not None:
            store.set_hard_state(ready.hard_state)
            self.hard_states[node_id].append(ready.hard_state)
        if ready.recovered:
            self.recovering_marks.discard(node_id)
            self.lost_tails.discard(node_id)
        self.read_states[node_id].extend(ready.read_states)
        for message in ready.messages:
            self.send(message)
        self.applied[node_id].extend(ready.committed_entries)
        core.advance()
        return ready

    def handle_readies(self) -> None:
        for node_id in list(self.cores):
            while self.cores[node_id].has_ready():
                self.handle_ready(node_id)

    def send(self, message: Message) -> None:
        self.sent.append(message)
        if (message.source, message.target) not in self.cut_links:
            self.queue.append(message)

    def deliver_all(
        self, stop: Callable[[], bool] | None = None, max_messages: int = 100_000
    ) -> int:
        """Handle Readies and deliver messages until nothing moves (or ``stop()`` holds).

        Returns the number of messages delivered.
        """
        delivered = 0
        while True:
            self.handle_readies()
            if stop is not None and stop():
                return delivered
            if not self.queue:
                return delivered
            message = self.queue.popleft()
            core = self.cores.get(message.target)
            if core is None or (message.source, message.target) in self.cut_links:
                continue
            core.step(message)
            delivered += 1
            assert delivered < max_messages, "the network never went quiet"

    def tick(self, node_id: str, times: int = 1) -> None:
        """Tick ``node_id`` ``times`` times, letting the network settle after each tick."""
        for _ in range(times):
            self.cores[node_id].tick()
            self.deliver_all()

    def tick_all(self, times: int = 1) -> None:
        """Tick every running node once per round, letting the network settle each round."""
        for _ in range(times):
            for core in list(self.cores.values()):
                core.tick()
            self.deliver_all()

    def tick_until(self, condition: Callable[[], bool], max_rounds: int = 1000) -> int:
        """Run ``tick_all`` rounds until ``condition()`` holds; returns the rounds it took."""
        for rounds in range(max_rounds):
            if condition():
                return rounds
            self.tick_all()
        raise AssertionError(f"condition not reached in {max_rounds} rounds")

    # -- looking -----------------------------------------------------------------------------

    def elect(self, node_id: str) -> RaftCore:
        """Make ``node_id`` campaign now and let the election run to its end."""
        core = self.cores[node_id]
        core.campaign()
        self.deliver_all()
        assert core.role is Role.LEADER, f"{node_id} did not win: {core.status()}"
        return core

    def leaders(self) -> list[str]:
        return [node_id for node_id, core in self.cores.items() if core.role is Role.LEADER]

    def sent_by(self, node_id: str, kind: type[Any]) -> list[Any]:
        return [m for m in self.sent if m.source == node_id and isinstance(m, kind)]
