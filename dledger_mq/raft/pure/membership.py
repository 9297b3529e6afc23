"""Who is in a Raft group: its voters and learners, as ``CONFIG`` entries in the log say.

A membership takes effect on every replica as soon as its entry is appended there, committed
or not (Raft thesis 4.1), so a replica keeps the memberships of the entries in its log by
index (``MembershipHistory``): a suffix dropped by a conflict takes its memberships with it and
the one before is in force again. The membership at a snapshot's index travels with the
snapshot, and ``node.toml``'s ``members`` is only the bootstrap, used while neither a snapshot
nor the log says otherwise.

Changes are single-server (docs/architecture.md, "Membership changes"): a server joins as a
learner, is promoted to voter once caught up, and is removed in a separate change; each is a
whole new membership in one entry. Encoded as canonical JSON (sorted keys, members sorted by
id): small, rare, and readable in a log dump.
"""

from __future__ import annotations

import enum
import json

import attrs

from dledger_mq.errors import InvalidMembershipChange, ProtocolError

#: Most members (voters and learners together) a group may have.
MAX_MEMBERS = 64
#: Most bytes of an encoded membership (64 members with long addresses fit many times over).
MAX_MEMBERSHIP_BYTES = 64 << 10
_MAX_NODE_ID_LENGTH = 255
_MAX_ADDRESS_LENGTH = 300


@attrs.frozen
class GroupMember:
    """A member and where it is: its peer (Raft) and client addresses."""

    node_id: str
    peer: str = ""
    client: str = ""


class ChangeKind(enum.Enum):
    ADD_LEARNER = "add-learner"
    PROMOTE = "promote"
    REMOVE = "remove"


@attrs.frozen
class MembershipChange:
    kind: ChangeKind
    #: For ``ADD_LEARNER`` with its addresses; for the others, only its id counts.
    member: GroupMember


@attrs.frozen
class Membership:
    """Voters decide (elections, commits, reads); learners only receive the log."""

    voters: tuple[GroupMember, ...]
    learners: tuple[GroupMember, ...] = ()

    def __attrs_post_init__(self) -> None:
        members = (*self.voters, *self.learners)
        ids = [member.node_id for member in members]
        if not self.voters:
            raise InvalidMembershipChange("a group needs at least one voter")
        if len(set(ids)) != len(ids):
            raise InvalidMembershipChange(f"a member is named twice: {sorted(ids)}")
        if len(members) > MAX_MEMBERS:
            raise InvalidMembershipChange(f"more than {MAX_MEMBERS} members")
        for member in members:
            node_id = member.node_id
            if not (0 < len(node_id) <= _MAX_NODE_ID_LENGTH and node_id.isprintable()):
                raise InvalidMembershipChange(f"bad node id {member.node_id!r}")
            for address in (member.peer, member.client):
                if len(address) > _MAX_ADDRESS_LENGTH:
                    raise InvalidMembershipChange(f"address of {member.node_id} is too long")

    @classmethod
    def of(cls, voters: tuple[str, ...], learners: tuple[str, ...] = ()) -> Membership:
        """Members known by id only (the core's tests, a config without addresses)."""
        return cls(
            tuple(GroupMember(node_id) for node_id in sorted(voters)),
            tuple(GroupMember(node_id) for node_id in sorted(learners)),
        )

    @property
    def voter_ids(self) -> tuple[str, ...]:
        return tuple(member.node_id for member in self.voters)

    @property
    def learner_ids(self) -> tuple[str, ...]:
        return tuple(member.node_id for member in self.learners)

    @property
    def members(self) -> tuple[GroupMember, ...]:
        return (*self.voters, *self.learners)

    def member(self, node_id: str) -> GroupMember | None:
        for member in self.members:
            if member.node_id == node_id:
                return member
        return None

    def changed(self, change: MembershipChange) -> Membership:
        """The membership after ``change``; ``InvalidMembershipChange`` if it does not apply."""
        node_id = change.member.node_id
        voters = {member.node_id: member for member in self.voters}
        learners = {member.node_id: member for member in self.learners}
        if change.kind is ChangeKind.ADD_LEARNER:
            if node_id in voters or node_id in learners:
                raise InvalidMembershipChange(f"{node_id} is already a member")
            learners[node_id] = change.member
        elif change.kind is ChangeKind.PROMOTE:
            if node_id not in learners:
                raise InvalidMembershipChange(f"{node_id} is not a learner")
            voters[node_id] = learners.pop(node_id)
        else:
            if node_id in voters:
                del voters[node_id]
            elif node_id in learners:
                del learners[node_id]
            else:
                raise InvalidMembershipChange(f"{node_id} is not a member")
        return Membership(
            tuple(voters[key] for key in sorted(voters)),
            tuple(learners[key] for key in sorted(learners)),
        )

    def encode(self) -> bytes:
        return json.dumps(
            {
                "voters": [attrs.astuple(member) for member in self.voters],
                "learners": [attrs.astuple(member) for member in self.learners],
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def decode(cls, data: bytes) -> Membership:
        """A membership as ``encode`` wrote it; ``ProtocolError`` for anything else (a
        ``CONFIG`` entry is checked before it is appended: bad input changes nothing)."""
        if len(data) > MAX_MEMBERSHIP_BYTES:
            raise ProtocolError(f"a membership of {len(data)} bytes is too long")
        try:
            decoded = json.loads(data)
            return cls(
                tuple(GroupMember(*_member(item)) for item in decoded["voters"]),
                tuple(GroupMember(*_member(item)) for item in decoded["learners"]),
            )
        except (ValueError, KeyError, TypeError, InvalidMembershipChange) as error:
            raise ProtocolError(f"malformed membership: {error}") from None


def _member(item: object) -> tuple[str, str, str]:
    if not (
        isinstance(item, list) and len(item) == 3 and all(isinstance(part, str) for part in item)
    ):
        raise ValueError(f"a member is [id, peer, client], got {item!r:.60}")
    return item[0], item[1], item[2]


class MembershipHistory:
    """The memberships of the ``CONFIG`` entries a log holds, by index, above a base (the
    membership in force at the log's start: a snapshot's, or the bootstrap). The newest is in
    force, committed or not."""

    def __init__(self, base_index: int, base: Membership) -> None:
        self._entries: list[tuple[int, Membership]] = [(base_index, base)]

    @property
    def current(self) -> Membership:
        return self._entries[-1][1]

    @property
    def newest_index(self) -> int:
        """The index of the entry that made the current membership (or the base's)."""
        return self._entries[-1][0]

    def at(self, index: int) -> Membership:
        """The membership in force at ``index`` (the base's if older than what is kept)."""
        found = self._entries[0][1]
        for entry_index, membership in self._entries:
            if entry_index > index:
                break
            found = membership
        return found

    def appended(self, first_index: int, configs: list[tuple[int, Membership]]) -> bool:
        """Entries from ``first_index`` on replaced the log's tail, ``configs`` among them;
        returns whether the current membership changed."""
        before = self.current
        while len(self._entries) > 1 and self._entries[-1][0] >= first_index:
            self._entries.pop()
        self._entries.extend(configs)
        return self.current != before

    def reset(self, base_index: int, base: Membership) -> bool:
        """The log starts over after a snapshot at ``base_index``."""
        before = self.current
        self._entries = [(base_index, base)]
        return self.current != before

    def forget_before(self, index: int) -> None:
        """Keep only what ``at(i)`` needs for ``i >= index`` (snapshots are taken at or after
        the applied index)."""
        while len(self._entries) > 1 and self._entries[1][0] <= index:
            self._entries.pop(0)
