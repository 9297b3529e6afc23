"""The harness with several broker groups, without starting a node: the nodes' names, ports
and configs, the proxy's links, the nemesis acting in one group per window, and the report's
per-group parts. (tests/jepsen/test_live.py runs two real groups.)"""

from __future__ import annotations

import random
from pathlib import Path
from typing import cast

import pytest
import trio

from dledger_mq.node.config import load_config
from dledger_mq.node.local_cluster import free_ports
from jepsen.checkers import check_all
from jepsen.history import FAULT, History
from jepsen.nemesis import FaultSpec, Nemesis, Schedule
from jepsen.nodes import Nodes
from jepsen.proxy import ProxyNetwork
from jepsen.report import render_report

A, B = "broker-a", "broker-b"


# --- Nodes -----------------------------------------------------------------------------------


def test_two_groups_of_three_are_named_by_group_and_configured_apart(tmp_path: Path) -> None:
    nodes = Nodes(tmp_path / "nodes", 3, [], groups=2)
    assert nodes.groups == [A, B]
    assert nodes.node_ids == ["a/n1", "a/n2", "a/n3", "b/n1", "b/n2", "b/n3"]
    assert nodes.group_node_ids(B) == ["b/n1", "b/n2", "b/n3"]
    assert nodes.peer_groups() == [["a/n1", "a/n2", "a/n3"], ["b/n1", "b/n2", "b/n3"]]
    # Every port is different: the nodes' three each and the proxy's, one per link in a group.
    ports = [
        address.rsplit(":", 1)[1]
        for member in nodes.members.values()
        for address in (member.peer, member.client)
    ] + [address.rsplit(":", 1)[1] for address in nodes.naming.values()]
    ports += [str(port) for port in nodes.link_ports.values()]
    assert len(nodes.link_ports) == 12 and len(ports) == len(set(ports)) == 30
    assert ("a/n1", "b/n1") not in nodes.link_ports

    nodes.write_configs(lambda src, dst: f"127.0.0.1:{nodes.link_ports[(src, dst)]}")
    config = load_config(tmp_path / "nodes" / "b" / "n2" / "node.toml", {})
    assert (config.node_id, config.group) == ("n2", B)
    assert sorted(config.members) == ["n1", "n2", "n3"]
    assert config.members["n1"] == nodes.members["b/n1"]
    assert config.peer_dial == {
        "n1": f"127.0.0.1:{nodes.link_ports[('b/n2', 'b/n1')]}",
        "n3": f"127.0.0.1:{nodes.link_ports[('b/n2', 'b/n3')]}",
    }
    assert list(config.naming) == nodes.naming_addresses and len(config.naming) == 6
    assert config.naming_listen == nodes.naming["b/n2"]
    assert (tmp_path / "nodes" / "a" / "n1" / "node.toml").exists()


def test_one_group_keeps_its_plain_names(tmp_path: Path) -> None:
    nodes = Nodes(tmp_path, 3, [])
    assert nodes.node_ids == ["n1", "n2", "n3"] and nodes.groups == [A]
    assert len(nodes.link_ports) == 6


# --- The proxy -------------------------------------------------------------------------------


async def test_the_proxy_links_only_nodes_of_one_group_on_the_ports_given() -> None:
    names = ["a/n1", "a/n2", "b/n1", "b/n2"]
    upstreams = {name: f"127.0.0.1:{port}" for name, port in zip(names, free_ports(4), strict=True)}
    groups = [["a/n1", "a/n2"], ["b/n1", "b/n2"]]
    links = [("a/n1", "a/n2"), ("a/n2", "a/n1"), ("b/n1", "b/n2"), ("b/n2", "b/n1")]
    ports = dict(zip(links, free_ports(4), strict=True))
    proxy = ProxyNetwork(upstreams, random.Random(1), groups, ports)
    assert proxy.links() == links
    with pytest.raises(ValueError, match="different groups"):
        proxy.partition([("a/n1", "b/n1")])
    proxy.isolate("a/n1")
    assert proxy.blocked == {("a/n1", "a/n2"), ("a/n2", "a/n1")}
    async with trio.open_nursery() as nursery:
        await nursery.start(proxy.run)
        assert proxy.address("b/n2", "b/n1") == f"127.0.0.1:{ports[('b/n2', 'b/n1')]}"
        nursery.cancel_scope.cancel()


# --- The nemesis -----------------------------------------------------------------------------


class FakeNodes:
    """What the nemesis uses of ``Nodes``, recording what it was told to do."""

    def __init__(self, groups: int) -> None:
        self.groups = [A, B][:groups]
        self.size = 3
        self.names = {
            group: [f"n{n}" if groups == 1 else f"{group[-1]}/n{n}" for n in (1, 2, 3)]
            for group in self.groups
        }
        self.actions: list[tuple[str, str]] = []

    @property
    def node_ids(self) -> list[str]:
        return [name for names in self.names.values() for name in names]

    def group_node_ids(self, group: str) -> list[str]:
        return self.names[group]

    async def leader(self, group: str | None = None) -> str | None:
        return self.names[group or self.groups[0]][1]  # n2 leads every group

    async def wait_none_recovering(self) -> None:
        pass

    def kill(self, node_id: str) -> None:
        self.actions.append(("kill", node_id))

    def wipe(self, node_id: str) -> None:
        self.actions.append(("wipe", node_id))

    def pause(self, node_id: str) -> None:
        self.actions.append(("pause", node_id))

    def resume(self, node_id: str) -> None:
        self.actions.append(("resume", node_id))

    def start(self, node_id: str) -> None:
        self.actions.append(("start", node_id))


class FakeNetwork:
    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def isolate(self, node: str) -> None:
        self.calls.append(("isolate", node))

    def split(self, *sides: object) -> None:
        self.calls.append(("split", sides))

    def partition(self, blocked: object) -> None:
        self.calls.append(("partition", blocked))

    def set_delay(self, links: object, mean_s: float, jitter_s: float) -> None:
        self.calls.append(("delay", links))

    def set_loss(self, links: object, probability: float, retransmit_s: float) -> None:
        self.calls.append(("loss", links))

    def heal(self) -> None:
        self.calls.append(("heal", None))


async def run_nemesis(
    nemesis_text: str, groups: int, seed: int = 5
) -> tuple[list[dict[str, object]], FakeNodes, FakeNetwork]:
    nodes, network, history = FakeNodes(groups), FakeNetwork(), History()
    nemesis = Nemesis(
        FaultSpec.parse_list(nemesis_text, 3),
        cast(Nodes, nodes),
        network,
        history,
        trio.current_time,
        random.Random(seed),
        Schedule(0.01, 0.02, 0.01, 0.02),
    )
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(nemesis.run, stop)
        while nemesis.windows < 12:
            await trio.sleep(0.01)
        stop.set()
    starts = [op.value for op in history.ops if op.f == FAULT and op.value["phase"] == "start"]
    return starts, nodes, network


async def test_each_window_takes_one_groups_majority_and_leaves_the_other_alone() -> None:
    starts, nodes, _ = await run_nemesis("kill:majority,pause:majority", 2)
    assert {value["group"] for value in starts} == {A, B}
    for value in starts:
        targets = cast(list[str], value["targets"])
        assert len(targets) == 2 and value["majority_down"] is True
        assert all(target.startswith(f"{str(value['group'])[-1]}/") for target in targets)
    # Every node killed was started again, every node paused resumed.
    killed = [node for action, node in nodes.actions if action == "kill"]
    assert sorted(killed) == sorted(node for action, node in nodes.actions if action == "start")
    paused = [node for action, node in nodes.actions if action == "pause"]
    assert sorted(paused) == sorted(node for action, node in nodes.actions if action == "resume")


async def test_other_targets_act_in_the_drawn_group_and_do_not_take_its_majority() -> None:
    starts, _, network = await run_nemesis("kill:leader,partition:leader,delay:all", 2)
    for value in starts:
        assert value["majority_down"] is False
        if value["mode"] == "leader":
            assert value["targets"] == [f"{str(value['group'])[-1]}/n2"]  # that group's leader
    delays = [links for call, links in network.calls if call == "delay"]
    assert delays and all(
        links is not None and len({src[0] for src, _ in cast(list[tuple[str, str]], links)}) == 1
        for links in delays
    )


async def test_one_group_records_no_group() -> None:
    starts, _, _ = await run_nemesis("kill,pause", 1)
    assert starts and all("group" not in value and "majority_down" not in value for value in starts)


# --- The report ------------------------------------------------------------------------------


def two_group_history() -> History:
    """Sends to a and b every 0.1 s; a's majority down from 10 to 20 s (only b acknowledges)."""
    h = History()
    h.add(0.0, "runner", "info", "phase", value="workload")
    window = {"fault": "kill", "targets": ["a/n1", "a/n2"], "window": 1, "group": A}
    for i in range(300):
        t = i * 0.1
        if t == 10.0:
            h.add(
                t,
                "nemesis",
                "info",
                "fault",
                value={**window, "phase": "start", "majority_down": True},
            )
        if t == 20.0:
            h.add(
                t,
                "nemesis",
                "info",
                "fault",
                value={**window, "phase": "end", "majority_down": True},
            )
        group = B if 10.0 <= t < 20.0 or i % 2 else A
        h.add(t, "p0", "invoke", "send", value=f"p0-{i}")
        h.add(t + 0.005, "p0", "ok", "send", value=f"p0-{i}", group=group, queue=0, offset=i)
        h.add(t + 0.01, "c0", "ok", "receive", value=f"p0-{i}", group=group, queue=0, offset=i)
    h.add(30.0, "runner", "info", "phase", value="done")
    return h


def test_the_report_shows_each_groups_throughput_and_the_group_outages() -> None:
    ops = two_group_history().ops
    results = check_all(ops, groups=2, patience_s=6.0)
    assert all(result.valid for result in results)
    page = render_report(ops, results, {"broker groups": 2})
    assert "acknowledged by broker-a/s (dashed)" in page
    assert "acknowledged by broker-b/s (dashed)" in page
    assert page.count('stroke-dasharray="4 2"') >= 2
    assert "<h2>Group outages</h2>" in page
    table = page[page.index('<table class="group-windows">') :]
    table = table[: table.index("</table>")]
    assert "<td>broker-a</td>" in table and "<td>a/n1, a/n2</td>" in table
    assert '<td class="num">100</td>' in table  # b's acknowledgements in the 10 s window
    # The availability table names the group of each window too.
    windows = page[page.index('<table class="windows">') :]
    assert "<th>group</th>" in windows[: windows.index("</tr>")]


def test_a_report_of_one_group_has_no_group_parts() -> None:
    h = History()
    h.add(0.0, "p0", "invoke", "send", value="p0-1")
    h.add(0.1, "p0", "ok", "send", value="p0-1", group=A, queue=0, offset=0)
    page = render_report(h.ops, check_all(h.ops), {})
    assert "Group outages" not in page and "acknowledged by" not in page
