"""`dledger-mq cluster ...`: the local cluster (`up` and its failover lab) and any cluster's
status and leadership."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import attrs
import click
import trio

from dledger_mq.cli.main import (
    cluster_endpoints,
    cluster_options,
    group_admins,
    json_option,
    main,
    one_line_errors,
    parse_addresses,
    root_option,
)
from dledger_mq.errors import DledgerError, UsageError
from dledger_mq.node.control import Verb

if TYPE_CHECKING:
    from dledger_mq.clients.admin import AdminConnection
    from dledger_mq.node.cluster_status import Probe
    from dledger_mq.wire.admin import MembershipReply


@main.group()
def cluster() -> None:
    """A local cluster (`up` and its failover lab) and any cluster's status and leadership."""


@cluster.command("up")
@root_option
@click.option(
    "--nodes",
    type=click.Choice(["3", "5"]),
    default=None,
    help="How many nodes (default 3); only when the cluster is created.",
)
@click.option(
    "--groups",
    "group_count",
    type=click.IntRange(min=1, max=8),
    default=None,
    help="How many broker groups (default 1), each of --nodes nodes on its own ports; more "
    "than the cluster has adds groups to it.",
)
@click.option(
    "--base-port",
    type=click.IntRange(min=1, max=65515),
    default=None,
    help="Every port derives from it (default 9876: naming 9876-, clients 9881-, peers "
    "9891-, dashboard 8080); only when the cluster is created.",
)
@click.option(
    "--flush",
    type=click.Choice(["sync", "async"]),
    default=None,
    help="sync (default): fsync before acknowledging; only when the cluster is created.",
)
@click.option(
    "--no-restart",
    is_flag=True,
    help="Leave a node that dies down instead of restarting it.",
)
@click.option(
    "--tls",
    is_flag=True,
    help="TLS on every port (a local CA and node certificates under --root); only when the "
    "cluster is created.",
)
@one_line_errors
def cluster_up(
    root: Path,
    nodes: str | None,
    group_count: int | None,
    base_port: int | None,
    flush: str | None,
    no_restart: bool,
    tls: bool,
) -> None:
    """Start a local cluster on 127.0.0.1 and keep it running; Ctrl-C stops it.

    A node that dies is reported and restarted after a back-off (1 s, doubling to 30 s while
    it keeps dying). From another terminal in the same folder: `cluster status`, and the lab
    verbs `cluster kill|stop|start|restart|pause|resume NODE` (`leader` for kill, stop,
    restart and pause). Running it again resumes the same data; a node still running from a
    `cluster up` that was killed is supervised again, not started twice.

    With --groups N the nodes of group b are named b/n1, b/n2, ... (`cluster kill b/leader`);
    group a's nodes run the naming nodes, and every node registers with them.

    It also runs the web dashboard (`dledger-mq dashboard`), supervised like a node, on the
    base port - 1796 (http://127.0.0.1:8080 by default; `cluster kill|start dashboard`).
    """
    from dledger_mq.logs import configure_logging
    from dledger_mq.node.supervisor import run_cluster_up

    # Its own lines only: the logs of making the nodes' data directories are not news.
    configure_logging("warning")
    trio.run(
        run_cluster_up,
        root,
        click.echo,
        None if nodes is None else int(nodes),
        base_port,
        flush,
        not no_restart,
        tls,
        group_count,
    )


#: Each lab verb: its line in `cluster --help`, and what its own --help adds.
_LAB_VERBS = {
    Verb.KILL: ("Kill a node (SIGKILL): a crash.", "It stays down until `cluster start`."),
    Verb.STOP: ("Stop a node gracefully (SIGTERM).", "It stays down until `cluster start`."),
    Verb.START: ("Start a node that is down.", "Also one waiting to restart after a crash."),
    Verb.RESTART: ("Stop a node gracefully and start it again.", ""),
    Verb.PAUSE: (
        "Pause a node (SIGSTOP): alive, silent.",
        "Its connections stay open; `cluster resume` wakes it.",
    ),
    Verb.RESUME: ("Resume a paused node (SIGCONT).", ""),
}


def _add_lab_verb(verb: Verb, summary: str, details: str) -> None:
    from dledger_mq.node.control import LEADER_VERBS

    takes_leader = verb in LEADER_VERBS
    metavar = "NODE|leader" if takes_leader else "NODE"
    node_text = (
        "NODE is a node id (n1; b/n1 for group b's with several groups) or `leader`, "
        "whichever node leads now (`b/leader`: group b's)."
        if takes_leader
        else "NODE is a node id (n1; b/n1 for group b's with several groups)."
    )

    @cluster.command(
        verb.value,
        help=f"{summary} {details}\n\n{node_text} Acts through the `cluster up` running on "
        "--root; refuses when none runs there.",
        short_help=summary.rstrip("."),
    )
    @click.argument("node", metavar=metavar)
    @root_option
    @one_line_errors
    def lab_verb(node: str, root: Path) -> None:
        from dledger_mq.node.control import ControlRequest, call_supervisor

        reply = trio.run(call_supervisor, root, ControlRequest(verb, node))
        click.echo(reply.message)


for _verb, (_summary, _details) in _LAB_VERBS.items():
    _add_lab_verb(_verb, _summary, _details)


@cluster.command("status")
@cluster_options
@json_option("a list of node objects")
@one_line_errors
def cluster_status(endpoints: str | None, root: Path, as_json: bool, cluster_id: str) -> None:
    """Each node's state (running, paused, restarting, down), role, term, leader, log
    positions and followers' lag."""
    from dledger_mq.node.cluster_status import describe_problems, render_table

    objects, problems, supervised = trio.run(_status, endpoints, root, cluster_id)
    if as_json:
        click.echo(json.dumps(objects, indent=2))
    else:
        click.echo(render_table(objects))
        if supervised is False:
            click.echo(
                f"(no `dledger-mq cluster up` runs in {root}: states come from pid files, and "
                "a node that dies is not restarted)",
                err=True,
            )
    if all(node["role"] == "unreachable" for node in objects):
        raise click.ClickException(f"no node reachable: {describe_problems(problems)}")


async def _status(
    endpoints: str | None, root: Path, cluster_id: str
) -> tuple[list[dict[str, object]], list[Probe], bool | None]:
    """The node objects, the probes behind them, and whether a supervisor answered (None:
    not a local cluster)."""
    from dledger_mq.node.cluster_layout import ClusterLayout
    from dledger_mq.node.cluster_status import probe_all, status_objects
    from dledger_mq.node.control import (
        ControlRequest,
        SupervisorNotRunning,
        call_supervisor,
    )
    from dledger_mq.node.supervisor import local_node_states

    states: dict[str, dict[str, object]] | None = None
    supervised: bool | None = None
    if endpoints:
        targets = [(address, address) for address in parse_addresses(endpoints, "--endpoints")]
    else:
        layout = ClusterLayout.load(root)
        targets = cluster_endpoints(None, root)
        if layout is not None:
            try:
                reply = await call_supervisor(root, ControlRequest(Verb.STATUS))
                states = {str(node["id"]): dict(node) for node in reply.nodes}
                supervised = True
            except SupervisorNotRunning:
                states = local_node_states(layout)
                supervised = False
    probes = await probe_all(targets, cluster_id)
    return status_objects(probes, states), probes, supervised


@cluster.command("balance-leaders")
@cluster_options
@json_option("each group's leader before and after")
@one_line_errors
def cluster_balance_leaders(
    endpoints: str | None, root: Path, cluster_id: str, as_json: bool
) -> None:
    """Spread the broker groups' leaders: the i-th group (by name) hands leadership to its
    ((i mod members) + 1)-th node, so with groups on the same machines (node n1 of every group
    on one, n2 on the next, ...) each machine leads its share. A group whose preferred node
    cannot take over keeps its leader, and says why."""
    from dledger_mq.node.cluster_status import find_group_leaders, preferred_leaders

    async def balance() -> list[dict[str, object]]:
        leaders = await find_group_leaders(cluster_endpoints(endpoints, root), cluster_id)
        preferred = preferred_leaders(leaders)
        results = []
        async with group_admins(endpoints, root, cluster_id) as admins:
            for group, status in leaders.items():
                target = preferred[group]
                result: dict[str, object] = {
                    "group": group,
                    "before": status.node_id,
                    "preferred": target,
                    "after": status.node_id,
                    "problem": None,
                }
                if status.node_id != target:
                    try:
                        result["after"] = await admins[group].transfer_leader(target)
                    except DledgerError as error:
                        result["problem"] = str(error)
                results.append(result)
        return results

    results = trio.run(balance)
    if as_json:
        click.echo(json.dumps(results, indent=2))
        return
    for result in results:
        if result["problem"]:
            click.echo(
                f"{result['group']}: {result['before']} still leads; {result['preferred']} "
                f"could not take over: {result['problem']}"
            )
        elif result["before"] == result["after"]:
            click.echo(f"{result['group']}: {result['after']} leads (preferred)")
        else:
            click.echo(f"{result['group']}: {result['before']} -> {result['after']}")


GROUP_OPTION_HELP = "The broker group (`broker-b` or `b`); needed when there are several."


def _one_group(broker_group: str | None, admins: dict[str, AdminConnection]) -> str:
    from dledger_mq.clients.admin import resolve_groups

    if broker_group is None and len(admins) > 1:
        raise UsageError(f"give --group: one of {', '.join(admins)}")
    [chosen] = resolve_groups(broker_group, list(admins)) if broker_group else list(admins)
    return chosen


def _membership_object(group: str, reply: MembershipReply) -> dict[str, object]:
    return {
        "group": group,
        "index": reply.index,
        "voters": [attrs.asdict(member) for member in reply.voters],
        "learners": [attrs.asdict(member) for member in reply.learners],
    }


def _membership_line(group: str, reply: MembershipReply) -> str:
    voters = ", ".join(member.node_id for member in reply.voters)
    learners = ", ".join(member.node_id for member in reply.learners) or "none"
    return f"{group}: voters {voters}; learners {learners}"


@cluster.command("members")
@click.option("--group", "broker_group", default=None, help=GROUP_OPTION_HELP)
@cluster_options
@json_option("each group's voters and learners")
@one_line_errors
def cluster_members(
    broker_group: str | None, endpoints: str | None, root: Path, cluster_id: str, as_json: bool
) -> None:
    """Each broker group's voters and learners, as its leader's log says."""
    from dledger_mq.clients.admin import resolve_groups

    async def fetch() -> list[tuple[str, MembershipReply]]:
        async with group_admins(endpoints, root, cluster_id) as admins:
            groups = resolve_groups(broker_group, list(admins))
            return [(group, await admins[group].membership()) for group in groups]

    found = trio.run(fetch)
    if as_json:
        click.echo(json.dumps([_membership_object(g, r) for g, r in found], indent=2))
        return
    for group, reply in found:
        click.echo(_membership_line(group, reply))


#: How long add-replica waits for the new member to catch up, and remove-replica for a
#: leadership hand-over, by default.
MEMBERSHIP_WAIT_SECONDS = 120.0


@cluster.command("add-replica")
@click.option("--group", "broker_group", default=None, help=GROUP_OPTION_HELP)
@click.option("--node", "node_id", required=True, help="The new member's node id.")
@click.option(
    "--peer",
    default=None,
    metavar="HOST:PORT",
    help="Its peer (Raft) address (a local cluster's: made and started for you if omitted).",
)
@click.option("--client", default=None, metavar="HOST:PORT", help="Its client address.")
@click.option("--learner-only", is_flag=True, help="Leave it a learner (no vote) once caught up.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=MEMBERSHIP_WAIT_SECONDS,
    show_default=True,
    help="Seconds to wait for it to catch up.",
)
@cluster_options
@one_line_errors
def cluster_add_replica(
    broker_group: str | None,
    node_id: str,
    peer: str | None,
    client: str | None,
    learner_only: bool,
    timeout: float,
    endpoints: str | None,
    root: Path,
    cluster_id: str,
) -> None:
    """Add a replica to a broker group, online: as a learner first (it gets the log, or the
    leader's snapshot, and counts in no quorum), then, once it has caught up, as a voter.
    Start the new node first (its node.toml lists the group's members and itself, with
    `learners = ["NODE"]`; docs/operations.md, "Changing a group's members"). On the local
    cluster `cluster up` runs (no --peer, --client or --endpoints), the node is made on the
    group's next ports and started and supervised by `cluster up`."""
    from dledger_mq.errors import MembershipChangeInProgress

    if (peer is None) != (client is None):
        raise click.UsageError("give both --peer and --client, or neither (a local cluster)")
    if peer is None or client is None:
        if endpoints:
            raise click.UsageError("with --endpoints, give the new node's --peer and --client")
        peer, client = _start_local_node(root, broker_group, node_id)

    def say(line: str) -> None:
        click.echo(line)

    async def add() -> str:
        async with group_admins(endpoints, root, cluster_id) as admins:
            group = _one_group(broker_group, admins)
            leader = admins[group]
            await leader.change_membership("add-learner", node_id, peer, client)
            say(f"{group}: {node_id} added as a learner; catching up")
            last_shown = -1
            with trio.fail_after(timeout):
                while True:
                    status = await leader.status()
                    match = next(
                        (f.match_index for f in status.followers if f.node_id == node_id), 0
                    )
                    if match >= status.commit_index:
                        break
                    if match != last_shown:
                        say(f"{node_id}: has {match} of {status.commit_index} committed entries")
                        last_shown = match
                    await trio.sleep(0.2)
                if learner_only:
                    return _membership_line(group, await leader.membership())
                while True:
                    try:
                        reply = await leader.change_membership("promote", node_id)
                        break
                    except MembershipChangeInProgress:
                        await trio.sleep(0.2)  # it fell behind again, or a change is pending
            say(f"{group}: {node_id} caught up and promoted to voter")
            return _membership_line(group, reply)

    try:
        click.echo(trio.run(add))
    except trio.TooSlowError:
        raise click.ClickException(
            f"{node_id} did not catch up within {timeout:g} s: is it running, and does its "
            "node.toml name it a learner of this group? (it stays a learner; "
            f"`cluster remove-replica --node {node_id}` takes it out)"
        ) from None


def _start_local_node(root: Path, broker_group: str | None, node_id: str) -> tuple[str, str]:
    """Have the `cluster up` running on ``root`` make and start ``node_id`` in the group;
    its (peer, client) addresses."""
    from dledger_mq.node.cluster_layout import ClusterLayout, short_group_name
    from dledger_mq.node.control import ControlRequest, call_supervisor

    layout = ClusterLayout.load(root)
    if layout is None:
        raise UsageError(f"no local cluster in {root}: give --peer, --client and --endpoints")
    groups = layout.groups
    if broker_group is None and len(groups) > 1:
        raise UsageError(f"give --group: one of {', '.join(groups)}")
    group = broker_group or groups[0]
    group = group if group in groups else f"broker-{group}"
    name = node_id if len(groups) == 1 else f"{short_group_name(group)}/{node_id}"
    reply = trio.run(call_supervisor, root, ControlRequest(Verb.ADD, name))
    click.echo(reply.message)
    reloaded = ClusterLayout.load(root)
    assert reloaded is not None
    node = reloaded.node(name)
    return node.peer, node.client


@cluster.command("remove-replica")
@click.option("--group", "broker_group", default=None, help=GROUP_OPTION_HELP)
@click.option("--node", "node_id", required=True, help="The member to remove.")
@cluster_options
@one_line_errors
def cluster_remove_replica(
    broker_group: str | None, node_id: str, endpoints: str | None, root: Path, cluster_id: str
) -> None:
    """Remove a replica from a broker group, online (a voter or a learner). If it leads, it
    hands leadership to another voter first. Stop the removed node afterwards: it no longer
    counts, and nothing reaches it."""

    async def remove() -> tuple[str, str]:
        async with group_admins(endpoints, root, cluster_id) as admins:
            group = _one_group(broker_group, admins)
            leader = admins[group]
            status = await leader.status()
            if status.node_id == node_id:
                membership = await leader.membership()
                others = {m.node_id for m in membership.voters} - {node_id}
                lags = {f.node_id: f.lag for f in status.followers if f.node_id in others}
                if not lags:
                    raise UsageError(f"{node_id} is the group's only voter: it cannot go")
                target = min(sorted(lags), key=lambda other: lags[other])
                click.echo(f"{group}: {node_id} leads; handing leadership to {target} first")
                await leader.transfer_leader(target)
        async with group_admins(endpoints, root, cluster_id, [group]) as admins:
            reply = await admins[group].change_membership("remove", node_id)
        click.echo(f"{group}: {node_id} removed")
        return _membership_line(group, reply), group

    line, group = trio.run(remove)
    click.echo(line)
    if not endpoints:
        _retire_local_node(root, group, node_id)


def _retire_local_node(root: Path, group: str, node_id: str) -> None:
    """On a local cluster, `cluster up` stops the removed node and never starts it again."""
    from dledger_mq.node.cluster_layout import ClusterLayout, short_group_name
    from dledger_mq.node.control import ControlRequest, SupervisorNotRunning, call_supervisor

    layout = ClusterLayout.load(root)
    if layout is None or group not in layout.groups:
        return
    name = node_id if len(layout.groups) == 1 else f"{short_group_name(group)}/{node_id}"
    try:
        reply = trio.run(call_supervisor, root, ControlRequest(Verb.RETIRE, name))
    except SupervisorNotRunning:
        click.echo(f"no `cluster up` runs in {root}: stop {name} yourself")
        return
    click.echo(reply.message)


@cluster.command("transfer-leader")
@click.option("--to", "target", required=True, help="Id of the node that should lead.")
@click.option(
    "--group",
    "broker_group",
    default=None,
    help="The broker group (`broker-b` or `b`); needed when there are several.",
)
@cluster_options
@one_line_errors
def cluster_transfer_leader(
    target: str, broker_group: str | None, endpoints: str | None, root: Path, cluster_id: str
) -> None:
    """Hand leadership of a broker group to TARGET (it must be an up-to-date member)."""
    from dledger_mq.clients.admin import resolve_groups

    async def transfer() -> str:
        async with group_admins(endpoints, root, cluster_id) as admins:
            if broker_group is None and len(admins) > 1:
                raise UsageError(f"give --group: one of {', '.join(admins)}")
            [chosen] = resolve_groups(broker_group, list(admins)) if broker_group else admins
            return await admins[chosen].transfer_leader(target)

    click.echo(f"leader is now {trio.run(transfer)}")
