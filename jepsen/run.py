"""One harness run against real nodes: start, attack, heal, recover, drain, check, report.

The run directory holds the evidence: ``history.jsonl`` (written as the run goes), ``nodes/``
(each node's config, data and log), ``results.json``, ``report.html`` and ``run.json`` (what was
asked and what was concluded).

With ``groups`` > 1 the cluster is that many broker groups (Raft groups) of ``nodes`` nodes
each, the topic is created in every group (``WorkloadOptions.queues`` queues in each), and the
final read reads every group from its leader.
"""

from __future__ import annotations

import datetime
import json
import random
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

import attrs
import trio

from dledger_mq.clients.admin import connect_admin
from dledger_mq.clients.naming import connect_naming
from dledger_mq.errors import DledgerError
from jepsen.checkers import OnTime, RetryRules, check_all
from jepsen.history import INFO, PHASE, RUNNER, CheckResult, History
from jepsen.nemesis import FaultSpec, Nemesis, Schedule
from jepsen.nodes import CLUSTER_ID, Nodes
from jepsen.proxy import ProxyNetwork
from jepsen.report import write_report
from jepsen.workload import TOPIC, Workload, WorkloadOptions, make_workload

PROGRESS_SECONDS = 5.0


@attrs.frozen
class RunOptions:
    time_s: float = 60.0
    #: Nodes per broker group.
    nodes: int = 3
    #: Broker groups (each its own Raft group of ``nodes`` nodes) the topic spans.
    groups: int = 1
    nemesis: tuple[FaultSpec, ...] = ()
    workload: WorkloadOptions = WorkloadOptions()
    schedule: Schedule = Schedule()
    seed: int = 0
    out: Path | None = None
    #: Negative control: nodes acknowledge before fsync (they must be caught losing data).
    ack_before_fsync: bool = False
    #: TLS on every port and clients that sign in (docs/security.md): the cluster as one
    #: would run it, attacked the same way.
    secure: bool = False
    startup_timeout_s: float = 30.0
    recovery_timeout_s: float = 30.0
    drain_timeout_s: float = 60.0

    @property
    def spares(self) -> int:
        """Spare nodes per group: one for the membership fault to add (a removed node's slot
        is the next spare, its data deleted)."""
        return 1 if any(s.fault == "membership" for s in self.nemesis) else 0

    @property
    def harness_options(self) -> list[str]:
        options = []
        if self.ack_before_fsync or any(s.fault == "lose-unsynced" for s in self.nemesis):
            options.append("lose-unsynced")
        if self.ack_before_fsync:
            options.append("ack-before-fsync")
        return options


@attrs.frozen
class RunOutcome:
    directory: Path
    results: list[CheckResult]
    recovered: bool

    @property
    def valid(self) -> bool:
        return all(result.valid for result in self.results)


def default_directory() -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%dT%H%M%S")
    return Path("jepsen-runs") / stamp


async def run(options: RunOptions, echo: Callable[[str], None]) -> RunOutcome:
    directory = options.out or default_directory()
    directory.mkdir(parents=True, exist_ok=False)
    rng = random.Random(options.seed)
    history = History(directory / "history.jsonl")
    began = trio.current_time()
    started_at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    wall_began = time.monotonic()

    def now() -> float:
        return round(trio.current_time() - began, 6)

    def phase(name: str) -> None:
        history.add(now(), RUNNER, INFO, PHASE, value=name)
        echo(f"[{now():7.1f}s] {name}")

    nodes = Nodes(
        directory / "nodes",
        options.nodes,
        options.harness_options,
        options.groups,
        spares=options.spares,
    )
    recovered = False
    workload = make_workload(options.workload, nodes, history, now, options.seed)
    try:
        async with trio.open_nursery() as nursery:
            proxy = ProxyNetwork(
                nodes.peer_addresses(),
                rng,
                nodes.peer_groups(),
                nodes.link_ports,
                inbound=nodes.inbound_ports,
                identify=nodes.owner_of_port,
            )
            await nursery.start(proxy.run)
            nodes.write_configs(proxy.address, tls=options.secure)
            nodes.start_all()
            if options.groups > 1:
                echo(
                    f"{options.groups} broker groups of {options.nodes} nodes under "
                    f"{directory / 'nodes'}; waiting for their leaders"
                )
            else:
                echo(f"{options.nodes} nodes under {directory / 'nodes'}; waiting for a leader")
            with trio.fail_after(options.startup_timeout_s):
                await nodes.wait_recovered()
                if options.secure:
                    await nodes.add_user()
                await _create_topic(nodes, options.workload)
                await workload.setup(nodes)
            nemesis = Nemesis(
                list(options.nemesis),
                nodes,
                proxy,
                history,
                now,
                rng,
                options.schedule,
                entry_peer=proxy.inbound_address if options.spares else None,
            )
            recovered = await _attack_and_drain(options, workload, nemesis, nodes, proxy, phase)
            nursery.cancel_scope.cancel()
    finally:
        nodes.close()
        history.close()

    work = options.workload
    results = check_all(
        history.ops,
        fifo=work.fifo,
        groups=options.groups,
        # A producer held by a send written to the group that went down, until it times out.
        patience_s=work.send_timeout_s + 1.0,
        on_time=OnTime(work.on_time_s, work.settle_s) if work.delayed else None,
        retry_rules=RetryRules(work.max_attempts, work.retry_delays_ms) if work.retrying else None,
    )
    (directory / "results.json").write_text(
        json.dumps([attrs.asdict(result) for result in results], indent=2)
    )
    valid = all(result.valid for result in results)
    meta: dict[str, object] = {
        "command": " ".join(shlex.quote(arg) for arg in sys.argv),
        "verdict": "PASS" if valid else "FAIL",
        "nodes": options.nodes,
        "broker groups": options.groups,
        "workload": options.workload.name,
        **options.workload.describe(),
        "nemesis": ",".join(
            spec.fault + (f":{spec.target}" if spec.target else "") for spec in options.nemesis
        )
        or "none",
        "harness options": ",".join(options.harness_options) or "none",
        "tls and users": options.secure,
        "seed": options.seed,
        "duration s": round(time.monotonic() - wall_began, 1),
        "started at": started_at,
        "recovered after heal": recovered,
    }
    (directory / "run.json").write_text(json.dumps(meta, indent=2, default=str))
    write_report(directory / "report.html", history.ops, results, meta)
    return RunOutcome(directory, results, recovered)


async def _create_topic(nodes: Nodes, workload: WorkloadOptions) -> None:
    """The topic in every group (through its leader), then, with several groups, until every
    naming node routes it to all of them: a producer that saw only some would keep to those
    for as long as it caches the route."""
    for group in nodes.groups:
        while True:
            leader = await nodes.leader(group)
            if leader is not None:
                try:
                    async with connect_admin(
                        nodes.members[leader].client, CLUSTER_ID, nodes.credentials, nodes.tls
                    ) as admin:
                        await admin.create_topic(TOPIC, workload.queues, fifo=workload.fifo)
                        break
                except DledgerError:
                    pass
            await trio.sleep(0.1)
    if len(nodes.groups) == 1:
        return
    for address in nodes.member_naming_addresses:
        while True:
            try:
                # Anonymous, as the SDK asks naming (naming nodes hold no users).
                async with connect_naming(
                    address, CLUSTER_ID, "jepsen", ssl_context=nodes.tls
                ) as naming:
                    routes = await naming.routes(TOPIC)
                if {route.group for route in routes} >= set(nodes.groups):
                    break
            except DledgerError:
                pass
            await trio.sleep(0.05)


async def _attack_and_drain(
    options: RunOptions,
    workload: Workload,
    nemesis: Nemesis,
    nodes: Nodes,
    proxy: ProxyNetwork,
    phase: Callable[[str], None],
) -> bool:
    """The workload under faults, then heal, recover and drain; returns whether it recovered."""
    stop_producers = trio.Event()
    producers_done = trio.Event()
    stop_nemesis = trio.Event()
    nemesis_done = trio.Event()

    async def produce() -> None:
        try:
            await workload.produce(stop_producers)
        finally:
            producers_done.set()

    async def attack() -> None:
        try:
            await nemesis.run(stop_nemesis)
        finally:
            nemesis_done.set()

    async with trio.open_nursery() as nursery:
        phase("workload")
        nursery.start_soon(workload.consume)
        nursery.start_soon(produce)
        nursery.start_soon(attack)
        nursery.start_soon(_show_progress, workload, nemesis)
        await trio.sleep(options.time_s)
        stop_nemesis.set()
        await nemesis_done.wait()
        phase("heal")
        proxy.heal()
        nodes.heal()
        recovered = False
        with trio.move_on_after(options.recovery_timeout_s):
            await nodes.wait_recovered()
            recovered = True
        phase("recovered" if recovered else "not-recovered")
        stop_producers.set()
        with trio.move_on_after(options.workload.send_timeout_s + 5):
            await producers_done.wait()
        phase("drain")
        with trio.move_on_after(options.drain_timeout_s):
            while workload.unconsumed:
                await workload.progress.wait()
            await workload.settle(nodes)
        nursery.cancel_scope.cancel()
    # What is stored now, read from the start: loss that consumers had already seen past.
    with trio.move_on_after(options.drain_timeout_s):
        await nodes.wait_recovered()
        leaders = await nodes.leaders()
        if all(leader is not None for leader in leaders.values()):
            phase("read")
            for leader in leaders.values():
                assert leader is not None
                await workload.final_read(nodes.members[leader].client)
    phase("done")
    return recovered


async def _show_progress(workload: Workload, nemesis: Nemesis) -> None:
    while True:
        await trio.sleep(PROGRESS_SECONDS)
        counts = workload.counts
        fault = nemesis.status
        by_group = workload.acknowledged_by_group
        groups = (
            " (" + ", ".join(f"{group} {n:,}" for group, n in sorted(by_group.items())) + ")"
            if len(by_group) > 1
            else ""
        )
        print(
            f"  sends ok {counts['ok']:,}{groups} info {counts['info']:,} fail {counts['fail']:,}"
            f" | received {counts['receive']:,} (unconsumed {workload.unconsumed:,})"
            f"{workload.progress_note} | {fault}",
            file=sys.stderr,
            flush=True,
        )
