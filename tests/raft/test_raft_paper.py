"""One test per claim of the Raft paper, in the spirit of etcd-raft's ``raft_paper_test.go``.

Reference: Ongaro and Ousterhout, "In Search of an Understandable Consensus Algorithm" (extended
version); section numbers are in the test names. The last part covers what this core adds to the
paper: pre-vote and check-quorum (Raft thesis 9.6 and 6.2), leadership transfer (thesis 3.10),
and the driver's persistence contract.

Unit-style tests drive one core with hand-made messages; scenario tests use ``Network``.
"""

from __future__ import annotations

import contextlib
import random

import pytest

from dledger_mq.errors import LeadershipTransferInProgress, NotLeader, ProtocolError
from dledger_mq.raft.pure.core import Config, RaftCore, Ready, Role
from dledger_mq.raft.pure.log_store import MemoryLogStore
from dledger_mq.raft.pure.messages import (
    AppendRequest,
    AppendResponse,
    Entry,
    EntryKind,
    HardState,
    Heartbeat,
    HeartbeatResponse,
    Message,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
)
from tests.raft.network import (
    FIVE_NODES,
    THREE_NODES,
    Network,
    all_messages,
    log_terms,
    store_with,
    stored_entries,
    stored_terms,
)

ELECTION_TIMEOUT_TICKS = 10


# -- driving one core by hand ------------------------------------------------------------------


def new_core(
    node_id: str = "n1",
    members: tuple[str, ...] = THREE_NODES,
    store: MemoryLogStore | None = None,
    seed: int = 0,
    **overrides: object,
) -> tuple[RaftCore, MemoryLogStore]:
    store = store if store is not None else MemoryLogStore()
    config = Config(node_id=node_id, members=members, **overrides)  # type: ignore[arg-type]
    return RaftCore(config, store, random.Random(seed)), store


def drain(core: RaftCore, store: MemoryLogStore) -> list[Message]:
    """Handle every Ready of a lone core as the driver would; returns what it sent."""
    sent: list[Message] = []
    while core.has_ready():
        ready = core.ready()
        sent.extend(ready.messages_before_persist)
        store.append(list(ready.entries))
        if ready.hard_state is not None:
            store.set_hard_state(ready.hard_state)
        sent.extend(ready.messages)
        core.advance()
    return sent


def win_election(core: RaftCore, store: MemoryLogStore) -> list[Message]:
    """Campaign and receive just enough granted (pre-)votes to lead; returns what was sent."""
    term = core.term + 1
    core.campaign()
    voters = core.peers[: core.quorum - 1]
    if core.config.pre_vote:
        for voter in voters:
            core.step(
                VoteResponse(term=term, source=voter, target=core.id, granted=True, pre_vote=True)
            )
    for voter in voters:
        core.step(VoteResponse(term=term, source=voter, target=core.id, granted=True))
    assert core.role is Role.LEADER
    return drain(core, store)


def acknowledge(core: RaftCore, peers: list[str] | tuple[str, ...], match_index: int) -> None:
    for peer in peers:
        core.step(
            AppendResponse(
                term=core.term, source=peer, target=core.id, success=True, match_index=match_index
            )
        )


def append_request(
    term: int,
    prev_index: int,
    prev_term: int,
    entries: list[Entry] | None = None,
    leader_commit: int = 0,
    source: str = "n2",
    target: str = "n1",
) -> AppendRequest:
    return AppendRequest(
        term=term,
        source=source,
        target=target,
        prev_index=prev_index,
        prev_term=prev_term,
        entries=tuple(entries or ()),
        leader_commit=leader_commit,
    )


def log_entries_of(network: Network, node_id: str) -> list[Entry]:
    return stored_entries(network.stores[node_id])


def only(messages: list[Message], kind: type) -> list:
    return [message for message in messages if isinstance(message, kind)]


# -- 5.1 Raft basics ---------------------------------------------------------------------------


def _core_in_role(role: Role) -> tuple[RaftCore, MemoryLogStore]:
    if role is Role.FOLLOWER:
        core, store = new_core()
    elif role is Role.PRE_CANDIDATE:
        core, store = new_core()
        core.campaign()
    elif role is Role.CANDIDATE:
        core, store = new_core(pre_vote=False)
        core.campaign()
    else:
        core, store = new_core()
        win_election(core, store)
    drain(core, store)
    assert core.role is role
    return core, store


@pytest.mark.parametrize("role", list(Role), ids=lambda role: role.value)
@pytest.mark.parametrize("message_kind", ["heartbeat", "append-response"])
def test_5_1_a_server_with_a_higher_term_converts_to_follower(
    role: Role, message_kind: str
) -> None:
    core, store = _core_in_role(role)
    higher = core.term + 5
    if message_kind == "heartbeat":
        core.step(Heartbeat(term=higher, source="n2", target="n1", commit=0))
        expected_leader = "n2"
    else:
        core.step(AppendResponse(term=higher, source="n2", target="n1", success=False))
        expected_leader = None

    assert core.role is Role.FOLLOWER
    assert core.term == higher
    assert core.vote is None
    assert core.leader == expected_leader
    drain(core, store)
    assert store.hard_state().term == higher


def test_5_1_a_request_with_a_stale_term_is_rejected() -> None:
    core, store = new_core(store=store_with([], term=3))

    core.step(append_request(term=2, prev_index=0, prev_term=0, entries=[Entry(1, 2)]))
    core.step(VoteRequest(term=2, source="n3", target="n1", last_log_index=9, last_log_term=2))
    core.step(
        VoteRequest(
            term=2, source="n3", target="n1", last_log_index=9, last_log_term=2, pre_vote=True
        )
    )
    sent = drain(core, store)

    assert core.term == 3 and core.leader is None and core.vote is None
    assert store.last_index() == 0, "a stale leader's entries were accepted"
    [append_response] = only(sent, AppendResponse)
    assert append_response.term == 3 and not append_response.success
    assert all(not response.granted for response in only(sent, VoteResponse))
    assert all(response.term == 3 for response in only(sent, VoteResponse))


def test_5_1_a_stale_leader_steps_down_when_a_follower_answers_with_its_term() -> None:
    leader, leader_store = new_core()
    win_election(leader, leader_store)

    leader.step(AppendResponse(term=7, source="n2", target="n1", success=False))

    assert leader.role is Role.FOLLOWER
    assert leader.term == 7
    with pytest.raises(NotLeader):
        leader.propose(b"x")


# -- 5.2 Leader election -----------------------------------------------------------------------


@pytest.mark.parametrize("pre_vote", [False, True], ids=["plain", "pre-vote"])
def test_5_2_follower_starts_election_after_election_timeout(pre_vote: bool) -> None:
    core, store = new_core(store=store_with([1, 1], term=1), pre_vote=pre_vote)
    timeout = core.randomized_election_timeout
    assert ELECTION_TIMEOUT_TICKS <= timeout < 2 * ELECTION_TIMEOUT_TICKS

    for _ in range(timeout - 1):
        core.tick()
    assert core.role is Role.FOLLOWER
    assert drain(core, store) == []

    core.tick()
    requests = only(drain(core, store), VoteRequest)

    assert core.role is (Role.PRE_CANDIDATE if pre_vote else Role.CANDIDATE)
    assert core.term == (1 if pre_vote else 2)
    assert sorted(request.target for request in requests) == ["n2", "n3"]
    assert all(request.term == 2 and request.pre_vote == pre_vote for request in requests)


def test_5_2_follower_that_hears_from_a_leader_does_not_start_an_election() -> None:
    core, store = new_core(store=store_with([], term=1))

    for tick in range(10 * ELECTION_TIMEOUT_TICKS):
        if tick % (ELECTION_TIMEOUT_TICKS // 2) == 0:
            core.step(Heartbeat(term=1, source="n2", target="n1", commit=0))
        core.tick()
        assert only(drain(core, store), VoteRequest) == []

    assert core.role is Role.FOLLOWER
    assert core.leader == "n2"


def test_5_2_leader_sends_heartbeats_every_heartbeat_interval() -> None:
    core, store = new_core(heartbeat_interval_ticks=2)
    win_election(core, store)

    core.tick()
    assert only(drain(core, store), Heartbeat) == []
    core.tick()
    heartbeats = only(drain(core, store), Heartbeat)

    assert sorted(heartbeat.target for heartbeat in heartbeats) == ["n2", "n3"]
    assert all(heartbeat.term == core.term for heartbeat in heartbeats)


def test_5_2_candidate_votes_for_itself_and_requests_votes() -> None:
    core, store = new_core(store=store_with([1, 1, 2], term=2), pre_vote=False)

    core.campaign()
    ready = core.ready()

    assert core.role is Role.CANDIDATE
    assert ready.hard_state == HardState(term=3, vote="n1", commit=0)
    assert ready.must_sync
    assert sorted(all_messages(ready), key=lambda message: message.target) == [
        VoteRequest(term=3, source="n1", target=peer, last_log_index=3, last_log_term=2)
        for peer in ("n2", "n3")
    ]


def test_9_6_pre_candidate_keeps_term_and_vote_until_it_wins_the_pre_vote() -> None:
    core, store = new_core(store=store_with([1, 1, 2], term=2, vote="n3"))

    core.campaign()
    ready = core.ready()
    assert core.role is Role.PRE_CANDIDATE
    assert ready.hard_state is None, "a pre-vote must not change term or vote"
    assert all(
        isinstance(m, VoteRequest) and m.pre_vote and m.term == 3 for m in all_messages(ready)
    )
    store.append(list(ready.entries))
    core.advance()

    core.step(VoteResponse(term=3, source="n2", target="n1", granted=True, pre_vote=True))
    ready = core.ready()

    assert core.role is Role.CANDIDATE
    assert ready.hard_state == HardState(term=3, vote="n1", commit=0)
    assert all(isinstance(m, VoteRequest) and not m.pre_vote for m in all_messages(ready))


def test_5_2_each_server_votes_for_at_most_one_candidate_per_term() -> None:
    core, store = new_core()

    def vote_request(term: int, candidate: str) -> list[VoteResponse]:
        core.step(
            VoteRequest(term=term, source=candidate, target="n1", last_log_index=0, last_log_term=0)
        )
        return only(drain(core, store), VoteResponse)

    assert [response.granted for response in vote_request(1, "n2")] == [True]
    assert store.hard_state() == HardState(term=1, vote="n2")
    assert [response.granted for response in vote_request(1, "n3")] == [False]
    # The same candidate asking again (a retried request) gets the same answer.
    assert [response.granted for response in vote_request(1, "n2")] == [True]
    assert store.hard_state() == HardState(term=1, vote="n2")
    # A new term is a new election.
    assert [response.granted for response in vote_request(2, "n3")] == [True]
    assert store.hard_state() == HardState(term=2, vote="n3")


@pytest.mark.parametrize(
    ("members", "votes", "expected_role"),
    [
        (("n1",), {}, Role.LEADER),
        (THREE_NODES, {"n2": True}, Role.LEADER),
        (THREE_NODES, {}, Role.CANDIDATE),
        (THREE_NODES, {"n2": False}, Role.CANDIDATE),
        (THREE_NODES, {"n2": False, "n3": False}, Role.FOLLOWER),
        (FIVE_NODES, {"n2": True, "n3": True}, Role.LEADER),
        (FIVE_NODES, {"n2": True, "n3": False, "n4": True}, Role.LEADER),
        (FIVE_NODES, {"n2": True}, Role.CANDIDATE),
        (FIVE_NODES, {"n2": True, "n3": False, "n4": False}, Role.CANDIDATE),
        (FIVE_NODES, {"n2": False, "n3": False, "n4": False}, Role.FOLLOWER),
    ],
)
def test_5_2_candidate_wins_with_a_majority(
    members: tuple[str, ...], votes: dict[str, bool], expected_role: Role
) -> None:
    core, store = new_core(members=members, pre_vote=False)
    core.campaign()
    for voter, granted in votes.items():
        core.step(VoteResponse(term=1, source=voter, target="n1", granted=granted))

    assert core.role is expected_role
    assert core.term == 1
    if expected_role is Role.LEADER:
        assert core.leader == "n1"
        # A new leader announces itself at once (with its no-op), not at the next tick.
        appends = only(drain(core, store), AppendRequest)
        assert sorted(append.target for append in appends) == sorted(members[1:])


@pytest.mark.parametrize("role", [Role.PRE_CANDIDATE, Role.CANDIDATE], ids=lambda r: r.value)
@pytest.mark.parametrize("kind", ["append", "heartbeat"])
def test_5_2_candidate_returns_to_follower_on_append_from_leader_of_same_term(
    role: Role, kind: str
) -> None:
    core, store = new_core(store=store_with([], term=1), pre_vote=role is Role.PRE_CANDIDATE)
    core.campaign()
    assert core.role is role
    term = core.term

    if kind == "append":
        core.step(append_request(term=term, prev_index=0, prev_term=0, source="n3"))
    else:
        core.step(Heartbeat(term=term, source="n3", target="n1", commit=0))

    assert core.role is Role.FOLLOWER
    assert core.term == term
    assert core.leader == "n3"


def test_5_2_candidate_rejects_append_from_a_stale_leader_and_stays_candidate() -> None:
    core, store = new_core(store=store_with([], term=1), pre_vote=False)
    core.campaign()
    drain(core, store)

    core.step(append_request(term=1, prev_index=0, prev_term=0, source="n3", target="n1"))

    assert core.role is Role.CANDIDATE
    [response] = only(drain(core, store), AppendResponse)
    assert response.term == 2 and not response.success


@pytest.mark.parametrize("pre_vote", [False, True], ids=["plain", "pre-vote"])
def test_5_2_candidate_starts_a_new_election_when_its_election_times_out(pre_vote: bool) -> None:
    core, store = new_core(pre_vote=pre_vote)
    core.campaign()
    drain(core, store)
    first_term = core.term
    first_timeout = core.randomized_election_timeout

    for _ in range(first_timeout):
        core.tick()
    requests = only(drain(core, store), VoteRequest)

    assert core.role is (Role.PRE_CANDIDATE if pre_vote else Role.CANDIDATE)
    assert core.term == first_term + (0 if pre_vote else 1)
    assert sorted(request.target for request in requests) == ["n2", "n3"]
    assert all(request.term == first_term + 1 for request in requests)


def test_5_2_election_timeouts_are_randomized() -> None:
    def ticks_until_campaign(core: RaftCore) -> int:
        for ticks in range(1, 10 * ELECTION_TIMEOUT_TICKS):
            core.tick()
            if core.role is not Role.FOLLOWER:
                return ticks
        raise AssertionError("never campaigned")

    first_timeouts = [ticks_until_campaign(new_core(seed=seed)[0]) for seed in range(50)]

    # One core re-draws its timeout for every new election.
    core, store = new_core(seed=1)
    repeated_timeouts = []
    for _ in range(30):
        core.step(Heartbeat(term=core.term, source="n2", target="n1", commit=0))
        drain(core, store)
        repeated_timeouts.append(ticks_until_campaign(core))

    for timeouts in (first_timeouts, repeated_timeouts):
        assert all(ELECTION_TIMEOUT_TICKS <= t < 2 * ELECTION_TIMEOUT_TICKS for t in timeouts)
        assert len(set(timeouts)) >= 5, timeouts


def test_5_2_split_votes_are_resolved_and_exactly_one_leader_is_elected() -> None:
    for seed in range(20):
        network = Network(FIVE_NODES, seed=seed)
        network.tick_until(lambda net=network: bool(net.leaders()))
        assert len(network.leaders()) == 1
        [leader] = network.leaders()
        term = network.cores[leader].term
        assert all(core.term == term for core in network.cores.values())
        assert all(core.leader == leader for core in network.cores.values())


# -- 5.3 Log replication -----------------------------------------------------------------------


def test_5_3_leader_appends_proposal_and_replicates_it() -> None:
    network = Network()
    leader = network.elect("n1")

    index = leader.propose(b"x")
    ready = network.handle_ready("n1")

    entry = Entry(index=2, term=1, data=b"x")
    assert index == 2
    assert ready.entries == (entry,)
    appends = only(all_messages(ready), AppendRequest)
    assert sorted(append.target for append in appends) == ["n2", "n3"]
    for append in appends:
        assert (append.term, append.prev_index, append.prev_term) == (1, 1, 1)
        assert append.entries == (entry,)
    network.deliver_all()
    for node_id in THREE_NODES:
        assert stored_entries(network.stores[node_id])[-1] == entry


@pytest.mark.parametrize(
    ("members", "acknowledged_by"),
    [
        (("n1",), []),
        (THREE_NODES, []),
        (THREE_NODES, ["n2"]),
        (THREE_NODES, ["n2", "n3"]),
        (FIVE_NODES, ["n2"]),
        (FIVE_NODES, ["n2", "n3"]),
        (FIVE_NODES, ["n2", "n3", "n4", "n5"]),
    ],
)
def test_5_3_leader_commits_once_a_majority_stored_the_entry(
    members: tuple[str, ...], acknowledged_by: list[str]
) -> None:
    core, store = new_core(members=members)
    win_election(core, store)
    acknowledge(core, members[1:], match_index=1)
    drain(core, store)
    assert core.log.committed == 1

    core.propose(b"x")
    drain(core, store)
    acknowledge(core, acknowledged_by, match_index=2)

    majority = len(acknowledged_by) + 1 >= len(members) // 2 + 1
    assert core.log.committed == (2 if majority else 1)
    drain(core, store)
    assert core.log.applied == core.log.committed
    assert store.hard_state().commit == core.log.committed


def test_5_3_leader_counts_its_own_entry_only_once_persisted() -> None:
    core, store = new_core()
    win_election(core, store)
    acknowledge(core, ["n2", "n3"], match_index=1)
    drain(core, store)

    core.propose(b"x")
    ready = core.ready()  # taken, not yet persisted
    acknowledge(core, ["n2"], match_index=2)
    assert core.log.committed == 1, "counted the leader's own unpersisted entry"

    store.append(list(ready.entries))
    core.advance()
    assert core.log.committed == 2


def test_10_2_1_leader_sends_appends_before_its_own_write() -> None:
    network = Network()
    leader = network.elect("n1")

    leader.propose(b"x")
    ready = leader.ready()

    early = only(list(ready.messages_before_persist), AppendRequest)
    assert sorted(append.target for append in early) == ["n2", "n3"]
    assert only(list(ready.messages), AppendRequest) == []
    # Both followers acknowledge before the leader's own write is done: that is a majority.
    for append in early:
        network.cores[append.target].step(append)
        network.handle_readies()
    for response in (
        network.sent_by("n2", AppendResponse)[-1:] + network.sent_by("n3", AppendResponse)[-1:]
    ):
        leader.step(response)
    assert leader.log.committed == 2

    # The leader applies x only after its own write: in the Ready after this one.
    assert not ready.committed_entries
    network.stores["n1"].append(list(ready.entries))
    leader.advance()
    assert [entry.data for entry in leader.ready().committed_entries] == [b"x"]


def test_10_2_1_new_leader_sends_nothing_early_until_its_term_is_on_disk() -> None:
    core, store = new_core(pre_vote=False)
    core.campaign()
    core.step(VoteResponse(term=1, source="n2", target="n1", granted=True))
    assert core.role is Role.LEADER

    ready = core.ready()

    assert ready.vote_changed and ready.must_sync
    assert ready.messages_before_persist == ()
    assert sorted(m.target for m in only(list(ready.messages), AppendRequest)) == ["n2", "n3"]


def test_5_3_followers_learn_the_commit_index_and_apply() -> None:
    network = Network()
    network.elect("n1")
    network.cores["n1"].propose(b"x")
    network.deliver_all()
    assert network.cores["n1"].log.committed == 2

    network.tick("n1")  # the next heartbeat carries the commit index

    for node_id in THREE_NODES:
        assert network.cores[node_id].log.committed == 2
        assert network.stores[node_id].hard_state().commit == 2
        assert [entry.data for entry in network.applied[node_id]] == [b"", b"x"]


@pytest.mark.parametrize(
    ("prev_index", "prev_term", "success", "hint"),
    [
        (0, 0, True, None),
        (1, 1, True, None),
        (2, 2, True, None),
        (1, 2, False, (1, 1)),  # wrong term at 1
        (2, 3, False, (2, 2)),  # wrong term at 2
        (2, 1, False, (1, 1)),  # wrong term at 2; the follower's last entry of term <= 1 is 1
        (3, 2, False, (2, 2)),  # nothing at 3
    ],
)
def test_5_3_follower_rejects_append_when_previous_entry_does_not_match(
    prev_index: int, prev_term: int, success: bool, hint: tuple[int, int] | None
) -> None:
    core, store = new_core(store=store_with([1, 2], term=3))
    new_entry = Entry(index=prev_index + 1, term=3, data=b"new")

    core.step(
        append_request(term=3, prev_index=prev_index, prev_term=prev_term, entries=[new_entry])
    )
    [response] = only(drain(core, store), AppendResponse)

    assert response.success is success
    if success:
        assert response.match_index == prev_index + 1
        assert stored_entries(store)[prev_index] == new_entry
    else:
        assert response.rejected_index == prev_index
        assert (response.hint_index, response.hint_term) == hint
        assert stored_terms(store) == [1, 2], "a rejected append changed the log"


@pytest.mark.parametrize(
    ("prev_index", "prev_term", "entries"),
    [
        (5, 0, [Entry(6, 1, b"x")]),  # prev_term 0 past the end of the follower's log
        (1, 1, [Entry(9, 1, b"x")]),  # entries that do not start at prev_index + 1
        (1, 1, [Entry(2, 1, b"x"), Entry(2, 1, b"y")]),  # indexes that are not consecutive
    ],
    ids=["prev-term-0-past-the-end", "gap-after-prev", "repeated-index"],
)
def test_5_3_follower_does_not_acknowledge_a_malformed_append(
    prev_index: int, prev_term: int, entries: list[Entry]
) -> None:
    core, _ = new_core(store=store_with([1], term=1))
    request = append_request(
        term=1,
        prev_index=prev_index,
        prev_term=prev_term,
        entries=entries,
        leader_commit=prev_index + len(entries),
    )

    # Refusing it as bad input (a ProtocolError: the link is closed) is as good as a rejection.
    with contextlib.suppress(ProtocolError):
        core.step(request)
    sent = all_messages(core.ready()) if core.has_ready() else []

    assert all(not response.success for response in only(sent, AppendResponse))
    assert log_terms(core) == [1]
    assert core.log.committed == 0


@pytest.mark.parametrize(
    ("prev_index", "prev_term", "entry_terms", "expected_terms", "written_terms"),
    [
        (2, 2, [3], [1, 2, 3], [3]),  # append after the last entry
        (1, 1, [3, 4], [1, 3, 4], [3, 4]),  # conflict at 2: delete 2.. and append
        (0, 0, [3], [3], [3]),  # conflict at 1: delete everything
        (0, 0, [1], [1, 2], []),  # already there: nothing deleted, nothing written
        (1, 1, [2, 3], [1, 2, 3], [3]),  # only the entries not already there are written
    ],
)
def test_5_3_follower_deletes_conflicting_entries_and_appends_new_ones(
    prev_index: int,
    prev_term: int,
    entry_terms: list[int],
    expected_terms: list[int],
    written_terms: list[int],
) -> None:
    core, store = new_core(store=store_with([1, 2], term=2))
    entries = [
        Entry(index=prev_index + offset, term=term, data=b"new")
        for offset, term in enumerate(entry_terms, start=1)
    ]

    core.step(append_request(term=4, prev_index=prev_index, prev_term=prev_term, entries=entries))
    assert log_terms(core) == expected_terms
    ready = core.ready()

    assert [entry.term for entry in ready.entries] == written_terms
    [response] = only(all_messages(ready), AppendResponse)
    assert response.success and response.match_index == prev_index + len(entries)
    store.append(list(ready.entries))
    core.advance()
    assert stored_terms(store) == expected_terms


# Figure 7: the leader's log and six possible follower logs when it comes to power in term 8.
FIGURE_7_LEADER = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6]
FIGURE_7_FOLLOWERS = {
    "a-missing-one": ([1, 1, 1, 4, 4, 5, 5, 6, 6], True),
    "b-missing-many": ([1, 1, 1, 4], True),
    "c-extra-uncommitted-of-leaders-term": ([1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6], False),
    "d-extra-of-later-term": ([1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7], False),
    "e-missing-and-extra": ([1, 1, 1, 4, 4, 4, 4], True),
    "f-divergent-from-index-4": ([1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3], True),
}


@pytest.mark.parametrize("case", list(FIGURE_7_FOLLOWERS))
def test_5_3_leader_backs_up_next_index_until_logs_match(case: str) -> None:
    follower_terms, rejects_first_probe = FIGURE_7_FOLLOWERS[case]
    network = Network(
        stores={
            "n1": store_with(FIGURE_7_LEADER, term=7),
            "n2": store_with(follower_terms, term=7),
            # A third node with the leader's log so that n1 can win whatever n2 has.
            "n3": store_with(FIGURE_7_LEADER, term=7),
        }
    )

    leader = network.elect("n1")
    network.tick("n1")

    assert leader.term == 8
    expected = stored_entries(network.stores["n1"])
    assert [entry.term for entry in expected] == [*FIGURE_7_LEADER, 8]
    assert stored_entries(network.stores["n2"]) == expected
    assert network.cores["n2"].log.committed == 11
    rejections = [r for r in network.sent_by("n2", AppendResponse) if not r.success]
    assert bool(rejections) is rejects_first_probe
    assert all(r.rejected_index <= len(FIGURE_7_LEADER) for r in rejections)


@pytest.mark.parametrize("max_apply_bytes", [1, 1 << 20], ids=["one-per-ready", "batched"])
def test_5_3_committed_entries_are_applied_in_log_order(max_apply_bytes: int) -> None:
    network = Network(max_apply_bytes=max_apply_bytes)
    leader = network.elect("n1")
    leader.propose(b"a")
    leader.propose(b"b")
    network.deliver_all()
    leader.propose(b"c")
    network.deliver_all()
    network.tick("n1")

    for node_id in THREE_NODES:
        applied = network.applied[node_id]
        assert [entry.index for entry in applied] == [1, 2, 3, 4]
        assert [entry.kind for entry in applied] == [EntryKind.NOOP] + [EntryKind.NORMAL] * 3
        assert [entry.data for entry in applied[1:]] == [b"a", b"b", b"c"]


# -- 5.4 Safety --------------------------------------------------------------------------------


@pytest.mark.parametrize("pre_vote", [False, True], ids=["vote", "pre-vote"])
@pytest.mark.parametrize(
    ("voter_terms", "last_index", "last_term", "granted"),
    [
        ([1, 1], 1, 1, False),  # last-index case: same last term, shorter log
        ([1, 1], 2, 1, True),
        ([1, 1], 3, 1, True),
        ([1, 1], 1, 2, True),  # a later last term wins even with a shorter log
        ([1, 2], 3, 1, False),  # last-term case: longer log, earlier last term
        ([1, 2], 1, 2, False),
        ([1, 2], 2, 2, True),
        ([1, 2], 1, 3, True),
    ],
)
def test_5_4_1_vote_denied_to_candidate_with_less_up_to_date_log(
    voter_terms: list[int], last_index: int, last_term: int, granted: bool, pre_vote: bool
) -> None:
    core, store = new_core(store=store_with(voter_terms, term=3))

    core.step(
        VoteRequest(
            term=4,
            source="n2",
            target="n1",
            last_log_index=last_index,
            last_log_term=last_term,
            pre_vote=pre_vote,
        )
    )
    [response] = only(drain(core, store), VoteResponse)

    assert response.granted is granted
    assert response.pre_vote is pre_vote
    if not pre_vote:
        assert store.hard_state().vote == ("n2" if granted else None)


def test_5_4_1_node_missing_a_committed_entry_cannot_become_leader() -> None:
    network = Network()
    network.elect("n1")
    network.cut("n1", "n3")
    network.cores["n1"].propose(b"x")
    network.deliver_all()
    network.tick("n1")
    assert network.cores["n2"].log.committed == 2
    network.crash("n1")
    network.heal()
    network.restart("n2")  # forgets its leader, so that no lease stands in n3's way

    network.cores["n3"].campaign()
    network.deliver_all()

    assert network.sent_by("n3", VoteRequest), "n3 did not even ask"
    assert network.cores["n3"].role is not Role.LEADER
    assert all(not r.granted for r in network.sent_by("n2", VoteResponse) if r.target == "n3")


def test_5_4_2_leader_does_not_commit_earlier_term_entry_by_counting_replicas() -> None:
    # Figure 8 (c): s1 leads term 4; its term-2 entry at index 2 reaches s2 and s3, a majority.
    members = ("s1", "s2", "s3", "s4", "s5")
    s1, s1_store = new_core("s1", members, store_with([1, 2], term=3, commit=1))
    win_election(s1, s1_store)  # with votes from s2 and s3
    assert (s1.term, log_terms(s1)) == (4, [1, 2, 4])

    acknowledge(s1, ["s2", "s3"], match_index=2)

    assert s1.log.committed == 1, "an entry of term 2 was committed by counting replicas"

    # Figure 8 (d), the reason: s5 (log [1, 3]) can still be elected by s2, s3 and s4 and
    # overwrite index 2 everywhere, although it is "stored on a majority".
    s2, s2_store = new_core("s2", members, store_with([1, 2], term=4, vote="s1", commit=1))
    s2.step(VoteRequest(term=5, source="s5", target="s2", last_log_index=2, last_log_term=3))
    assert [r.granted for r in only(drain(s2, s2_store), VoteResponse)] == [True]
    s2.step(
        append_request(
            term=5,
            prev_index=1,
            prev_term=1,
            entries=[Entry(2, 3)],
            leader_commit=1,
            source="s5",
            target="s2",
        )
    )
    drain(s2, s2_store)
    assert stored_terms(s2_store) == [1, 3]

    # Figure 8 (e): once an entry of s1's own term is on a majority, both commit.
    acknowledge(s1, ["s2", "s3"], match_index=3)
    assert s1.log.committed == 3


def test_5_4_2_entry_of_earlier_term_commits_with_the_new_leaders_noop() -> None:
    network = Network()
    network.elect("n1")
    network.tick("n1")
    # n1 replicates x to n2 only and never hears back: x is on n1 and n2, but not committed.
    network.cut("n1", "n3")
    network.cut("n2", "n1")
    network.cores["n1"].propose(b"x")
    network.deliver_all()
    assert [entry.data for entry in stored_entries(network.stores["n2"])] == [b"", b"x"]
    assert all(core.log.committed == 1 for core in network.cores.values())
    network.crash("n1")
    network.heal()

    # Only n2 can win (n3 lacks x); its no-op of term 2 commits x with it.
    network.tick_until(lambda: bool(network.leaders()))
    network.tick("n2")

    assert network.leaders() == ["n2"]
    expected = [
        (1, 1, EntryKind.NOOP, b""),
        (2, 1, EntryKind.NORMAL, b"x"),
        (3, 2, EntryKind.NOOP, b""),
    ]
    for node_id in ("n2", "n3"):
        applied = network.applied[node_id]
        assert [(e.index, e.term, e.kind, e.data) for e in applied] == expected
    # n2 never held index 2 as committed on its own: it committed 1, then 3.
    commits = [hard_state.commit for hard_state in network.hard_states["n2"]]
    assert 2 not in commits and commits[-1] == 3


# -- 5.5 Follower and candidate crashes --------------------------------------------------------


def test_5_5_follower_handles_duplicated_append_idempotently() -> None:
    core, store = new_core(store=store_with([], term=1))
    request = append_request(
        term=1, prev_index=0, prev_term=0, entries=[Entry(1, 1, b"a"), Entry(2, 1, b"b")]
    )

    core.step(request)
    first = only(drain(core, store), AppendResponse)
    core.step(request)
    ready = core.ready()

    assert ready.entries == (), "a duplicate was written again"
    assert only(all_messages(ready), AppendResponse) == first
    assert first[0].success and first[0].match_index == 2
    store.append(list(ready.entries))
    core.advance()

    # A delayed, shorter copy of an earlier request must not truncate what followed.
    core.step(
        append_request(
            term=1, prev_index=0, prev_term=0, entries=[Entry(1, 1, b"a")], leader_commit=2
        )
    )
    [response] = only(drain(core, store), AppendResponse)
    assert response.success and response.match_index == 1
    assert [entry.data for entry in stored_entries(store)] == [b"a", b"b"]
    # It proves only index 1 matches, so only index 1 may be committed from it.
    assert core.log.committed == 1


def test_5_5_leader_retries_an_append_that_was_lost() -> None:
    network = Network()
    network.elect("n1")
    network.cut("n1", "n2")
    network.cores["n1"].propose(b"x")
    network.deliver_all()
    assert len(stored_entries(network.stores["n2"])) == 1
    network.heal()

    network.tick("n1", times=2)

    assert [entry.data for entry in stored_entries(network.stores["n2"])] == [b"", b"x"]
    assert [entry.data for entry in network.applied["n2"]] == [b"", b"x"]


# -- 6 Client interaction ----------------------------------------------------------------------


def test_6_leader_hint_in_not_leader_error() -> None:
    network = Network()
    with pytest.raises(NotLeader) as unknown:
        network.cores["n2"].propose(b"x")
    assert unknown.value.leader_hint is None

    network.elect("n1")

    with pytest.raises(NotLeader) as known:
        network.cores["n2"].propose(b"x")
    assert known.value.leader_hint == "n1"
    assert known.value.retriable
    assert network.cores["n1"].propose(b"x") == 2


# -- Extensions: pre-vote and check-quorum (Raft thesis 9.6, 6.2) ------------------------------


@pytest.mark.parametrize("pre_vote", [True, False], ids=["pre-vote", "without-pre-vote"])
def test_9_6_rejoining_node_does_not_raise_its_term_or_depose_the_leader(pre_vote: bool) -> None:
    network = Network(pre_vote=pre_vote)
    network.elect("n1")
    network.isolate("n3")
    network.tick_all(5 * ELECTION_TIMEOUT_TICKS)
    n3 = network.cores["n3"]
    assert network.sent_by("n3", VoteRequest), "n3 never campaigned while cut off"

    network.heal()
    network.tick_all(3 * ELECTION_TIMEOUT_TICKS)

    leader = network.cores["n1"]
    if pre_vote:
        assert all(request.pre_vote for request in network.sent_by("n3", VoteRequest))
        assert leader.role is Role.LEADER and leader.term == 1
        assert (n3.role, n3.term, n3.leader) == (Role.FOLLOWER, 1, "n1")
    else:
        # The contrast that shows what pre-vote is for.
        assert leader.term > 1
        assert network.cores["n3"].term > 1


def test_check_quorum_leader_without_a_majority_steps_down() -> None:
    network = Network()
    leader = network.elect("n1")
    network.isolate("n1")

    stepped_down_after = None
    for tick in range(1, 3 * ELECTION_TIMEOUT_TICKS):
        network.tick("n1")
        if leader.role is not Role.LEADER:
            stepped_down_after = tick
            break

    # Activity is sampled once per election timeout, so it takes between one and two.
    assert stepped_down_after is not None
    assert ELECTION_TIMEOUT_TICKS <= stepped_down_after <= 2 * ELECTION_TIMEOUT_TICKS
    assert leader.role is Role.FOLLOWER and leader.term == 1
    with pytest.raises(NotLeader) as error:
        leader.propose(b"x")
    assert error.value.leader_hint is None


def test_check_quorum_leader_steps_down_even_while_transfers_are_requested() -> None:
    network = Network()
    leader = network.elect("n1")
    network.isolate("n1")

    for tick in range(5 * ELECTION_TIMEOUT_TICKS):
        if tick % (ELECTION_TIMEOUT_TICKS // 2) == 0 and leader.role is Role.LEADER:
            # An operator (or a rebalancer) keeps asking to move leadership somewhere.
            leader.transfer_leadership("n2" if tick % ELECTION_TIMEOUT_TICKS else "n3")
        network.tick("n1")

    assert leader.role is not Role.LEADER  # stepped down (and maybe campaigning by now)


def test_check_quorum_leader_with_a_majority_stays_leader() -> None:
    network = Network()
    leader = network.elect("n1")
    network.isolate("n3")

    network.tick("n1", times=5 * ELECTION_TIMEOUT_TICKS)

    assert leader.role is Role.LEADER and leader.term == 1


def test_check_quorum_follower_ignores_vote_requests_while_it_hears_from_a_leader() -> None:
    core, store = new_core(store=store_with([], term=1))
    core.step(Heartbeat(term=1, source="n2", target="n1", commit=0))
    drain(core, store)

    core.step(VoteRequest(term=2, source="n3", target="n1", last_log_index=5, last_log_term=1))
    assert drain(core, store) == []
    assert (core.term, core.vote, core.leader) == (1, None, "n2")

    for _ in range(ELECTION_TIMEOUT_TICKS):
        core.tick()
    core.step(VoteRequest(term=2, source="n3", target="n1", last_log_index=5, last_log_term=1))
    assert [r.granted for r in only(drain(core, store), VoteResponse)] == [True]


# -- Extensions: leadership transfer (Raft thesis 3.10) ----------------------------------------


def test_leadership_transfer_target_campaigns_at_once_and_wins() -> None:
    network = Network()
    old_leader = network.elect("n1")
    old_leader.propose(b"x")
    network.deliver_all()

    old_leader.transfer_leadership("n2")
    ready = network.handle_ready("n1")
    assert all_messages(ready) == [TimeoutNow(term=1, source="n1", target="n2")]
    network.deliver_all()  # no ticks: nobody waits for an election timeout

    new_leader = network.cores["n2"]
    assert network.leaders() == ["n2"]
    assert new_leader.term == 2
    assert (old_leader.role, old_leader.leader) == (Role.FOLLOWER, "n2")
    requests = network.sent_by("n2", VoteRequest)
    assert requests and all(r.leadership_transfer and not r.pre_vote for r in requests)
    assert [entry.data for entry in log_entries_of(network, "n2")][:2] == [b"", b"x"]


def test_leadership_transfer_brings_a_lagging_target_up_to_date_first() -> None:
    network = Network()
    leader = network.elect("n1")
    network.cut("n1", "n2")
    leader.propose(b"x")
    network.deliver_all()
    network.heal()

    sent_before_transfer = len(network.sent)
    leader.transfer_leadership("n2")
    with pytest.raises(LeadershipTransferInProgress) as refused:
        leader.propose(b"y")
    assert refused.value.leader_hint == "n2"
    network.deliver_all()

    assert network.leaders() == ["n2"]
    since_transfer = network.sent[sent_before_transfer:]
    timeout_now = next(i for i, m in enumerate(since_transfer) if isinstance(m, TimeoutNow))
    catch_up = next(
        i
        for i, m in enumerate(since_transfer)
        if isinstance(m, AppendRequest) and m.target == "n2" and b"x" in [e.data for e in m.entries]
    )
    assert catch_up < timeout_now
    assert [entry.data for entry in log_entries_of(network, "n2")][:2] == [b"", b"x"]


def test_proposals_are_refused_during_leadership_transfer() -> None:
    network = Network()
    leader = network.elect("n1")
    network.isolate("n2")

    leader.transfer_leadership("n2")

    with pytest.raises(LeadershipTransferInProgress) as error:
        leader.propose(b"x")
    assert isinstance(error.value, NotLeader)
    assert error.value.leader_hint == "n2"
    assert error.value.retriable


def test_leadership_transfer_is_abandoned_after_an_election_timeout() -> None:
    network = Network()
    leader = network.elect("n1")
    network.isolate("n2")
    leader.transfer_leadership("n2")

    network.tick("n1", times=ELECTION_TIMEOUT_TICKS - 1)
    with pytest.raises(LeadershipTransferInProgress):
        leader.propose(b"x")
    network.tick("n1")

    assert leader.role is Role.LEADER and leader.term == 1
    assert leader.propose(b"x") == 2
    network.deliver_all()
    assert leader.log.committed == 2


# -- Extensions: the persistence contract ------------------------------------------------------


def test_ready_must_sync_when_entries_or_term_or_vote_change() -> None:
    # Without check-quorum, so that a vote request is not ignored for the leader's lease.
    core, store = new_core(store=store_with([], term=1), check_quorum=False)

    def take() -> Ready:
        ready = core.ready()
        store.append(list(ready.entries))
        if ready.hard_state is not None:
            store.set_hard_state(ready.hard_state)
        core.advance()
        return ready

    # Entries only.
    core.step(append_request(term=1, prev_index=0, prev_term=0, entries=[Entry(1, 1)]))
    ready = take()
    assert ready.entries and ready.hard_state is None and ready.must_sync

    # Commit only: may be written lazily.
    core.step(Heartbeat(term=1, source="n2", target="n1", commit=1))
    ready = take()
    assert ready.hard_state == HardState(term=1, vote=None, commit=1)
    assert not ready.entries and not ready.must_sync

    # A new term.
    core.step(Heartbeat(term=2, source="n3", target="n1", commit=1))
    ready = take()
    assert ready.hard_state == HardState(term=2, vote=None, commit=1) and ready.must_sync

    # A vote.
    core.step(VoteRequest(term=3, source="n2", target="n1", last_log_index=1, last_log_term=1))
    ready = take()
    assert ready.hard_state == HardState(term=3, vote="n2", commit=1) and ready.must_sync

    # A pre-vote changes neither.
    core.campaign()
    ready = take()
    assert ready.hard_state is None and not ready.must_sync and all_messages(ready)

    # Nothing new, nothing to do.
    core.step(Heartbeat(term=3, source="n2", target="n1", commit=1))
    take()
    core.tick()
    assert not core.has_ready()


def test_messages_are_released_with_the_state_they_promise() -> None:
    core, store = new_core()

    core.step(VoteRequest(term=1, source="n2", target="n1", last_log_index=0, last_log_term=0))
    ready = core.ready()
    [vote] = only(list(ready.messages), VoteResponse)
    assert vote.granted
    assert ready.hard_state is not None and ready.hard_state.vote == "n2" and ready.must_sync
    core.advance()

    core.step(append_request(term=1, prev_index=0, prev_term=0, entries=[Entry(1, 1), Entry(2, 1)]))
    ready = core.ready()
    [ack] = only(list(ready.messages), AppendResponse)
    assert ack.success and ready.must_sync
    assert ready.entries[-1].index == ack.match_index


def test_messages_produced_while_a_ready_is_handled_wait_for_the_next_one() -> None:
    core, store = new_core()
    core.campaign()  # a pre-vote: a Ready with messages only
    first = core.ready()

    core.step(VoteRequest(term=2, source="n2", target="n1", last_log_index=0, last_log_term=0))
    assert not core.has_ready(), "a second Ready before advance()"
    assert only(all_messages(first), VoteResponse) == []
    assert first.hard_state is None
    core.advance()

    second = core.ready()
    assert [r.granted for r in only(all_messages(second), VoteResponse)] == [True]
    assert second.hard_state == HardState(term=2, vote="n2") and second.must_sync


# -- Extensions: restart from a store ----------------------------------------------------------


@pytest.mark.parametrize("node_id", ["n1", "n2"], ids=["leader", "follower"])
def test_restart_from_store_keeps_term_vote_log_and_commit(node_id: str) -> None:
    network = Network()
    network.elect("n1")
    network.cores["n1"].propose(b"x")
    network.deliver_all()
    network.tick("n1")
    before = network.cores[node_id].status()
    assert before.commit == 2

    core = network.restart(node_id)
    after = core.status()

    assert (after.term, after.vote, after.last_index, after.commit) == (
        before.term,
        before.vote,
        before.last_index,
        before.commit,
    )
    assert (after.role, after.leader, after.applied) == (Role.FOLLOWER, None, 0)
    assert log_terms(core) == [1, 1]
    # The state machine is rebuilt from the log: the committed entries come out again.
    ready = network.handle_ready(node_id)
    assert [entry.data for entry in ready.committed_entries] == [b"", b"x"]

    # A driver whose state machine is durable says how far it got, and gets only the rest.
    core = network.restart(node_id, applied=2)
    assert not core.has_ready() or core.ready().committed_entries == ()


def test_restart_forgets_a_vote_that_was_never_persisted_or_sent() -> None:
    store = MemoryLogStore()
    core, _ = new_core(store=store)
    core.step(VoteRequest(term=1, source="n2", target="n1", last_log_index=0, last_log_term=0))
    ready = core.ready()
    assert ready.hard_state == HardState(term=1, vote="n2")
    # Crash before the Ready is persisted: the granted vote was never sent either.

    restarted, _ = new_core(store=store)
    assert (restarted.term, restarted.vote) == (0, None)
    restarted.step(VoteRequest(term=1, source="n3", target="n1", last_log_index=0, last_log_term=0))
    assert [r.granted for r in only(drain(restarted, store), VoteResponse)] == [True]
    assert store.hard_state() == HardState(term=1, vote="n3")


def test_5_2_follower_answers_heartbeats_and_learns_the_commit_index() -> None:
    core, store = new_core(store=store_with([1], term=1))
    core.step(Heartbeat(term=1, source="n2", target="n1", commit=1))
    assert only(drain(core, store), HeartbeatResponse) == [
        HeartbeatResponse(term=1, source="n1", target="n2")
    ]
    assert core.log.committed == 1
