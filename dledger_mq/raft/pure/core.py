"""The pure Raft core: ticks and messages in, one ``Ready`` batch out.

No I/O, no clock, no randomness of its own (the caller passes an ``Rng``). A driver owns it:

    core.tick() / core.step(message) / core.propose(data)   as things happen
    if core.has_ready():
        ready = core.ready()
        ... persist, send, apply, in that order (see ``Ready``) ...
        core.advance()

Roles: follower, pre-candidate, candidate, leader. Pre-vote (Raft thesis 9.6) keeps a node that
rejoins after a partition from deposing a healthy leader; check-quorum makes a leader that has not
heard from a majority during an election timeout step down (checked at the end of each timeout,
so at most two election timeouts after the last contact).
"""

from __future__ import annotations

import enum
from typing import Protocol

import attrs

from dledger_mq.errors import (
    BadRequest,
    InvalidMembershipChange,
    LeadershipTransferInProgress,
    MembershipChangeInProgress,
    NotLeader,
    ProtocolError,
    UsageError,
)
from dledger_mq.raft.pure.log_store import LogStore
from dledger_mq.raft.pure.membership import (
    ChangeKind,
    Membership,
    MembershipChange,
)
from dledger_mq.raft.pure.messages import (
    AppendRequest,
    AppendResponse,
    Entry,
    EntryKind,
    HardState,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    Message,
    SnapshotChunk,
    SnapshotChunkAck,
    SnapshotNeeded,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
    check_append_shape,
)
from dledger_mq.raft.pure.progress import Progress, ProgressState
from dledger_mq.raft.pure.raft_log import RaftLog


class Role(enum.Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


class Rng(Protocol):
    """The only randomness the core uses; ``random.Random`` fits."""

    def randrange(self, start: int, stop: int, /) -> int: ...


@attrs.frozen
class Config:
    node_id: str
    #: Every voting member of the group (this node included, unless it is a learner).
    members: tuple[str, ...]
    election_timeout_ticks: int = 10
    heartbeat_interval_ticks: int = 1
    #: Upper bound of one AppendRequest's entries (one entry is always sent, however large).
    max_append_bytes: int = 1 << 20
    #: Appends pushed to one follower without an answer yet.
    max_inflight_appends: int = 64
    #: Upper bound of the committed entries handed out in one Ready.
    max_apply_bytes: int = 64 << 20
    pre_vote: bool = True
    check_quorum: bool = True
    #: Members that do not vote (Raft thesis 4.2.1): the leader replicates to them as to any
    #: follower, but they count in no quorum and never campaign (asked, they vote: one may have
    #: been promoted in entries it has not received yet). A new replica
    #: catches up as one before it is made a voter (issue 16, docs/architecture.md).
    learners: tuple[str, ...] = ()

    def __attrs_post_init__(self) -> None:
        everyone = (*self.members, *self.learners)
        if self.node_id not in everyone:
            raise UsageError(f"node {self.node_id!r} is not among the members {everyone}")
        if len(set(everyone)) != len(everyone):
            raise UsageError(f"members and learners must be distinct: {everyone}")
        if not self.members:
            raise UsageError("a group needs at least one voting member")
        if self.heartbeat_interval_ticks < 1:
            raise UsageError("heartbeat_interval_ticks must be at least 1")
        if self.election_timeout_ticks <= self.heartbeat_interval_ticks:
            raise UsageError("election_timeout_ticks must exceed heartbeat_interval_ticks")
        if self.max_inflight_appends < 1:
            raise UsageError("max_inflight_appends must be at least 1")


@attrs.frozen
class SoftState:
    """Volatile state a driver shows or reacts to; not persisted."""

    role: Role
    leader: str | None
    term: int


@attrs.frozen
class Ready:
    """One batch of work for the driver, which handles it in exactly this order:

    0. **Send** ``messages_before_persist`` (it may, not must, wait for step 1): a leader's
       appends and heartbeats, which promise nothing about its own disk, so that followers
       write in parallel with the leader (Raft thesis 10.2.1). The leader still counts itself
       towards a commit only once its own write is done (``advance``).
    1. **Persist** ``entries`` (first dropping any stored entry at or after ``entries[0].index``)
       and then ``hard_state`` if it is not None. When ``must_sync`` is true, both must be on
       disk (fsynced) before step 2: a vote, or an acknowledgement of entries, promises that
       they survive a crash.
    2. **Send** ``messages``.
    3. **Apply** ``committed_entries`` to the state machine, in order.
    4. Call ``advance()``. Only then may ``ready()`` be called again; ``tick``, ``step`` and
       ``propose`` may be called at any time in between.
    """

    soft_state: SoftState | None
    hard_state: HardState | None
    entries: tuple[Entry, ...]
    messages: tuple[Message, ...]
    committed_entries: tuple[Entry, ...]
    messages_before_persist: tuple[Message, ...] = ()
    #: Reads confirmed since the last Ready (``RaftCore.read_index``).
    read_states: tuple[ReadState, ...] = ()
    #: A recovering replica has caught up (``RaftCore`` "recovering"): once this Ready's
    #: entries and hard state are persisted, and before its messages go, the driver makes that
    #: durable (the log's recovering mark goes); from then on it votes.
    recovered: bool = False
    #: (index, term) of a leader's snapshot this follower installs (``InstallSnapshot``):
    #: before step 1 the driver makes its log start after it (every entry it held goes) and
    #: its state machine the snapshot's; ``committed_entries`` follow the snapshot.
    snapshot: tuple[int, int] | None = None

    @property
    def must_sync(self) -> bool:
        """Entries or a term/vote change to make durable; a commit-only change may be lazy."""
        return (
            bool(self.entries)
            or self.snapshot is not None
            or (self.hard_state is not None and self.vote_changed)
        )

    #: Whether ``hard_state``'s term or vote differs from the last persisted one.
    vote_changed: bool = False


@attrs.frozen
class ReadState:
    """A read confirmed by a quorum: the state at ``index`` (once applied) is what a
    linearizable read made when ``read_index`` returned ``context`` may return."""

    context: int
    index: int


@attrs.frozen
class FollowerStatus:
    node_id: str
    match: int
    next: int
    state: str


@attrs.frozen
class Status:
    node_id: str
    role: Role
    term: int
    leader: str | None
    vote: str | None
    last_index: int
    commit: int
    applied: int
    followers: tuple[FollowerStatus, ...]


class RaftCore:
    """One replica's Raft, with no I/O (module docstring).

    **Recovering.** A replica that lost its log (an empty or replaced disk) must not vote until
    it holds again what it may have acknowledged before: a vote from an empty log can elect a
    leader that lacks entries committed with that replica's forgotten acknowledgements, and a
    lost vote could be given twice in one term. So a core made with ``recovering`` neither
    campaigns, votes (pre-votes included) nor takes leadership (``TimeoutNow``); it follows a
    leader and takes its entries. It has caught up once its log matches a leader's up to that
    leader's last index as the leader sent it in a heartbeat of its term after this replica
    started (so past anything acknowledged before the loss); then it records the vote it could
    have given in that term, for that leader, and ``Ready.recovered`` tells the driver to make
    the end of recovery durable.

    **Lost tail.** A replica whose log recovery cut entries it may have acknowledged (rot at the
    end, or a torn tail after a power loss: ``published_end.py``) kept its term and vote, and
    could wait for a leader the same way; but after a power loss every replica may be in that
    state, and then none would ever vote. So, as in Protocol-Aware Recovery (Alagappan et al.,
    FAST '18), it asks the cluster: with ``lost_tail`` it also learns where the others' logs end
    (from their vote requests; a recovering replica sends pre-vote requests it will not use, so
    that the others learn its end), and once it has heard from ``members - quorum + 1`` of them
    it votes, but only for a candidate whose log is at least as up to date as every end it
    heard. An entry committed with its forgotten acknowledgement is on a quorum, which those
    members meet outside this replica, so such a candidate holds it (Raft 5.4.3); once its own
    log is that far, it has recovered. A replica alone in its group has no one to ask.
    """

    def __init__(
        self,
        config: Config,
        store: LogStore,
        rng: Rng,
        applied: int = 0,
        recovering: bool = False,
        lost_tail: bool = False,
        membership: Membership | None = None,
    ) -> None:
        """``membership``: the one in force at ``applied`` (a snapshot's); by default the
        bootstrap, ``config.members`` and ``config.learners``. The log's ``CONFIG`` entries
        after ``applied`` change it (``membership.py``)."""
        self.config = config
        self.id = config.node_id
        self.rng = rng
        self.role = Role.FOLLOWER
        self.progress: dict[str, Progress] = {}
        self.log = RaftLog(
            store, applied, membership or Membership.of(config.members, config.learners)
        )
        self.log.on_membership_change = self._membership_changed
        self._use_membership()
        hard_state = store.hard_state()
        self.term = hard_state.term
        self.vote = hard_state.vote
        if self.log.last_term() > self.term:
            # Entries of a later term were persisted and the hard state after them was not (its
            # fsync failed, then a crash): the term is at least the log's, and no vote of that
            # term went out (a vote is sent only once durable).
            self.term, self.vote = self.log.last_term(), None
        self.leader: str | None = None
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = 0
        self.votes: dict[str, bool] = {}
        self.transfer_target: str | None = None
        self.transfer_elapsed = 0
        self.outbox: list[Message] = []
        self._broadcast_pending = False
        self._persisted_hard_state = hard_state
        self._last_soft_state = SoftState(self.role, self.leader, self.term)
        self._ready_in_progress: Ready | None = None
        #: See the class docstring; ``_recovered_durably`` is what the driver has persisted.
        # Alone in its group, a replica that lost its tail has no one to ask: what it kept is
        # the log. (One that lost its whole log stays recovering: it must not lead an empty
        # log in place of the one it had; an operator starts a new one with --init.)
        self.recovering = recovering and (bool(self.voting_peers) or not lost_tail)
        self._recovering_durably = recovering
        self.lost_tail = recovering and lost_tail
        #: Each peer's (last log term, last log index) from its latest vote request since start.
        self._log_ends: dict[str, tuple[int, int]] = {}
        #: (term, leader's last index) to catch up to, from a heartbeat of the current leader.
        self._recovery_target: tuple[int, int] | None = None
        #: ReadIndex: the last read context given out, the leader's reads not yet confirmed
        #: (context, index; the index is None until this term has committed an entry), those
        #: confirmed for the next Ready, and whether a heartbeat round must carry a new context.
        self._read_context = 0
        self._pending_reads: list[list[int | None]] = []
        self._read_states: list[ReadState] = []
        self._read_round_pending = False
        self._reset_election_timeout()

    # -- inputs ----------------------------------------------------------------------------

    def tick(self) -> None:
        if self.role is Role.LEADER:
            self._tick_leader()
        else:
            # A learner's clock runs too (it never campaigns): its lease on the leader must
            # lapse, or it would ignore every vote request, which it answers (see votes).
            self.election_elapsed += 1
            if self.election_elapsed >= self.randomized_election_timeout and not self.is_learner:
                self.campaign()

    def campaign(self) -> None:
        """Start an election now (pre-vote first when enabled), as an election timeout would;
        never while recovering (it tells the others where its log ends instead)."""
        if self.role is Role.LEADER or self.is_learner:
            return
        if self.recovering:
            self._tell_log_end()
            return
        if self.config.pre_vote:
            self._become_pre_candidate()
        else:
            self._become_candidate(leadership_transfer=False)

    # -- membership ------------------------------------------------------------------------

    @property
    def membership(self) -> Membership:
        """The membership in force here: the newest in the log, committed or not."""
        return self.log.membership

    def _use_membership(self) -> None:
        """Derive who replicates, votes and counts from the membership in force."""
        membership = self.log.membership
        voters = membership.voter_ids
        #: Everyone the leader replicates to; ``voters`` (this node too, if it votes) decide.
        self.peers = tuple(m for m in (*voters, *membership.learner_ids) if m != self.id)
        self.voters = frozenset(voters)
        self.voting_peers = tuple(voter for voter in voters if voter != self.id)
        self.is_learner = self.id not in self.voters
        self.quorum = len(voters) // 2 + 1
        self._log_ends_needed = len(voters) - self.quorum + 1

    def _membership_changed(self) -> None:
        """A ``CONFIG`` entry was appended (or dropped with a conflicting suffix): the new
        membership is in force at once (thesis 4.1). A leader replicates to new members from
        now on and forgets removed ones; a replica no longer among the voters stops
        campaigning."""
        self._use_membership()
        if self.role is Role.LEADER:
            next_index = self.log.last_index() + 1
            for peer in self.peers:
                if peer not in self.progress:
                    self.progress[peer] = Progress(next_index)
                    self._broadcast_pending = True
            for peer in [peer for peer in self.progress if peer not in self.peers]:
                del self.progress[peer]
            if self.transfer_target is not None and self.transfer_target not in self.voters:
                self.transfer_target = None
        elif self.is_learner and self.role in (Role.CANDIDATE, Role.PRE_CANDIDATE):
            self._become_follower(self.term, None)

    def propose_membership_change(self, change: MembershipChange) -> int:
        """Append the membership ``change`` makes of the current one; returns its index.

        Single-server changes (docs/architecture.md, "Membership changes"): refused with
        ``MembershipChangeInProgress`` (retriable) until this leader has committed an entry of
        its own term (without that, a change and a leader change can elect two leaders in one
        term: Ongaro, raft-dev 2015) and while an earlier change is uncommitted; a learner is
        promoted only once it has every committed entry. The leader does not remove itself:
        hand leadership over first (``InvalidMembershipChange``).
        """
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader)
        if self.transfer_target is not None:
            raise LeadershipTransferInProgress(self.transfer_target)
        if self._own_term_commit() is None:
            raise MembershipChangeInProgress("this leader has not committed an entry of its term")
        if self.log.memberships.newest_index > self.log.committed:
            raise MembershipChangeInProgress(
                f"the change at index {self.log.memberships.newest_index} is not committed yet"
            )
        node_id = change.member.node_id
        if change.kind is ChangeKind.REMOVE and node_id == self.id:
            raise InvalidMembershipChange(
                f"{node_id} leads: hand leadership to another voter first, then remove it"
            )
        membership = self.membership.changed(change)
        if change.kind is ChangeKind.PROMOTE:
            match = self.progress[node_id].match if node_id in self.progress else 0
            if match < self.log.committed:
                raise MembershipChangeInProgress(
                    f"{node_id} has caught up to {match} of {self.log.committed} committed"
                )
        index = self.log.last_index() + 1
        self.log.append(
            [Entry(index=index, term=self.term, data=membership.encode(), kind=EntryKind.CONFIG)]
        )
        self._broadcast_pending = True
        return index

    def propose(self, data: bytes) -> int:
        """Append ``data`` to the log if this node leads; returns the entry's index.

        The entry is committed once a majority has persisted it; the driver learns that when it
        comes back in ``Ready.committed_entries``.
        """
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader)
        if self.transfer_target is not None:
            raise LeadershipTransferInProgress(self.transfer_target)
        index = self.log.last_index() + 1
        self.log.append([Entry(index=index, term=self.term, data=data)])
        self._broadcast_pending = True
        return index

    def read_index(self) -> int:
        """Start a linearizable read on the leader; returns its context. Once a quorum has
        answered a heartbeat round sent after this call (so this node still led when the read
        began), ``Ready.read_states`` gives the context with the index to read at: the commit
        index then, or when this term's first entry commits, whichever is later (etcd's
        ReadIndex). Raises ``NotLeader`` elsewhere; a read not confirmed when leadership is lost
        never is (the driver fails it on the role change)."""
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader)
        self._read_context += 1
        self._pending_reads.append([self._read_context, self._own_term_commit()])
        if self.quorum == 1:
            self._confirm_reads()  # no one else to ask
        else:
            self._read_round_pending = True
        return self._read_context

    def _own_term_commit(self) -> int | None:
        """The commit index once this leader's term has committed an entry, else None: only
        then does it know every entry committed before it (Raft 5.4.2, 6.4)."""
        committed = self.log.committed
        return committed if self.log.term(committed) == self.term else None

    def _confirm_reads(self) -> None:
        """Move the reads a quorum has vouched for (in order) to ``_read_states``."""
        pending = self._pending_reads
        while pending:
            context, index = pending[0]
            assert context is not None
            if index is None:
                index = pending[0][1] = self._own_term_commit()
                if index is None:
                    return
            acknowledged = 1 + sum(
                1
                for peer, progress in self.progress.items()
                if progress.read_context >= context and peer in self.voters
            )
            if acknowledged < self.quorum:
                return
            pending.pop(0)
            self._read_states.append(ReadState(context, index))

    def _send_read_round(self) -> None:
        self._read_round_pending = False
        for peer, progress in self.progress.items():
            self._send(self._heartbeat(peer, progress))

    def _heartbeat(self, peer: str, progress: Progress) -> Heartbeat:
        return Heartbeat(
            term=self.term,
            source=self.id,
            target=peer,
            commit=self._heartbeat_commit(progress),
            last_index=self.log.last_index(),
            context=self._read_context,
        )

    def transfer_leadership(self, target: str) -> None:
        """Hand leadership to ``target``: bring it up to date, then tell it to campaign at once.

        Proposals are refused meanwhile; the transfer is abandoned after an election timeout.
        """
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader)
        if target not in self.progress or target not in self.voters:
            raise BadRequest(
                f"cannot transfer leadership to {target!r}: not a voting peer of {self.id}"
            )
        if self.transfer_target == target:
            return
        self.transfer_target = target
        # Its own clock: reusing the check-quorum one would let repeated transfer requests keep
        # an isolated leader from ever stepping down.
        self.transfer_elapsed = 0
        if self.progress[target].match == self.log.last_index():
            self._send(TimeoutNow(term=self.term, source=self.id, target=target))
        else:
            self._send_appends(target, send_empty=True)

    def step(self, message: Message) -> None:
        """Handle a message from a peer. The term is dealt with here, once, then per role.

        Raises ``ProtocolError`` for a message no correct peer of this group could have sent
        (the transport checks every message before it gets here; this is the last line).
        """
        if message.target != self.id:
            raise ProtocolError(
                f"message from {message.source!r} to {message.target!r} reached {self.id!r}"
            )
        if message.source not in self.peers and isinstance(
            message, AppendResponse | HeartbeatResponse | TimeoutNow
        ):
            # Not a member as this replica's log says now (one removed, or one added in
            # entries not received here yet): its acknowledgements count for nothing and it
            # hands over no leadership. Everything else is answered as from anyone (thesis
            # 4.1: without consulting the configuration, which may be the stale one here):
            # a leader is followed whoever it is, and a vote asked for is weighed by the usual
            # rules. A removed server cannot disrupt: the lease (check-quorum) ignores its
            # vote requests while a leader is heard, and its log, which lacks its removal,
            # cannot win over a majority that has it (thesis 4.2.3).
            return
        if isinstance(message, SnapshotNeeded | SnapshotChunk | SnapshotChunkAck):
            raise ProtocolError(f"{type(message).__name__} is the driver's, not the core's")
        if isinstance(message, AppendRequest):
            # Before the term is looked at: a malformed append must change nothing.
            check_append_shape(message)
        if isinstance(message, VoteRequest):
            # Where its log ends, whatever its term: a replica that lost its tail counts it.
            self._heard_log_end(message)
        if message.term > self.term:
            if isinstance(message, VoteRequest):
                in_lease = (
                    self.config.check_quorum
                    and self.leader is not None
                    and self.election_elapsed < self.config.election_timeout_ticks
                )
                if in_lease and not message.leadership_transfer:
                    # We heard from a live leader recently: this candidate is disruptive.
                    return
            if isinstance(message, VoteRequest) and message.pre_vote:
                pass  # a pre-vote never changes our term
            elif isinstance(message, VoteResponse) and message.pre_vote and message.granted:
                pass  # granted pre-votes carry the term we would campaign at
            elif isinstance(message, AppendRequest | Heartbeat | TimeoutNow | InstallSnapshot):
                self._become_follower(message.term, message.source)
            else:
                self._become_follower(message.term, None)
        elif message.term < self.term:
            if isinstance(message, AppendRequest | Heartbeat | InstallSnapshot):
                # A deposed leader (maybe partitioned away while we moved on) learns our term
                # from this and steps down; otherwise pre-vote could leave it stuck forever.
                self._send(
                    AppendResponse(
                        term=self.term, source=self.id, target=message.source, success=False
                    )
                )
            elif isinstance(message, VoteRequest) and message.pre_vote:
                self._send(
                    VoteResponse(
                        term=self.term,
                        source=self.id,
                        target=message.source,
                        granted=False,
                        pre_vote=True,
                    )
                )
            return

        if isinstance(message, VoteRequest):
            self._handle_vote_request(message)
        elif self.role is Role.LEADER:
            self._step_leader(message)
        elif self.role is Role.FOLLOWER:
            self._step_follower(message)
        else:
            self._step_candidate(message)

    # -- output ----------------------------------------------------------------------------

    def has_ready(self) -> bool:
        if self._ready_in_progress is not None:
            return False
        hard = self._persisted_hard_state
        soft = self._last_soft_state
        return bool(
            self.outbox
            or self._broadcast_pending
            or self.log.unstable
            or self.log.committed > self.log.applied
            or self.term != hard.term
            or self.vote != hard.vote
            or self.log.committed != hard.commit
            or self.role is not soft.role
            or self.leader != soft.leader
            or self.term != soft.term
            or self.recovering != self._recovering_durably
            or self.log.pending_snapshot is not None
            or bool(self._read_states)
            or self._read_round_pending
        )

    def ready(self) -> Ready:
        assert self._ready_in_progress is None, "ready() called again before advance()"
        if self._broadcast_pending:
            self._broadcast_appends()
        if self._read_round_pending:
            self._send_read_round()
        read_states, self._read_states = tuple(self._read_states), []
        soft_state = self._soft_state()
        hard_state = self._hard_state()
        persisted = self._persisted_hard_state
        vote_changed = (hard_state.term, hard_state.vote) != (persisted.term, persisted.vote)
        early: list[Message] = []
        late = self.outbox
        if self.role is Role.LEADER and not vote_changed:
            # Only once the term this leader won is on disk: otherwise a crash could let it
            # vote again in that term, and its appends would then compete with another leader.
            early = [m for m in self.outbox if isinstance(m, AppendRequest | Heartbeat)]
            if early:
                late = [m for m in self.outbox if not isinstance(m, AppendRequest | Heartbeat)]
        ready = Ready(
            soft_state=soft_state if soft_state != self._last_soft_state else None,
            hard_state=hard_state if hard_state != persisted else None,
            entries=tuple(self.log.unstable),
            messages=tuple(late),
            committed_entries=tuple(self.log.next_committed_entries(self.config.max_apply_bytes)),
            vote_changed=vote_changed,
            messages_before_persist=tuple(early),
            recovered=self._recovering_durably and not self.recovering,
            read_states=read_states,
            snapshot=self.log.pending_snapshot,
        )
        self.outbox = []
        self._ready_in_progress = ready
        return ready

    def advance(self) -> None:
        """The driver handled the last Ready: its entries and hard state are persisted."""
        ready = self._ready_in_progress
        assert ready is not None, "advance() without ready()"
        self._ready_in_progress = None
        if ready.soft_state is not None:
            self._last_soft_state = ready.soft_state
        if ready.snapshot is not None:
            self.log.snapshot_installed(*ready.snapshot)
        if ready.hard_state is not None:
            self._persisted_hard_state = ready.hard_state
        if ready.entries:
            last = ready.entries[-1]
            self.log.stable_to(last.index, last.term)
        if ready.committed_entries:
            self.log.applied_to(ready.committed_entries[-1].index)
        if ready.recovered:
            self._recovering_durably = False
        if self.role is Role.LEADER and ready.entries:
            self._maybe_commit()

    def status(self) -> Status:
        followers = tuple(
            FollowerStatus(peer, progress.match, progress.next, progress.state.value)
            for peer, progress in self.progress.items()
        )
        return Status(
            node_id=self.id,
            role=self.role,
            term=self.term,
            leader=self.leader,
            vote=self.vote,
            last_index=self.log.last_index(),
            commit=self.log.committed,
            applied=self.log.applied,
            followers=followers,
        )

    # -- overridable checks (the simulator's deliberately broken variants replace these) ---

    def _log_allows_vote(self, request: VoteRequest) -> bool:
        """Raft 5.4.1: vote only for a candidate whose log is at least as up to date as ours."""
        return self.log.is_up_to_date(request.last_log_index, request.last_log_term)

    def _may_commit(self, index: int) -> bool:
        """Raft 5.4.2: commit by counting replicas only for an entry of the leader's own term."""
        return self.log.term(index) == self.term

    def _own_match(self) -> int:
        """What the leader counts for itself towards a commit: only what it has persisted."""
        return self.log.unstable_offset - 1

    def _heartbeat_commit(self, progress: Progress) -> int:
        """The commit index a heartbeat tells a follower: never beyond what it is known to
        share with the leader (its own entries there may still be another leader's)."""
        return min(progress.match, self.log.committed)

    # -- role changes ----------------------------------------------------------------------

    def _reset(self, term: int) -> None:
        if term != self.term:
            self.term = term
            self.vote = None
        self.leader = None
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self._reset_election_timeout()
        self.votes = {}
        self.progress = {}
        self.transfer_target = None
        self._broadcast_pending = False
        # Reads not confirmed yet never will be by this leadership (the driver fails them).
        self._pending_reads = []
        self._read_round_pending = False

    def _reset_election_timeout(self) -> None:
        timeout = self.config.election_timeout_ticks
        self.randomized_election_timeout = timeout + self.rng.randrange(0, timeout)

    def _become_follower(self, term: int, leader: str | None) -> None:
        self._reset(term)
        self.role = Role.FOLLOWER
        self.leader = leader

    def _tell_log_end(self) -> None:
        """A recovering replica's pre-vote requests: never counted (it stays a follower), they
        tell the others where its log ends (class docstring, "Lost tail")."""
        self.election_elapsed = 0
        self._reset_election_timeout()
        self._send_pre_vote_requests()

    def _send_pre_vote_requests(self) -> None:
        for peer in self.voting_peers:
            self._send(
                VoteRequest(
                    term=self.term + 1,
                    source=self.id,
                    target=peer,
                    last_log_index=self.log.last_index(),
                    last_log_term=self.log.last_term(),
                    pre_vote=True,
                )
            )

    def _heard_log_end(self, request: VoteRequest) -> None:
        if self.lost_tail and self.recovering and request.source in self.voters:
            self._log_ends[request.source] = (request.last_log_term, request.last_log_index)
            self._maybe_finish_tail_recovery()

    def _log_end_floor(self) -> tuple[int, int] | None:
        """For a replica that lost its tail, once it heard enough log ends: the furthest of
        them, (last term, last index); a vote or its own recovery needs a log this far."""
        if not self.lost_tail or len(self._log_ends) < self._log_ends_needed:
            return None
        return max(self._log_ends.values())

    def _log_ends_allow_vote(self, request: VoteRequest) -> bool:
        floor = self._log_end_floor()
        return floor is not None and (request.last_log_term, request.last_log_index) >= floor

    def _maybe_finish_tail_recovery(self) -> None:
        if not self.recovering:
            return  # the usual case: every append and heartbeat comes by here
        floor = self._log_end_floor()
        if floor is not None and (self.log.last_term(), self.log.last_index()) >= floor:
            self.recovering = False
            self._recovery_target = None

    def _become_pre_candidate(self) -> None:
        # Unlike a real candidate, keep term and vote: only ask whether we *could* win.
        self.role = Role.PRE_CANDIDATE
        self.leader = None
        self.votes = {self.id: True}
        self.election_elapsed = 0
        self._reset_election_timeout()
        if self._tally() == "won":
            self._become_candidate(leadership_transfer=False)
            return
        self._send_pre_vote_requests()

    def _become_candidate(self, leadership_transfer: bool) -> None:
        self._reset(self.term + 1)
        self.role = Role.CANDIDATE
        self.vote = self.id
        self.votes = {self.id: True}
        if self._tally() == "won":
            self._become_leader()
            return
        for peer in self.voting_peers:
            self._send(
                VoteRequest(
                    term=self.term,
                    source=self.id,
                    target=peer,
                    last_log_index=self.log.last_index(),
                    last_log_term=self.log.last_term(),
                    leadership_transfer=leadership_transfer,
                )
            )

    def _become_leader(self) -> None:
        self._reset(self.term)
        self.role = Role.LEADER
        self.leader = self.id
        next_index = self.log.last_index() + 1
        self.progress = {peer: Progress(next_index) for peer in self.peers}
        # The no-op lets this term commit, and with it every entry of earlier terms (5.4.2).
        self.log.append([Entry(index=next_index, term=self.term, kind=EntryKind.NOOP)])
        self._broadcast_pending = True

    # -- elections -------------------------------------------------------------------------

    def _handle_vote_request(self, request: VoteRequest) -> None:
        # Whoever asks, and a learner too (it never campaigns): the candidate may hold
        # entries this replica lacks that made it, or this replica, a voter (thesis 4.1: a
        # server answers without consulting its own configuration; etcd's raft does the same).
        # Without that, a group whose members' views lag can lose every election (the
        # simulator found two: seeds 15 and 187 with --membership).
        can_vote = (not self.recovering or self._log_ends_allow_vote(request)) and (
            self.vote == request.source
            or (self.vote is None and self.leader is None)
            or (request.pre_vote and request.term > self.term)
        )
        if can_vote and self._log_allows_vote(request):
            # A granted vote carries the request's term; for a pre-vote that is our future term.
            self._send(
                VoteResponse(
                    term=request.term,
                    source=self.id,
                    target=request.source,
                    granted=True,
                    pre_vote=request.pre_vote,
                )
            )
            if not request.pre_vote:
                self.election_elapsed = 0
                self.vote = request.source
        else:
            self._send(
                VoteResponse(
                    term=self.term,
                    source=self.id,
                    target=request.source,
                    granted=False,
                    pre_vote=request.pre_vote,
                )
            )

    def _tally(self) -> str:
        counted = [vote for voter, vote in self.votes.items() if voter in self.voters]
        granted = sum(counted)
        if granted >= self.quorum:
            return "won"
        if len(counted) - granted >= self.quorum:
            return "lost"
        return "pending"

    def _step_candidate(self, message: Message) -> None:
        if isinstance(message, AppendRequest | Heartbeat | InstallSnapshot):
            # Same term: someone else won this election.
            self._become_follower(self.term, message.source)
            self._step_follower(message)
        elif isinstance(message, VoteResponse):
            if message.pre_vote != (self.role is Role.PRE_CANDIDATE):
                return  # an answer to an earlier phase of this election
            self.votes.setdefault(message.source, message.granted)
            outcome = self._tally()
            if outcome == "won":
                if self.role is Role.PRE_CANDIDATE:
                    self._become_candidate(leadership_transfer=False)
                else:
                    self._become_leader()
            elif outcome == "lost":
                self._become_follower(self.term, None)

    # -- follower --------------------------------------------------------------------------

    def _step_follower(self, message: Message) -> None:
        if isinstance(message, AppendRequest):
            self.election_elapsed = 0
            self.leader = message.source
            self._handle_append(message)
        elif isinstance(message, Heartbeat):
            self.election_elapsed = 0
            self.leader = message.source
            self.log.commit_to(min(message.commit, self.log.last_index()))
            self._send(
                HeartbeatResponse(
                    term=self.term,
                    source=self.id,
                    target=message.source,
                    recovering=self.recovering,
                    last_index=self.log.last_index() if self.recovering else 0,
                    context=message.context,
                )
            )
            if self.recovering:
                if self._recovery_target is None or self._recovery_target[0] != self.term:
                    self._recovery_target = (self.term, message.last_index)
                # What an earlier append of this term matched is ours up to the commit index.
                self._maybe_finish_recovery(self.log.committed)
        elif isinstance(message, InstallSnapshot):
            self.election_elapsed = 0
            self.leader = message.source
            self._handle_install_snapshot(message)
        elif isinstance(message, TimeoutNow) and not self.recovering and not self.is_learner:
            # Leadership transfer: skip pre-vote, the leader itself asked us to take over.
            self._become_candidate(leadership_transfer=True)

    def _maybe_finish_recovery(self, matched: int) -> None:
        """Recovered once our log matches this term's leader's up to its last index as sent in
        a heartbeat of this term (``matched``: an index up to which it does)."""
        self._maybe_finish_tail_recovery()
        target = self._recovery_target
        if not self.recovering or target is None or target[0] != self.term:
            return
        if matched < target[1] or self.leader is None:
            return
        self.recovering = False
        self._recovery_target = None
        if self.vote is None:
            # The vote we may have given in this term is unknown (a lost log): give it to the
            # leader that won it, so that we cannot give another in this term, even after a
            # restart. A replica that lost only its tail knows its vote.
            self.vote = self.leader

    def _handle_install_snapshot(self, message: InstallSnapshot) -> None:
        """The leader's snapshot is durable here: answer as for an append that matched up to
        its index. Entries up to the commit index already match; so does a log holding the
        snapshot's entry. Any other log starts over after the snapshot (``Ready.snapshot``):
        the entries it drops did not match the leader's, so no quorum counted them."""
        log = self.log
        if message.index <= log.committed:
            match_index = log.committed
        elif log.match_term(message.index, message.snapshot_term):
            log.commit_to(message.index)
            match_index = message.index
        else:
            membership = Membership.decode(message.membership) if message.membership else None
            log.restore(message.index, message.snapshot_term, membership)
            match_index = message.index
        self._send(
            AppendResponse(
                term=self.term,
                source=self.id,
                target=message.source,
                success=True,
                match_index=match_index,
            )
        )
        self._maybe_finish_recovery(match_index)

    def _handle_append(self, request: AppendRequest) -> None:
        if request.prev_index < self.log.committed:
            # Everything up to our commit index matches the leader's log already.
            self._send(
                AppendResponse(
                    term=self.term,
                    source=self.id,
                    target=request.source,
                    success=True,
                    match_index=self.log.committed,
                )
            )
            return
        match_index = self.log.maybe_append(
            request.prev_index, request.prev_term, request.leader_commit, request.entries
        )
        if match_index is not None:
            self._send(
                AppendResponse(
                    term=self.term,
                    source=self.id,
                    target=request.source,
                    success=True,
                    match_index=match_index,
                )
            )
            self._maybe_finish_recovery(match_index)
            return
        hint_index, hint_term = self.log.find_conflict_by_term(
            min(request.prev_index, self.log.last_index()), request.prev_term
        )
        self._send(
            AppendResponse(
                term=self.term,
                source=self.id,
                target=request.source,
                success=False,
                rejected_index=request.prev_index,
                hint_index=hint_index,
                hint_term=hint_term,
            )
        )

    # -- leader ----------------------------------------------------------------------------

    def _tick_leader(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.config.election_timeout_ticks:
            self.election_elapsed = 0
            if self.config.check_quorum and not self._quorum_recently_active():
                self._become_follower(self.term, None)
                return
        if self.transfer_target is not None:
            self.transfer_elapsed += 1
            if self.transfer_elapsed >= self.config.election_timeout_ticks:
                # A transfer that has not finished within an election timeout is abandoned.
                self.transfer_target = None
        if self.heartbeat_elapsed >= self.config.heartbeat_interval_ticks:
            self.heartbeat_elapsed = 0
            for peer, progress in self.progress.items():
                self._send(self._heartbeat(peer, progress))

    def _quorum_recently_active(self) -> bool:
        active = 1  # ourselves
        for peer, progress in self.progress.items():
            if progress.recent_active and peer in self.voters:
                active += 1
            progress.recent_active = False
        return active >= self.quorum

    def _step_leader(self, message: Message) -> None:
        if isinstance(message, AppendResponse):
            self._handle_append_response(message)
        elif isinstance(message, HeartbeatResponse):
            progress = self.progress[message.source]
            progress.recent_active = True
            progress.probe_sent = False
            if message.context > progress.read_context:
                progress.read_context = message.context
                self._confirm_reads()
            if message.recovering and message.last_index < progress.match:
                # It lost what it had acknowledged: send it everything again from what it has.
                progress.lost_entries(message.last_index)
            if progress.state is ProgressState.REPLICATE and progress.is_paused(
                self.config.max_inflight_appends
            ):
                # An append may have been lost; free one slot so that the pipeline moves again.
                progress.inflight.popleft()
            if progress.state is ProgressState.SNAPSHOT:
                # Again now and then: the driver may have given up a transfer, or finished
                # one whose answer was lost (it ignores this while a transfer runs).
                self._send(SnapshotNeeded(term=self.term, source=self.id, target=message.source))
            elif progress.match < self.log.last_index():
                self._send_appends(message.source, send_empty=True)

    def _handle_append_response(self, response: AppendResponse) -> None:
        progress = self.progress[response.source]
        progress.recent_active = True
        if response.match_index > self.log.last_index():
            raise ProtocolError(
                f"{response.source} acknowledged index {response.match_index} beyond the "
                f"leader's last index {self.log.last_index()}"
            )
        if response.success:
            if progress.acknowledged(response.match_index):
                if progress.state is not ProgressState.REPLICATE:
                    progress.become_replicate()
                self._maybe_commit()
                if (
                    self.transfer_target == response.source
                    and progress.match == self.log.last_index()
                ):
                    self._send(TimeoutNow(term=self.term, source=self.id, target=response.source))
            self._send_appends(response.source, send_empty=False)
            return
        if response.rejected_index == 0 and response.hint_index == 0:
            return  # a term-only rejection; nothing to learn about the log
        next_probe = response.hint_index
        if response.hint_term > 0:
            next_probe, _ = self.log.find_conflict_by_term(response.hint_index, response.hint_term)
        if progress.rejected(response.rejected_index, next_probe):
            self._send_appends(response.source, send_empty=True)

    def _maybe_commit(self) -> bool:
        voting = (p.match for peer, p in self.progress.items() if peer in self.voters)
        matches = sorted([self._own_match(), *voting], reverse=True)
        candidate = matches[self.quorum - 1]
        if candidate > self.log.committed and self._may_commit(candidate):
            committed = self.log.commit_to(candidate)
            if self._pending_reads:
                self._confirm_reads()  # the first commit of this term gives reads their index
            return committed
        return False

    def _broadcast_appends(self) -> None:
        self._broadcast_pending = False
        for peer in self.peers:
            self._send_appends(peer, send_empty=False)

    def _send_appends(self, peer: str, send_empty: bool) -> None:
        """Push what ``peer`` lacks, as many batches as the pipeline allows."""
        progress = self.progress[peer]
        config = self.config
        last_index = self.log.last_index()
        while not progress.is_paused(config.max_inflight_appends):
            if progress.next < self.log.first_index():
                # What it needs next is in no log any more, only in the snapshot.
                progress.become_snapshot()
                self._send(SnapshotNeeded(term=self.term, source=self.id, target=peer))
                return
            prev_index = progress.next - 1
            entries = self.log.slice(progress.next, last_index + 1, config.max_append_bytes)
            if not entries and not send_empty:
                return
            self._send(
                AppendRequest(
                    term=self.term,
                    source=self.id,
                    target=peer,
                    prev_index=prev_index,
                    prev_term=self.log.term(prev_index),
                    entries=tuple(entries),
                    leader_commit=self.log.committed,
                )
            )
            progress.sent(entries[-1].index if entries else None)
            if not entries or progress.state is ProgressState.PROBE:
                return
            send_empty = False

    # -- helpers ---------------------------------------------------------------------------

    def _send(self, message: Message) -> None:
        self.outbox.append(message)

    def _hard_state(self) -> HardState:
        return HardState(term=self.term, vote=self.vote, commit=self.log.committed)

    def _soft_state(self) -> SoftState:
        return SoftState(self.role, self.leader, self.term)
