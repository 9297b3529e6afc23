"""Stopping a node: ``run_node`` stops when its injected shutdown trigger returns; a leader hands
leadership over first, while its open client connections still get their answers; the whole
graceful stop is bounded by ``graceful_stop_ms``. Three nodes in this process, on free ports."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from structlog.testing import capture_logs

from dledger_mq.clients.admin import connect_admin
from dledger_mq.errors import DledgerError, NotLeader
from dledger_mq.node.config import NodeConfig, parse_config
from dledger_mq.node.data_dir import initialise_log
from dledger_mq.node.harness import HarnessOptions
from dledger_mq.node.local_cluster import cluster_on_free_ports
from dledger_mq.node.server import Node, run_node

DEADLINE_SECONDS = 20


@attrs.define
class InProcessNode:
    config: NodeConfig
    #: Set to stop it: its shutdown trigger.
    stop: trio.Event = attrs.Factory(trio.Event)
    #: Set once ``run_node`` has returned.
    stopped: trio.Event = attrs.Factory(trio.Event)
    node: Node | None = None


@asynccontextmanager
async def three_nodes(root: Path, **settings: Any) -> AsyncIterator[dict[str, InProcessNode]]:
    members, _ = cluster_on_free_ports(3)
    table = {node_id: {"peer": m.peer, "client": m.client} for node_id, m in members.items()}
    nodes = {
        node_id: InProcessNode(
            parse_config(
                {
                    "node_id": node_id,
                    "members": table,
                    "data_dir": str(root / node_id),
                    "heartbeat_ticks": 3,
                    "election_ticks": 20,
                    **settings,
                }
            )
        )
        for node_id in members
    }
    for entry in nodes.values():
        initialise_log(entry.config)

    async def run(entry: InProcessNode, *, task_status: trio.TaskStatus[Node]) -> None:
        await run_node(
            entry.config,
            harness=HarnessOptions(raw_proposals=True),  # the tests propose raw entries
            shutdown_trigger=entry.stop.wait,
            task_status=task_status,
        )
        entry.stopped.set()

    async with trio.open_nursery() as nursery:
        for entry in nodes.values():
            entry.node = await nursery.start(run, entry)
        yield nodes
        for entry in nodes.values():
            entry.stop.set()


async def leader_of(nodes: dict[str, InProcessNode]) -> str:
    while True:
        for node_id, entry in nodes.items():
            if not entry.stopped.is_set() and entry.node and entry.node.replica.is_leader:
                return node_id
        await trio.sleep(0.02)


async def test_a_stopping_leader_hands_over_and_its_client_learns_where_the_leader_went(
    tmp_path: Path,
) -> None:
    with trio.fail_after(DEADLINE_SECONDS), capture_logs() as logs:
        async with three_nodes(tmp_path) as nodes:
            old = await leader_of(nodes)
            async with connect_admin(nodes[old].config.me.client) as admin:
                await admin.propose(b"before")
                nodes[old].stop.set()
                await nodes[old].stopped.wait()
                # Its connection stayed open through the hand-over, then closed with the node.
                with pytest.raises(DledgerError):
                    await admin.propose(b"after")
            new = await leader_of(nodes)
            async with connect_admin(nodes[new].config.me.client) as admin:
                await admin.propose(b"to the new leader")
    events = [(e["event"], e.get("node"), e.get("target")) for e in logs]
    handovers = [
        target for event, node, target in events if event == "leadership_handover" and node == old
    ]
    assert handovers == [new], events
    assert ("node_stopped", old, None) in events
    assert not any(event == "graceful_stop_cut_short" for event, _, _ in events)


async def test_a_graceful_stop_that_cannot_finish_is_cut_short_at_its_deadline(
    tmp_path: Path,
) -> None:
    """The followers are gone, so the hand-over cannot finish; the leader stops anyway once
    ``graceful_stop_ms`` has passed, long before its election timeout would end the wait."""
    with trio.fail_after(DEADLINE_SECONDS), capture_logs() as logs:
        async with three_nodes(tmp_path, election_ticks=500, graceful_stop_ms=50) as nodes:
            leader = await leader_of(nodes)
            for node_id, entry in nodes.items():
                if node_id != leader:
                    entry.stop.set()
                    await entry.stopped.wait()
            nodes[leader].stop.set()
            with trio.fail_after(3):  # the election timeout is 5-10 s
                await nodes[leader].stopped.wait()
    cut_short = [e for e in logs if e["event"] == "graceful_stop_cut_short"]
    assert [e["node"] for e in cut_short] == [leader]
    assert cut_short[0]["limit_ms"] == 50


async def test_requests_in_flight_on_a_stopping_leader_are_answered(tmp_path: Path) -> None:
    """A proposal on the stopping leader gets an answer (its index, or NotLeader, naming where
    the leader went once known), not a dropped connection: connections close only after the
    hand-over."""
    with trio.fail_after(DEADLINE_SECONDS):
        async with three_nodes(tmp_path) as nodes:
            old = await leader_of(nodes)
            answers: list[object] = []
            async with connect_admin(nodes[old].config.me.client) as admin:

                async def propose_many() -> None:
                    for number in range(100_000):
                        try:
                            answers.append(await admin.propose(b"%d" % number))
                        except DledgerError as error:
                            answers.append(error)
                            return

                async with trio.open_nursery() as proposers:
                    proposers.start_soon(propose_many)
                    while len(answers) < 5:
                        await trio.sleep(0.01)
                    nodes[old].stop.set()
            # Not a closed connection (Unavailable): the refusal of a replica that no longer
            # leads, naming the new leader once it has heard from it.
            refusal = answers[-1]
            assert isinstance(refusal, NotLeader), refusal
            assert refusal.leader_hint != old
            if refusal.leader_hint is not None:
                assert refusal.leader_address == nodes[refusal.leader_hint].config.me.client
