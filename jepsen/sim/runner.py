"""Runs seeds: a fault-heavy safety phase, then a liveness phase that must converge."""

from __future__ import annotations

import errno
import logging
import multiprocessing
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator

import attrs
import structlog

from dledger_mq.errors import DledgerError
from dledger_mq.raft.pure.membership import ChangeKind, GroupMember, MembershipChange
from dledger_mq.raft.runtime.log_writer import INLINE_MAX_ENTRIES
from jepsen.sim.broker import BrokerViolation, BrokerWorkload
from jepsen.sim.checker import SafetyViolation
from jepsen.sim.cluster import Cluster, LivenessViolation
from jepsen.sim.mutants import MUTANTS, Mutant
from jepsen.sim.options import FAULTS, MESSAGE_FAULTS, NODE_FAULTS, UNITS_PER_TICK, SimOptions


@attrs.frozen
class SeedResult:
    seed: int
    passed: bool
    failure: str = ""
    options: str = ""
    committed: int = 0
    acknowledged: int = 0
    elections: int = 0
    #: Messages the broker acknowledged, and retried sends answered with the original.
    sends: int = 0
    duplicates: int = 0


@attrs.frozen
class SimRequest:
    seed: int
    nodes: int | None = None
    safety_ticks: int = 500
    faults: tuple[str, ...] = FAULTS
    mutant: str | None = None
    #: Learners besides the drawn voters (``SimOptions.learners``).
    learners: int = 0
    #: Membership changes under the faults (``SimOptions.membership``).
    membership: bool = False


class MembershipChanger:
    """Every so often, asks the leader for one membership change: add a spare server as a
    learner, promote a learner, or remove a voter other than itself (voters stay between 3
    and 5). Refusals (a change in progress, no commit in this term yet, not caught up, no
    leader) are part of the game: the next attempt draws again."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.rng = random.Random(f"membership-{cluster.options.seed}")
        self.stopped = False

    def start(self) -> None:
        self._schedule_next()

    def _schedule_next(self) -> None:
        delay = self.rng.randint(5, 40) * UNITS_PER_TICK
        self.cluster.schedule(delay, self._change)

    def _change(self) -> None:
        if self.stopped:
            return
        self._schedule_next()
        cluster = self.cluster
        leaders = cluster.leaders()
        if not leaders:
            return
        leader = cluster.nodes[leaders[0]]
        assert leader.core is not None
        membership = leader.core.membership
        voters, learners = membership.voter_ids, membership.learner_ids
        outside = sorted(set(cluster.nodes) - set(voters) - set(learners))
        choices: list[MembershipChange] = []
        if outside:
            choices.append(
                MembershipChange(ChangeKind.ADD_LEARNER, GroupMember(self.rng.choice(outside)))
            )
        if learners and len(voters) < 5:
            choices.append(
                MembershipChange(ChangeKind.PROMOTE, GroupMember(self.rng.choice(learners)))
            )
        removable = [voter for voter in voters if voter != leader.id]
        # At least three voters: a group of fewer cannot outlive the loss of a disk (the
        # amnesia fault), and a recovering replica waits for a majority that no longer is.
        if removable and len(voters) > 3:
            choices.append(
                MembershipChange(ChangeKind.REMOVE, GroupMember(self.rng.choice(removable)))
            )
        if learners and self.rng.random() < 0.2:
            choices.append(
                MembershipChange(ChangeKind.REMOVE, GroupMember(self.rng.choice(learners)))
            )
        if not choices:
            return
        change = self.rng.choice(choices)
        try:
            index = leader.core.propose_membership_change(change)
        except DledgerError as error:
            cluster.log(f"membership {change.kind.value} {change.member.node_id}: {error}")
            return
        cluster.log(
            f"membership {change.kind.value} {change.member.node_id} at {index} by {leader.id}"
        )
        cluster.drive(leader.id)


class FaultInjector:
    """Starts a random fault every so often and ends it after a random duration."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.rng = cluster.rng
        self.active_crashes: set[str] = set()
        self.blocked: Counter[tuple[str, str]] = Counter()
        self.kinds = [
            fault
            for fault in cluster.options.faults
            if fault not in MESSAGE_FAULTS and fault not in NODE_FAULTS
        ]
        self.stopped = False

    def start(self) -> None:
        if self.kinds:
            self._schedule_next()

    def _schedule_next(self) -> None:
        options = self.cluster.options
        delay = self.rng.randint(1, options.fault_interval_ticks) * UNITS_PER_TICK
        self.cluster.schedule(delay, self._inject)

    def _inject(self) -> None:
        if self.stopped:
            return
        self._schedule_next()
        cluster = self.cluster
        rng = self.rng
        kind = rng.choice(self.kinds)
        node_ids = sorted(cluster.nodes)
        leaders = cluster.leaders()
        duration = rng.randint(1, cluster.options.fault_duration_ticks) * UNITS_PER_TICK
        if kind == "crash":
            candidates = [node_id for node_id in node_ids if node_id not in self.active_crashes]
            if leaders and rng.random() < 0.5:
                candidates = [leaders[0]]
            if not candidates:
                return
            target = rng.choice(candidates)
            cluster.crash(target)
            self.active_crashes.add(target)
            cluster.schedule(duration, self._restart, target)
            return
        if kind == "pause":
            target = leaders[0] if leaders and rng.random() < 0.5 else rng.choice(node_ids)
            cluster.pause(target, duration)
            return
        if kind == "disk-error":
            target = leaders[0] if leaders and rng.random() < 0.5 else rng.choice(node_ids)
            operation = rng.choice(("append", "fsync"))
            # The replica stops when it meets the error and is started again after a while.
            cluster.fail_disk(target, operation, rng.choice((errno.EIO, errno.ENOSPC)))
            return
        if kind == "slow-link":
            # A congested path (one direction): what crosses it arrives far behind what other
            # links carry, as from a new leader whose append lands after a deposed one's.
            source, target = rng.sample(node_ids, 2)
            if leaders and rng.random() < 0.5:
                source = leaders[0]
                target = rng.choice([node_id for node_id in node_ids if node_id != source])
            link = (source, target)
            cluster.slow_links[link] = rng.randint(5, 30) * UNITS_PER_TICK
            cluster.log(f"fault slow-link: {link} +{cluster.slow_links[link]}")
            cluster.schedule(duration, self._unslow, link)
            return
        if kind == "bit-rot":
            down = sorted(node_id for node_id in node_ids if cluster.nodes[node_id].core is None)
            if down:
                # Early in the log (found on open: the node stays down) or in its last record
                # (cut as a torn write would be: the node lost its tail and must recover).
                rot = cluster.rot if rng.random() < 0.25 else cluster.rot_tail
                rot(rng.choice(down))
            return
        if kind == "isolate":
            pairs = self._isolation_pairs(rng.choice(node_ids))
        elif kind in ("isolate-leader", "leader-churn"):
            if not leaders:
                return
            pairs = self._isolation_pairs(leaders[0])
            if kind == "leader-churn":
                # Cut the leader off only briefly, again and again: every term leaves a few
                # entries on one node only, the divergent logs that figure 8 needs.
                timeout = cluster.options.election_timeout_ticks
                duration = rng.randint(timeout, 3 * timeout) * UNITS_PER_TICK
        elif kind == "split":
            minority = rng.sample(node_ids, len(node_ids) // 2)
            majority = [node_id for node_id in node_ids if node_id not in minority]
            pairs = [(a, b) for a in minority for b in majority]
            pairs += [(b, a) for a, b in pairs]
        else:  # one-way
            source, target = rng.sample(node_ids, 2)
            if leaders and rng.random() < 0.5:
                source = leaders[0]
                target = rng.choice([node_id for node_id in node_ids if node_id != source])
            pairs = [(source, target)]
        cluster.log(f"fault {kind}: block {pairs}")
        for pair in pairs:
            self.blocked[pair] += 1
            cluster.blocked.add(pair)
        cluster.schedule(duration, self._unblock, pairs)

    def _isolation_pairs(self, node_id: str) -> list[tuple[str, str]]:
        others = [other for other in self.cluster.nodes if other != node_id]
        return [(node_id, other) for other in others] + [(other, node_id) for other in others]

    def _restart(self, node_id: str) -> None:
        self.active_crashes.discard(node_id)
        self.cluster.restart(node_id)

    def _unslow(self, link: tuple[str, str]) -> None:
        self.cluster.slow_links.pop(link, None)

    def _unblock(self, pairs: list[tuple[str, str]]) -> None:
        for pair in pairs:
            self.blocked[pair] -= 1
            if self.blocked[pair] <= 0:
                del self.blocked[pair]
                self.cluster.blocked.discard(pair)

    def stop_and_heal(self) -> None:
        self.stopped = True
        self.blocked.clear()
        self.cluster.heal_network()
        for node in self.cluster.nodes.values():
            node.disk.clear_faults()
        for node_id in self.cluster.nodes:
            self.cluster.restart(node_id)
        self.active_crashes.clear()


def run_seed(request: SimRequest, trace: Callable[[str], None] | None = None) -> SeedResult:
    # The CommitLog logs every open and recovery; thousands per second would drown the output.
    # Only for this seed: the configuration is global, and whoever runs seeds in-process (the
    # tests) logs as before afterwards.
    saved = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    try:
        return _run_seed(request, trace)
    finally:
        structlog.configure(**saved)


def _run_seed(request: SimRequest, trace: Callable[[str], None] | None) -> SeedResult:
    mutant = MUTANTS[request.mutant] if request.mutant is not None else Mutant()
    options = SimOptions.draw(
        request.seed,
        request.nodes,
        request.safety_ticks,
        request.faults,
        learners=max(request.learners, mutant.learners),
        membership=request.membership or mutant.membership,
    )
    cluster = Cluster(options, mutant.core, mutant.driver, trace, mutant.state)
    try:
        workload = _run_phases(cluster)
    except (SafetyViolation, LivenessViolation, BrokerViolation, AssertionError) as error:
        kind = type(error).__name__
        return SeedResult(
            request.seed, False, f"{kind} at t={cluster.now}: {error}", options.describe()
        )
    return SeedResult(
        request.seed,
        True,
        options=options.describe(),
        committed=len(cluster.checker.committed),
        acknowledged=len(cluster.acknowledged),
        elections=len(cluster.checker.leader_by_term),
        sends=len(workload.receipts),
        duplicates=workload.duplicates,
    )


def _run_phases(cluster: Cluster) -> BrokerWorkload:
    options = cluster.options
    faults = FaultInjector(cluster)
    faults.start()
    changes = MembershipChanger(cluster)
    if options.membership:
        changes.start()
    client = _Client(cluster)
    client.start()
    workload = BrokerWorkload(cluster, random.Random(f"broker-{options.seed}"))
    workload.start()
    cluster.run_until(options.safety_ticks * UNITS_PER_TICK)

    # Liveness: faults stop, the network heals, every node is up; a proposal must commit.
    workload.stopped = True
    changes.stopped = True
    faults.stop_and_heal()
    cluster.drop_rate = 0.0
    cluster.duplicate_rate = 0.0
    client.marker_phase = True
    deadline = cluster.now + options.liveness_ticks * UNITS_PER_TICK
    if not cluster.run_until(deadline, client.converged):
        raise LivenessViolation(
            f"no proposal committed on every node within {options.liveness_ticks} ticks of "
            f"healing (leaders: {cluster.leaders()})"
        )
    cluster.check_converged()
    workload.check_converged()
    return workload


class _Client:
    """Proposes unique values at random intervals; after healing, a marker that must commit."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.marker_phase = False
        self.marker_index: int | None = None
        self.markers: list[bytes] = []
        self.last_marker_at = 0
        self.counter = 0

    def start(self) -> None:
        self._schedule()

    def _schedule(self) -> None:
        interval = self.cluster.options.propose_interval_units
        self.cluster.schedule(self.cluster.rng.randint(1, interval), self._propose)

    def _propose(self) -> None:
        self._schedule()
        cluster = self.cluster
        if self.marker_phase:
            # One marker at a time; another only if the last seems lost with its leader.
            patience = 4 * cluster.options.election_timeout_ticks * UNITS_PER_TICK
            if self.marker_index is not None or (
                self.markers and cluster.now - self.last_marker_at < patience
            ):
                return
        if not self.marker_phase and cluster.rng.random() < 0.05:
            # Now and then a batch too big to write inline (as a producer's send_batch makes):
            # the leader keeps receiving acknowledgements while its own write is under way.
            batch = []
            for _ in range(cluster.rng.randint(INLINE_MAX_ENTRIES + 1, 2 * INLINE_MAX_ENTRIES)):
                self.counter += 1
                batch.append(f"value-{self.counter}".encode())
            cluster.propose_batch(batch)
            return
        self.counter += 1
        value = f"{'marker' if self.marker_phase else 'value'}-{self.counter}".encode()
        if cluster.propose(value) and self.marker_phase:
            self.markers.append(value)
            self.last_marker_at = cluster.now

    def converged(self) -> bool:
        cluster = self.cluster
        if self.marker_phase and self.marker_index is None:
            for marker in self.markers:
                if marker in cluster.acknowledged:
                    self.marker_index = cluster.proposed[marker][1]
        if self.marker_index is None:
            return False
        applied = cluster.checker.applied_index
        outsiders = cluster.outsiders()
        return all(
            node.core is not None and applied[node_id] >= self.marker_index
            for node_id, node in cluster.nodes.items()
            if not node.lost and node_id not in outsiders
        )


def run_seeds(requests: Iterable[SimRequest], jobs: int) -> Iterator[SeedResult]:
    if jobs <= 1:
        yield from map(run_seed, requests)
        return
    with multiprocessing.get_context("fork").Pool(jobs) as pool:
        yield from pool.imap_unordered(run_seed, requests, chunksize=8)


def replay_command(request: SimRequest) -> str:
    parts = ["python -m jepsen sim", f"--seed {request.seed}"]
    if request.nodes is not None:
        parts.append(f"--nodes {request.nodes}")
    if request.safety_ticks != 500:
        parts.append(f"--ticks {request.safety_ticks}")
    if request.faults != FAULTS:
        parts.append(f"--faults {','.join(request.faults) or 'none'}")
    if request.mutant is not None:
        parts.append(f"--mutant {request.mutant}")
    if request.learners:
        parts.append(f"--learners {request.learners}")
    if request.membership:
        parts.append("--membership")
    return " ".join(parts)


def elapsed_since(start: float) -> float:
    return time.monotonic() - start
