"""Real `dledger-mq node` processes on 127.0.0.1: elections, replication, crashes and restarts.

Every test gets three fresh nodes (the ``cluster`` fixture) on ephemeral ports with fast Raft
timing (elections after 200-400 ms). Waits poll the processes under generous deadlines.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest
import trio
from trio_websocket import WebSocketRequest, serve_websocket

from dledger_mq.clients.admin import connect_admin
from dledger_mq.errors import DledgerError, NotLeader
from dledger_mq.node.cluster_status import fetch_status
from dledger_mq.raft.pure.messages import AppendResponse, Heartbeat
from dledger_mq.raft.runtime.transport import PEER_CODEC
from dledger_mq.wire.address import Address
from dledger_mq.wire.admin import ADMIN_CODEC
from dledger_mq.wire.frames import FrameDecoder, encode_frames
from dledger_mq.wire.handshake import PROTOCOL_VERSION, ErrorReply, Hello, PeerProof, Welcome
from dledger_mq.wire.peer_auth import (
    CLUSTER_SECRET_FILE_NAME,
    load_cluster_secret,
    new_nonce,
    peer_proof,
)
from tests.node.cluster_fixture import (
    CLUSTER_ID,
    DEADLINE_SECONDS,
    ProcessCluster,
    Statuses,
    agreed_leader,
)

# -- elections and replication -------------------------------------------------------------------


async def test_three_nodes_elect_one_leader_that_all_follow(cluster: ProcessCluster) -> None:
    statuses = await cluster.wait_until(
        lambda statuses: (
            all(status is not None for status in statuses.values())
            and agreed_leader(statuses) is not None
        ),
        "all three nodes up and following one leader",
        node_ids=cluster.nodes,
    )
    leader = agreed_leader(statuses)
    assert leader is not None
    roles = sorted(status.role for status in statuses.values() if status is not None)
    assert roles == ["follower", "follower", "leader"]
    for node_id, status in statuses.items():
        assert status is not None and status.node_id == node_id
        assert (status.leader, status.term) == (leader.node_id, leader.term)
        assert status.leader_address == cluster.client_address(leader.node_id)
    assert leader.term >= 1
    assert sorted(f.node_id for f in leader.followers) == sorted(
        node_id for node_id in cluster.nodes if node_id != leader.node_id
    )


async def test_proposals_commit_and_every_node_applies_them(cluster: ProcessCluster) -> None:
    indexes = [await cluster.propose(f"entry {number}".encode()) for number in range(10)]

    assert indexes == sorted(indexes) and len(set(indexes)) == len(indexes)
    statuses = await cluster.wait_caught_up(indexes[-1], cluster.nodes)
    for status in statuses.values():
        assert status is not None
        # Invariant: applied <= committed <= last_index.
        assert status.applied_index <= status.commit_index <= status.last_index
    leader = await cluster.wait_for_leader()
    await cluster.wait_until(
        lambda statuses: (
            (status := statuses[leader.node_id]) is not None
            and len(status.followers) == 2
            and all(follower.match_index >= indexes[-1] for follower in status.followers)
        ),
        f"the leader sees both followers at index {indexes[-1]}",
        node_ids=[leader.node_id],
    )


async def test_follower_refuses_a_proposal_and_names_the_leader(cluster: ProcessCluster) -> None:
    leader = await cluster.wait_for_leader()
    follower = next(node_id for node_id in cluster.nodes if node_id != leader.node_id)

    refusals: list[NotLeader] = []
    try:
        async with connect_admin(cluster.client_address(follower), CLUSTER_ID) as admin:
            await admin.propose(b"to a follower")
    except* NotLeader as group:  # bare or wrapped: see the next test
        refusals.extend(group.exceptions)  # type: ignore[arg-type]

    assert len(refusals) == 1
    assert refusals[0].leader_hint == leader.node_id
    assert getattr(refusals[0], "leader_address", None) == leader.address


async def test_admin_client_raises_not_leader_itself(cluster: ProcessCluster) -> None:
    leader = await cluster.wait_for_leader()
    follower = next(node_id for node_id in cluster.nodes if node_id != leader.node_id)

    with pytest.raises(NotLeader):
        async with connect_admin(cluster.client_address(follower), CLUSTER_ID) as admin:
            await admin.propose(b"to a follower")


# -- crashes and restarts ------------------------------------------------------------------------


async def test_sigkill_of_the_leader_elects_another_and_the_restarted_node_catches_up(
    cluster: ProcessCluster,
) -> None:
    first = await cluster.propose(b"before the crash")
    old = await cluster.wait_for_leader()

    cluster.kill(old.node_id)
    new = await cluster.wait_for_leader(exclude=[old.node_id], min_term=old.term)
    assert new.node_id != old.node_id and new.term > old.term

    after = [await cluster.propose(f"after the crash {n}".encode()) for n in range(5)]
    assert first < after[0] < after[-1]

    cluster.start(old.node_id)
    statuses = await cluster.wait_until(
        lambda statuses: _all_equal_and_at_least(statuses, after[-1]),
        f"{old.node_id} restarted and caught up with index {after[-1]}",
        node_ids=cluster.nodes,
    )
    rejoined = statuses[old.node_id]
    assert rejoined is not None and rejoined.role == "follower"
    assert rejoined.term >= new.term and rejoined.leader is not None


async def test_divergent_uncommitted_tail_is_truncated(cluster: ProcessCluster) -> None:
    committed = await cluster.propose(b"committed everywhere")
    await cluster.wait_caught_up(committed, cluster.nodes)
    old = await cluster.wait_for_leader()
    followers = [node_id for node_id in cluster.nodes if node_id != old.node_id]

    # The lone leader appends proposals it can never commit, then steps down (check-quorum).
    async with connect_admin(old.address, CLUSTER_ID) as admin:
        for follower in followers:
            cluster.kill(follower)

        async def doomed(number: int) -> None:
            try:
                await admin.propose(f"doomed {number}".encode())
            except* DledgerError:
                pass  # NotLeader once it steps down: these never commit

        with trio.move_on_after(1.0):
            async with trio.open_nursery() as nursery:
                for number in range(3):
                    nursery.start_soon(doomed, number)

    lone = await cluster.status(old.node_id)
    assert lone is not None
    assert lone.last_index > lone.commit_index, f"no uncommitted tail on {old.node_id}: {lone}"
    cluster.kill(old.node_id)

    for follower in followers:
        cluster.start(follower)
    new = await cluster.wait_for_leader(min_term=old.term)
    assert new.node_id in followers
    indexes = [await cluster.propose(f"new leader {n}".encode()) for n in range(3)]

    cluster.start(old.node_id)
    statuses = await cluster.wait_until(
        lambda statuses: _all_equal_and_at_least(statuses, indexes[-1]),
        f"{old.node_id} back with the new leader's log",
        node_ids=cluster.nodes,
    )
    assert statuses[old.node_id] is not None
    truncations = [
        event
        for event in cluster.log_events(old.node_id, since=cluster.nodes[old.node_id].log_offset)
        if event.get("event") == "log_truncated"
    ]
    assert truncations, f"{old.node_id} never logged log_truncated"
    from_index = truncations[0]["from_index"]
    assert isinstance(from_index, int)
    # Only the uncommitted tail goes: never an entry that was committed before the crash.
    assert lone.commit_index < from_index <= lone.last_index


async def test_full_restart_keeps_every_committed_entry(cluster: ProcessCluster) -> None:
    indexes = [await cluster.propose(f"entry {n}".encode()) for n in range(5)]
    before = await cluster.wait_caught_up(indexes[-1], cluster.nodes)
    commit_before = max(s.commit_index for s in before.values() if s is not None)

    exit_codes: dict[str, int] = {}

    async def stop(node_id: str) -> None:
        exit_codes[node_id] = await cluster.stop(node_id)

    async with trio.open_nursery() as nursery:
        for node_id in cluster.nodes:
            nursery.start_soon(stop, node_id)
    assert exit_codes == dict.fromkeys(cluster.nodes, 0)

    cluster.start_all()
    # Whatever each node reads back from disk covers everything committed before the stop.
    recovered = await cluster.wait_until(
        lambda statuses: all(status is not None for status in statuses.values()),
        "all three nodes answering after the restart",
        node_ids=cluster.nodes,
    )
    for node_id, status in recovered.items():
        assert status is not None
        assert status.last_index >= commit_before, f"{node_id} lost entries: {status}"

    leader = await cluster.wait_for_leader()
    assert leader.term > max(s.term for s in before.values() if s is not None)
    new_index = await cluster.propose(b"after the restart")
    assert new_index > commit_before
    after = await cluster.wait_caught_up(new_index, cluster.nodes)
    for status in after.values():
        assert status is not None and status.commit_index >= commit_before


async def test_sigterm_of_the_leader_hands_leadership_over(cluster: ProcessCluster) -> None:
    await cluster.propose(b"before the stop")
    old = await cluster.wait_for_leader()

    marks = {node_id: cluster.log_mark(node_id) for node_id in cluster.nodes}
    started = trio.current_time()
    exit_code = await cluster.stop(old.node_id)
    new = await cluster.wait_for_leader(exclude=[old.node_id], min_term=old.term)
    elapsed = trio.current_time() - started

    assert exit_code == 0
    assert new.node_id != old.node_id
    handovers = [
        e for e in cluster.log_events(old.node_id) if e.get("event") == "leadership_handover"
    ]
    assert [e["target"] for e in handovers] == [new.node_id]
    # TimeoutNow: the target campaigns at once, at the next term, without a pre-vote round.
    assert new.term == old.term + 1
    roles = [
        (e["role"], e["term"])
        for e in cluster.log_events(new.node_id, since=marks[new.node_id])
        if e.get("event") == "role_changed"
    ]
    assert roles == [("candidate", new.term), ("leader", new.term)]
    assert elapsed < 5.0
    assert await cluster.propose(b"after the stop") > 0


# -- hostile peers -------------------------------------------------------------------------------


async def _converse(
    address: str, data: bytes, *, end: bool = False, member: bool = False
) -> list[ErrorReply]:
    """Send ``data`` to a peer port and read until the node hangs up: the errors it answered
    (after its ``Welcome`` when ``data`` opens with a member's Hello)."""
    peer = Address.parse(address)
    stream = await trio.open_tcp_stream(peer.host, peer.port)
    decoder = FrameDecoder()
    replies: list[ErrorReply] = []
    async with stream:
        with trio.fail_after(DEADLINE_SECONDS):
            await stream.send_all(data)
            if end:
                await stream.send_eof()
            while True:
                try:
                    chunk = await stream.receive_some(1 << 16)
                except trio.BrokenResourceError:
                    break  # reset by the node
                if not chunk:
                    break
                decoder.receive_data(chunk)
                for frame in decoder.next_frames():
                    reply = PEER_CODEC.decode(frame).message
                    if member and isinstance(reply, Welcome) and not replies:
                        continue
                    assert isinstance(reply, ErrorReply), f"a stranger got {reply!r}"
                    replies.append(reply)
    return replies


async def test_garbage_and_strangers_on_the_peer_port_are_refused(cluster: ProcessCluster) -> None:
    leader = await cluster.wait_for_leader()
    address = cluster.peer_address(leader.node_id)

    oversized = await _converse(address, b"\xff\xff\xff\xff" + b"\x00" * 16)
    assert [reply.code for reply in oversized] == ["FrameTooLarge"]

    undecodable = await _converse(address, encode_frames([b"\xc1" * 32]))
    assert [reply.code for reply in undecodable] == ["ProtocolError"]

    # Whatever the node makes of noise, it answers at most an error and hangs up.
    await _converse(address, random.Random(6).randbytes(512), end=True)

    hello = PEER_CODEC.encode(Hello("other", "n9", PROTOCOL_VERSION))
    refused = await _converse(address, encode_frames([hello]))
    assert [reply.code for reply in refused] == ["HandshakeRefused"]
    # Nothing about the cluster for a stranger (docs/security.md).
    assert refused[0].message == "handshake refused" and CLUSTER_ID not in repr(refused)

    assert await cluster.propose(b"still healthy") > 0
    assert sorted(cluster.running) == sorted(cluster.nodes)
    statuses = await cluster.statuses()
    assert agreed_leader(statuses) is not None


async def _member_link(
    cluster: ProcessCluster, target: str, member: str
) -> tuple[trio.SocketStream, FrameDecoder]:
    """A peer link to ``target`` as ``member``, through the authenticated handshake (the
    cluster's secret: what a member holds)."""
    secret = load_cluster_secret(str(cluster.root / CLUSTER_SECRET_FILE_NAME))
    peer = Address.parse(cluster.peer_address(target))
    stream = await trio.open_tcp_stream(peer.host, peer.port)
    nonce = new_nonce()
    await stream.send_all(
        encode_frames([PEER_CODEC.encode(Hello(CLUSTER_ID, member, PROTOCOL_VERSION, nonce))])
    )
    decoder = FrameDecoder()
    while not (frames := decoder.next_frames()):
        decoder.receive_data(await stream.receive_some(1 << 16))
    welcome = PEER_CODEC.decode(frames[0]).message
    assert isinstance(welcome, Welcome)
    fields = (CLUSTER_ID, member, target, nonce, welcome.nonce)
    proof = PeerProof(peer_proof(secret, "hello", *fields))
    await stream.send_all(encode_frames([PEER_CODEC.encode(proof)]))
    return stream, decoder


async def _errors_until_hang_up(
    stream: trio.SocketStream, decoder: FrameDecoder
) -> list[ErrorReply]:
    replies: list[ErrorReply] = []
    with trio.fail_after(DEADLINE_SECONDS):
        while True:
            try:
                chunk = await stream.receive_some(1 << 16)
            except trio.BrokenResourceError:
                break
            if not chunk:
                break
            decoder.receive_data(chunk)
            for frame in decoder.next_frames():
                reply = PEER_CODEC.decode(frame).message
                assert isinstance(reply, ErrorReply)
                replies.append(reply)
    return replies


async def test_a_handshake_message_after_the_handshake_is_refused_not_fatal(
    cluster: ProcessCluster,
) -> None:
    leader = await cluster.wait_for_leader()
    member = next(node_id for node_id in cluster.nodes if node_id != leader.node_id)
    hello = encode_frames([PEER_CODEC.encode(Hello(CLUSTER_ID, member, PROTOCOL_VERSION))])
    stream, decoder = await _member_link(cluster, leader.node_id, member)
    async with stream:
        await stream.send_all(hello)  # again, now as a Raft message
        await _errors_until_hang_up(stream, decoder)

    assert await cluster.propose(b"after the stray hello") > 0
    assert leader.node_id in cluster.running, cluster.log_text(leader.node_id)[-2000:]


# -- the status command and helpers --------------------------------------------------------------


def _cluster_status_json(cluster: ProcessCluster) -> list[dict[str, object]]:
    endpoints = ",".join(address for _, address in cluster.endpoints())
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "dledger_mq",
            "cluster",
            "status",
            "--endpoints",
            endpoints,
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=DEADLINE_SECONDS,
    )
    assert result.returncode == 0, result.stderr
    objects = json.loads(result.stdout)
    assert isinstance(objects, list)
    return objects


STATUS_FIELDS = {
    "id",
    "group",
    "address",
    "state",
    "pid",
    "problem",
    "role",
    "term",
    "leader",
    "last_index",
    "commit_index",
    "applied_index",
    "followers",
}


async def test_cluster_status_json_lists_every_node(cluster: ProcessCluster) -> None:
    leader = await cluster.wait_for_leader()
    await cluster.wait_caught_up(1, cluster.nodes)

    objects = await trio.to_thread.run_sync(_cluster_status_json, cluster)
    assert len(objects) == 3
    for node in objects:
        assert set(node) == STATUS_FIELDS
    assert [node["address"] for node in objects] == [a for _, a in cluster.endpoints()]
    leaders = [node for node in objects if node["role"] == "leader"]
    assert len(leaders) == 1
    assert leaders[0]["address"] == leader.address
    assert all(node["leader"] == leader.node_id for node in objects)
    followers = leaders[0]["followers"]
    assert isinstance(followers, list)
    assert {f["id"] for f in followers} == set(cluster.nodes) - {leader.node_id}

    victim = next(node_id for node_id in cluster.nodes if node_id != leader.node_id)
    cluster.kill(victim)
    objects = await trio.to_thread.run_sync(_cluster_status_json, cluster)
    by_address = {node["address"]: node for node in objects}
    unreachable = by_address[cluster.client_address(victim)]
    assert unreachable["role"] == "unreachable"
    assert unreachable["term"] is None and unreachable["followers"] == []
    assert [node["role"] for node in objects].count("leader") == 1


async def test_cluster_status_json_ids_are_node_ids(cluster: ProcessCluster) -> None:
    await cluster.wait_for_leader()
    objects = await trio.to_thread.run_sync(_cluster_status_json, cluster)
    assert [node["id"] for node in objects] == list(cluster.nodes)


async def test_fetch_status_of_a_node_that_hangs_up_mid_request_is_none() -> None:
    async def welcome_then_hang_up(request: WebSocketRequest) -> None:
        connection = await request.accept()
        await connection.get_message()  # Hello
        welcome = Welcome(CLUSTER_ID, "n1", PROTOCOL_VERSION)
        await connection.send_message(ADMIN_CODEC.encode(welcome))
        await connection.get_message()  # StatusRequest
        await connection.aclose()

    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_websocket, welcome_then_hang_up, "127.0.0.1", 0, None)
        with trio.fail_after(DEADLINE_SECONDS):
            assert await fetch_status(f"127.0.0.1:{server.port}") is None
        nursery.cancel_scope.cancel()


def _all_equal_and_at_least(statuses: Statuses, index: int) -> bool:
    """Every node reachable and following one leader, with the same last and commit index,
    at least ``index``."""
    replies = [reply for reply in statuses.values() if reply is not None]
    positions = {(reply.last_index, reply.commit_index) for reply in replies}
    return (
        len(replies) == len(statuses)
        and len(positions) == 1
        and min(reply.commit_index for reply in replies) >= index
        and agreed_leader(statuses) is not None
    )


async def test_a_forged_term_from_a_member_link_is_refused_and_changes_nothing(
    cluster: ProcessCluster,
) -> None:
    """A Heartbeat with term 2^64-1 once killed the replica (the term did not fit the state
    file); a negative index was accepted by the codec. Now both close the link, nothing else."""
    leader = await cluster.wait_for_leader()
    member = next(node_id for node_id in cluster.nodes if node_id != leader.node_id)
    before = await cluster.status(leader.node_id)
    assert before is not None
    for forged in (
        Heartbeat(term=(1 << 64) - 1, source=member, target=leader.node_id, commit=0),
        AppendResponse(
            term=before.term, source=member, target=leader.node_id, success=True, match_index=-1
        ),
    ):
        stream, decoder = await _member_link(cluster, leader.node_id, member)
        async with stream:
            await stream.send_all(encode_frames([PEER_CODEC.encode(forged, 0, "broker-a")]))
            replies = await _errors_until_hang_up(stream, decoder)
        assert [reply.code for reply in replies] == ["ProtocolError"], replies
        assert "out of range" in replies[0].message or "outside" in replies[0].message
    assert await cluster.propose(b"after the forged messages") > 0
    after = await cluster.status(leader.node_id)
    assert after is not None and after.term == before.term and after.role == "leader"
    assert sorted(cluster.running) == sorted(cluster.nodes)
