"""The nemesis: faults in randomly chosen windows, separated by quiet periods.

A fault is named on the command line as ``NAME`` or ``NAME:TARGET`` (``kill:leader``); without a
target each window draws one of the fault's targets. One fault window is open at a time, and
every start and end goes into the history (``f = "fault"``), so the checkers and the report can
tell what happened during which fault.

===============  ======================================  =========================================
fault            targets                                 what it does; how it ends
===============  ======================================  =========================================
kill             one, leader, minority, majority, all    SIGKILL the node processes; restart them
pause            one, leader, minority, majority         SIGSTOP the process groups; SIGCONT
partition        one, leader, halves, one-way, bridge    cut peer links at the proxy; heal them
delay            one, all                                delay every chunk on the node's links
                                                         (20-100 ms, +-50%); remove the delay
loss             one, all                                each chunk, with probability 5-30%, held
                                                         200 ms (a TCP retransmission); remove
lose-unsynced    majority, all                           SIGKILL at once nodes that write through
                                                         PowerLossDisk, so they lose what they
                                                         had not fsynced (a power cut); restart
wipe             one, leader                             SIGKILL the node and delete its data
                                                         directory (a lost disk; only once no
                                                         node is recovering); start it: it
                                                         rejoins recovering
membership       one, leader                             NOT a window: changes run on their own
                                                         schedule, alongside the windows: a
                                                         spare node started and added as a
                                                         learner, promoted once caught up, and a
                                                         voter (any; the leader) removed and
                                                         stopped (``jepsen.membership``)
===============  ======================================  =========================================

``halves`` cuts a random minority from the majority; ``one-way`` stops the leader's messages to
every follower while theirs still reach it; ``bridge`` (five nodes) splits {a, b} from {d, e}
with c seeing both sides.

**Several broker groups** (``--groups 2``): each window first draws one group, and the target
is taken in it: one of its nodes, its leader, a minority, a majority or all of its nodes, links
among its nodes (groups have no links between them). The other groups are left alone, so
``kill:majority`` and ``pause:majority`` take ONE group's majority away while the others keep
theirs. Such windows record ``"group"`` (the broker group, ``broker-a``) and ``"majority_down":
true`` when the fault stops a majority of that group's processes (kill, pause, lose-unsynced or
wipe of more than half of them): the ``group_independence`` checker takes its windows from
there. With one group the draws are exactly those of a one-group run (a seed keeps its meaning).
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import attrs
import trio

from jepsen.history import FAULT, INFO, NEMESIS, History
from jepsen.membership import TARGETS as MEMBERSHIP_TARGETS
from jepsen.membership import MembershipChanger
from jepsen.nodes import Nodes

TARGETS: dict[str, tuple[str, ...]] = {
    "kill": ("one", "leader", "minority", "majority", "all"),
    "pause": ("one", "leader", "minority", "majority"),
    "partition": ("one", "leader", "halves", "one-way", "bridge"),
    "delay": ("one", "all"),
    "loss": ("one", "all"),
    "lose-unsynced": ("majority", "all"),
    "wipe": ("one", "leader"),
    "membership": MEMBERSHIP_TARGETS,
}
#: Faults that stop node processes: with more than half of a group's nodes as targets, the
#: group has no majority until the window ends.
PROCESS_FAULTS = frozenset({"kill", "pause", "lose-unsynced", "wipe"})
#: How long a ``wipe`` waits for an earlier lost disk to be caught up (one at a time).
WIPE_WAIT_SECONDS = 60.0
FAULTS = tuple(TARGETS)


class Network(Protocol):
    """What the nemesis needs of the proxy (``jepsen.proxy.ProxyNetwork``)."""

    def isolate(self, node: str) -> None: ...
    def split(self, *sides: Sequence[str]) -> None: ...
    def partition(self, blocked: Sequence[tuple[str, str]]) -> None: ...
    def set_delay(
        self, links: Sequence[tuple[str, str]] | None, mean_s: float, jitter_s: float
    ) -> None: ...
    def set_loss(
        self, links: Sequence[tuple[str, str]] | None, probability: float, retransmit_s: float
    ) -> None: ...
    def heal(self) -> None: ...


@attrs.frozen
class FaultSpec:
    fault: str
    #: None: draw one of the fault's targets in each window.
    target: str | None = None

    @classmethod
    def parse_list(cls, text: str, size: int) -> list[FaultSpec]:
        """``"kill,partition:leader"`` -> specs; ValueError names what is wrong."""
        specs = []
        for part in (p.strip() for p in text.split(",")):
            if not part or part == "none":
                continue
            fault, _, target = part.partition(":")
            if fault not in TARGETS:
                raise ValueError(f"unknown fault {fault!r}; choose from {', '.join(FAULTS)}")
            if target and target not in TARGETS[fault]:
                raise ValueError(
                    f"{fault} has no target {target!r}; choose from {', '.join(TARGETS[fault])}"
                )
            if target == "bridge" and size != 5:
                raise ValueError("partition:bridge needs five nodes (--nodes 5)")
            specs.append(cls(fault, target or None))
        return specs

    def targets(self, size: int) -> tuple[str, ...]:
        if self.target is not None:
            return (self.target,)
        return tuple(t for t in TARGETS[self.fault] if t != "bridge" or size == 5)


@attrs.frozen
class Schedule:
    fault_min_s: float = 5.0
    fault_max_s: float = 15.0
    quiet_min_s: float = 5.0
    quiet_max_s: float = 10.0
    #: The quiet period before each membership change.
    membership_min_s: float = 5.0
    membership_max_s: float = 10.0


class Nemesis:
    def __init__(
        self,
        specs: list[FaultSpec],
        nodes: Nodes,
        network: Network,
        history: History,
        now: Callable[[], float],
        rng: random.Random,
        schedule: Schedule,
        entry_peer: Callable[[str], str] | None = None,
    ) -> None:
        """``entry_peer``: the peer address a node added during the run is given (the proxy's
        inbound listener for it); needed with the ``membership`` fault."""
        self.membership: MembershipChanger | None = None
        membership = [spec for spec in specs if spec.fault == "membership"]
        specs = [spec for spec in specs if spec.fault != "membership"]
        if membership:
            targets = tuple(sorted({t for spec in membership for t in spec.targets(nodes.size)}))
            self.membership = MembershipChanger(
                nodes,
                history,
                now,
                # Its own generator (drawn only with it, so other seeds keep their meaning):
                # its draws and the windows' interleave as the real processes' timing goes.
                random.Random(rng.getrandbits(64)),
                targets,
                (schedule.membership_min_s, schedule.membership_max_s),
                entry_peer or (lambda name: nodes.members[name].peer),
            )
        self.specs = specs
        self.nodes = nodes
        self.network = network
        self.history = history
        self.now = now
        self.rng = rng
        self.schedule = schedule
        self.windows = 0
        #: The open window's description, for the progress line ("" when quiet).
        self.current = ""

    @property
    def status(self) -> str:
        """The open window and the membership change in progress, for the progress line."""
        parts = [self.current, self.membership.current if self.membership else ""]
        return "; ".join(part for part in parts if part) or "quiet"

    async def run(self, stop: trio.Event) -> None:
        """Open and close fault windows until ``stop`` is set; the last window is closed. With
        ``membership``, changes run alongside until then (``jepsen.membership``)."""
        if self.membership is None:
            await self._windows(stop)
            return
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.membership.run, stop)
            await self._windows(stop)

    async def _windows(self, stop: trio.Event) -> None:
        if not self.specs:
            await stop.wait()
            return
        while not stop.is_set():
            with trio.move_on_after(
                self.rng.uniform(self.schedule.quiet_min_s, self.schedule.quiet_max_s)
            ):
                await stop.wait()
            if stop.is_set():
                return
            spec = self.rng.choice(self.specs)
            target = self.rng.choice(spec.targets(self.nodes.size))
            # Drawn only with several groups, so that a one-group seed keeps its meaning.
            groups = self.nodes.groups
            group = self.rng.choice(groups) if len(groups) > 1 else None
            undo, value = await self._start(spec.fault, target, group)
            self.windows += 1
            window = self.windows
            self._record("start", spec.fault, window, value)
            self.current = f"{spec.fault} {value.get('mode')} {','.join(value['targets'])}"
            try:
                with trio.move_on_after(
                    self.rng.uniform(self.schedule.fault_min_s, self.schedule.fault_max_s)
                ):
                    await stop.wait()
            finally:
                undo()
                self._record("end", spec.fault, window, value)
                self.current = ""

    def _record(self, phase: str, fault: str, window: int, value: dict[str, Any]) -> None:
        self.history.add(
            self.now(),
            NEMESIS,
            INFO,
            FAULT,
            value={**value, "fault": fault, "phase": phase, "window": window},
        )

    async def _start(
        self, fault: str, mode: str, group: str | None = None
    ) -> tuple[Callable[[], None], dict[str, Any]]:
        """Begin the fault, in ``group`` (None: the only one); returns how to end it and what
        to record."""
        ids = self.nodes.node_ids if group is None else self.nodes.group_node_ids(group)
        chosen = await self._choose(mode, ids, group)
        value: dict[str, Any] = {"mode": mode, "targets": chosen}
        if group is not None:
            value["group"] = group
            value["majority_down"] = fault in PROCESS_FAULTS and len(chosen) > len(ids) // 2
        network = self.network
        if fault in {"kill", "lose-unsynced"}:
            for node_id in chosen:
                self.nodes.kill(node_id)
            return functools.partial(self._for_each, self.nodes.start, chosen), value
        if fault == "wipe":
            # The product survives one lost disk at a time: an earlier one must be caught up.
            with trio.move_on_after(WIPE_WAIT_SECONDS):
                await self.nodes.wait_none_recovering()
            for node_id in chosen:
                self.nodes.wipe(node_id)
            return functools.partial(self._for_each, self.nodes.start, chosen), value
        if fault == "pause":
            for node_id in chosen:
                self.nodes.pause(node_id)
            return functools.partial(self._for_each, self.nodes.resume, chosen), value
        if fault == "partition":
            if mode in {"one", "leader"}:
                network.isolate(chosen[0])
            elif mode == "halves":
                network.split(chosen, [n for n in ids if n not in chosen])
            elif mode == "one-way":
                network.partition([(chosen[0], other) for other in ids if other != chosen[0]])
            else:  # bridge: chosen = [a, b, c, d, e], c is the bridge
                value["bridge"] = chosen[2]
                network.partition(
                    [(x, y) for x in chosen[:2] for y in chosen[3:]]
                    + [(y, x) for x in chosen[:2] for y in chosen[3:]]
                )
            return network.heal, value
        if mode == "all":
            links = None if group is None else [(x, y) for x in ids for y in ids if x != y]
        else:
            links = _links_of(chosen[0], ids)
        if fault == "delay":
            mean = round(self.rng.uniform(0.02, 0.1), 3)
            network.set_delay(links, mean, mean / 2)
            value["delay_s"] = mean
        else:
            probability = round(self.rng.uniform(0.05, 0.3), 2)
            network.set_loss(links, probability, 0.2)
            value["probability"] = probability
        return network.heal, value

    @staticmethod
    def _for_each(action: Callable[[str], None], node_ids: list[str]) -> None:
        for node_id in node_ids:
            action(node_id)

    async def _choose(self, mode: str, ids: list[str], group: str | None) -> list[str]:
        shuffled = self.rng.sample(ids, len(ids))
        minority = (len(ids) - 1) // 2
        if mode in {"one", "one-way"} or mode == "leader":
            leader = await self.nodes.leader(group) if mode in {"leader", "one-way"} else None
            return [leader if leader is not None else shuffled[0]]
        if mode in {"minority", "halves"}:
            return sorted(shuffled[: max(minority, 1)])
        if mode == "majority":
            return sorted(shuffled[: minority + 1])
        if mode == "bridge":
            return shuffled
        return list(ids)  # all


def _links_of(node: str, ids: list[str]) -> list[tuple[str, str]]:
    return [(node, other) for other in ids if other != node] + [
        (other, node) for other in ids if other != node
    ]
