"""Everything one simulation run depends on, drawn from its seed and printed before it runs."""

from __future__ import annotations

import random

import attrs

FAULTS = (
    "crash",
    "isolate",
    "isolate-leader",
    "leader-churn",
    "split",
    "one-way",
    "drop",
    "duplicate",
    "reorder",
    "pause",
    "clock-skew",
    "slow-disk",
    "disk-error",
    "bit-rot",
    "slow-link",
)
#: Faults that are rates on every message rather than events with a start and an end.
MESSAGE_FAULTS = ("drop", "duplicate", "reorder")
#: Faults that are properties of the nodes, drawn once, rather than events.
NODE_FAULTS = ("clock-skew", "slow-disk")

#: Virtual time units per Raft tick; message and disk latencies are drawn in these units.
UNITS_PER_TICK = 10


@attrs.frozen
class SimOptions:
    seed: int
    nodes: int
    election_timeout_ticks: int
    heartbeat_interval_ticks: int
    max_append_bytes: int
    max_inflight_appends: int
    min_delay_units: int
    max_delay_units: int
    reorder_rate: float
    drop_rate: float
    duplicate_rate: float
    disk_latency_units: int
    fault_interval_ticks: int
    fault_duration_ticks: int
    propose_interval_units: int
    segment_size_bytes: int
    safety_ticks: int
    liveness_ticks: int
    faults: tuple[str, ...]
    #: The broker's idempotence window every node is configured with (a new leader proposes it).
    idempotence_window: int = 1024
    #: Per node (n1 first): virtual time units between two of its ticks (its clock's rate).
    tick_units: tuple[int, ...] = ()
    #: Per node: how long its disk takes to write and fsync a batch.
    disk_latency_per_node: tuple[int, ...] = ()
    #: A crashed node may come back with an empty data directory: it rejoins recovering, and
    #: votes again only once a leader has caught it up (``RaftCore``).
    amnesia: bool = True
    #: Nodes trim their logs below their snapshots: a follower left behind gets a snapshot.
    trim_log: bool = True
    #: Learners besides the ``nodes`` voters (``Config.learners``): replicated to, never
    #: counted; faults hit them like any node.
    learners: int = 0
    #: Membership changes under the faults: spare servers are added as learners, promoted,
    #: and voters removed (``jepsen/sim/membership.py``).
    membership: bool = False

    @classmethod
    def draw(
        cls,
        seed: int,
        nodes: int | None = None,
        safety_ticks: int = 500,
        faults: tuple[str, ...] = FAULTS,
        amnesia: bool = True,
        learners: int = 0,
        membership: bool = False,
    ) -> SimOptions:
        rng = random.Random(f"options-{seed}")
        # Swarm testing: each seed enables a random subset of the faults, so that no fault is
        # always diluted by the others (a run of only leader isolations finds other bugs).
        # Message faults are rarer: a lossy network hides the sequences some bugs need.
        swarm = tuple(
            fault
            for fault in faults
            if rng.random() < (0.5 if fault not in MESSAGE_FAULTS + NODE_FAULTS else 0.25)
        )
        if faults and not swarm:
            swarm = (rng.choice(faults),)
        election_timeout = rng.choice((10, 10, 15, 20))
        # Small limits split batches, which exposes probing and commit-counting bugs.
        max_append_bytes = rng.choice((1, 1, 64, 1 << 20))
        max_inflight_appends = rng.choice((1, 4, 64))
        max_delay_units = rng.randint(4, 30)
        node_count = nodes if nodes is not None else rng.choice((3, 3, 5))
        heartbeat_interval = rng.choice((1, 2, 3, 4))
        min_delay_units = rng.randint(1, 3)
        reorder_rate = rng.choice((0.05, 0.3, 1.0)) if "reorder" in swarm else 0.0
        drop_rate = rng.choice((0.02, 0.1, 0.25)) if "drop" in swarm else 0.0
        duplicate_rate = rng.choice((0.02, 0.1)) if "duplicate" in swarm else 0.0
        disk_latency_units = rng.randint(1, 8)
        fault_interval_ticks = rng.randint(3, 25)
        fault_duration_ticks = rng.randint(3, 40)
        # Keep the client's load within what the drawn pipeline can replicate, so that the
        # liveness phase measures recovery rather than the draining of an endless backlog.
        # Heavy reordering defeats pipelining: a batch overtaken by the next one is rejected.
        pipelined = max_inflight_appends if reorder_rate < 0.3 else 1
        entries_per_round_trip = max(1, max_append_bytes // 32) * pipelined
        # One disk much slower than the others: its node persists last, even when it leads.
        disk_latency_per_node = tuple(
            disk_latency_units * rng.choice((1, 1, 2, 4))
            if "slow-disk" in swarm
            else disk_latency_units
            for _ in range(node_count)
        )
        round_trip_units = 2 * max_delay_units + max(disk_latency_per_node)
        slowest_propose_units = max(5, 4 * round_trip_units // entries_per_round_trip)
        propose_interval_units = rng.randint(slowest_propose_units, 60 + slowest_propose_units)
        # Tiny segments make the log roll, and crashes tear, at segment boundaries too.
        segment_size_bytes = rng.choice((256, 4096, 1 << 20))
        idempotence_window = rng.choice((8, 1024))
        # A node whose clock runs fast times out sooner; one that runs slow, later.
        tick_units = tuple(
            rng.randint(7, 13) if "clock-skew" in swarm else UNITS_PER_TICK
            for _ in range(node_count)
        )
        return cls(
            seed=seed,
            nodes=node_count,
            election_timeout_ticks=election_timeout,
            heartbeat_interval_ticks=heartbeat_interval,
            max_append_bytes=max_append_bytes,
            max_inflight_appends=max_inflight_appends,
            min_delay_units=min_delay_units,
            max_delay_units=max_delay_units,
            reorder_rate=reorder_rate,
            drop_rate=drop_rate,
            duplicate_rate=duplicate_rate,
            disk_latency_units=disk_latency_units,
            fault_interval_ticks=fault_interval_ticks,
            fault_duration_ticks=fault_duration_ticks,
            propose_interval_units=propose_interval_units,
            segment_size_bytes=segment_size_bytes,
            safety_ticks=safety_ticks,
            liveness_ticks=max(40 * election_timeout, 400),
            faults=swarm,
            idempotence_window=idempotence_window,
            tick_units=tick_units,
            disk_latency_per_node=disk_latency_per_node,
            amnesia=amnesia,
            # Asked for, not drawn: a learner changes every schedule, and with it what each
            # recorded seed (tests/jepsen/sim_regressions.txt) means.
            learners=learners,
            membership=membership,
        )

    def describe(self) -> str:
        fields = attrs.asdict(self)
        fields["faults"] = ",".join(self.faults)
        return " ".join(f"{name}={value}" for name, value in fields.items())
