"""The ``membership`` fault: replicas of a group replaced online while the run goes on.

Each change draws a group and replaces one of its voters, as an operator replaces a machine
(docs/operations.md, "Changing a group's members"), in steps, each recorded in the history
(``f = "membership"``: invoke, then ok, fail or info, with ``took_s``):

1. ``start-spare``: a spare node of the group (a slot that is not a member: never added, or
   removed earlier, its data deleted) gets a node.toml listing the group's members now and
   itself, itself a learner, the cluster secret (and TLS files), an empty log, and is started.
2. ``add-learner``: the leader adds it as a learner (its membership entry names the proxy's
   inbound listener for it, so that every link to it goes through the fault proxy).
3. ``catch-up``: until the leader's status shows its match at the commit index.
4. ``promote``: to voter, retried while the leader says ``MembershipChangeInProgress``.
5. ``transfer-leader`` (only when the voter to remove leads: the leader never removes itself).
6. ``remove``: a voter other than the new one (target ``one``: any; ``leader``: the leader),
   only while the group has more than ``--nodes`` voters: it never goes below that.
7. ``stop``: the removed node is stopped (SIGTERM by PID, then SIGKILL); its slot is a spare.

Every step goes through whichever node leads (asked again after each error) and first reads
the leader's membership: a step whose effect is already there (an earlier attempt committed
although its answer was lost) is done. A step that cannot complete within ``STEP_SECONDS``
(a majority down meanwhile: the harness's other faults keep running) is given up: a learner
left behind is removed, and the next change starts from whatever the leader's log says.
At the end (and before each change) the harness's view of who is a member is taken from the
leader's log (``reconcile``): members found are faults' targets and must recover; others are
stopped.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import trio

from dledger_mq.clients.admin import AdminConnection, connect_admin
from dledger_mq.errors import DledgerError, InvalidMembershipChange
from dledger_mq.wire.admin import MembershipReply
from jepsen.history import FAIL, INFO, INVOKE, MEMBERSHIP, OK, History
from jepsen.nodes import CLUSTER_ID, Nodes

TARGETS = ("one", "leader")
#: The longest one step may take before it is given up.
STEP_SECONDS = 20.0
#: The longest one admin call may take (a paused leader answers nothing).
CALL_SECONDS = 3.0
RETRY_SECONDS = 0.2
PROCESS = "membership"


class _Progress:
    """How far a step got: whether its change was asked of a leader; the last error."""

    def __init__(self) -> None:
        self.asked = False
        self.error = "no leader answered"
        #: Whether the step's completion is in the history.
        self.recorded = False


class _NotYet(Exception):
    """A step waiting for something (a learner catching up): asked again, and why."""


class _Refused(Exception):
    """The leader refused a change as invalid (``InvalidMembershipChange``): definite."""


def _ids(reply: MembershipReply) -> tuple[list[str], list[str]]:
    return [m.node_id for m in reply.voters], [m.node_id for m in reply.learners]


class MembershipChanger:
    def __init__(
        self,
        nodes: Nodes,
        history: History,
        now: Callable[[], float],
        rng: random.Random,
        targets: tuple[str, ...],
        quiet: tuple[float, float],
        entry_peer: Callable[[str], str],
    ) -> None:
        self.nodes = nodes
        self.history = history
        self.now = now
        self.rng = rng
        self.targets = targets
        self.quiet = quiet
        #: The peer address the membership entry of an added node gives.
        self.entry_peer = entry_peer
        self.changes = 0
        #: What is being done now, for the progress line ("" when nothing).
        self.current = ""

    async def run(self, stop: trio.Event) -> None:
        """One change after another (each after a quiet period) until ``stop``; a change in
        progress is abandoned then, and the harness's view reconciled with the groups'."""
        try:
            while not stop.is_set():
                with trio.move_on_after(self.rng.uniform(*self.quiet)):
                    await stop.wait()
                if stop.is_set():
                    break
                group = self.rng.choice(self.nodes.groups)
                target = self.rng.choice(self.targets)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_cancel_when, stop, nursery.cancel_scope)
                    await self.replace(group, target)
                    nursery.cancel_scope.cancel()
        finally:
            self.current = ""
            with trio.CancelScope(shield=True), trio.move_on_after(STEP_SECONDS):
                for group in self.nodes.groups:
                    await self.reconcile(group)

    async def replace(self, group: str, target: str) -> None:
        """One change: a spare added and promoted, then a voter removed."""
        self.changes += 1
        change = self.changes
        nodes = self.nodes
        size = nodes.size
        try:
            reply = await self._membership(group)
            if reply is None:
                started = self.now()
                self._invoke(change, "start-spare", group, "")
                self._complete(FAIL, change, "start-spare", group, "", started, error="no leader")
                return
            self._adopt(group, reply)
            spares = nodes.spare_ids(group)
            voters = _ids(reply)[0]
            spare: str | None = None
            if spares and len(voters) <= size:
                spare = self.rng.choice(spares)
                await self._add(change, group, spare)
            await self._remove_one(change, group, target, spare)
        finally:
            self.current = ""

    async def _add(self, change: int, group: str, spare: str) -> None:
        nodes = self.nodes
        member_id = nodes.member_of[spare]
        self.current = f"membership {change}: adding {spare}"

        async def start_spare(admin: AdminConnection) -> MembershipReply:
            reply = await admin.membership()
            voters, learners = _ids(reply)
            names = [nodes.name_of(group, m) for m in [*voters, *learners] if m != member_id]
            nodes.prepare(spare, [name for name in names if name is not None])
            nodes.start_spare(spare)
            return reply

        if not await self._step(change, "start-spare", group, spare, start_spare, None):
            return

        async def add(admin: AdminConnection) -> MembershipReply:
            client = nodes.members[spare].client
            return await admin.change_membership(
                "add-learner", member_id, self.entry_peer(spare), client
            )

        def added(reply: MembershipReply) -> bool:
            voters, learners = _ids(reply)
            return member_id in voters or member_id in learners

        if not await self._step(change, "add-learner", group, spare, add, added):
            await self._abandon(change, group, spare)
            return
        nodes.join(spare)

        async def caught_up(admin: AdminConnection) -> MembershipReply | None:
            status = await admin.status()
            match = next((f.match_index for f in status.followers if f.node_id == member_id), 0)
            if status.role != "leader":
                raise _NotYet(f"{status.node_id} no longer leads")
            if match < status.commit_index:
                raise _NotYet(f"{spare} has {match} of {status.commit_index} committed entries")
            return await admin.membership()

        if not await self._step(change, "catch-up", group, spare, caught_up, None):
            await self._abandon(change, group, spare)
            return

        async def promote(admin: AdminConnection) -> MembershipReply:
            return await admin.change_membership("promote", member_id)

        def promoted(reply: MembershipReply) -> bool:
            return member_id in _ids(reply)[0]

        if not await self._step(change, "promote", group, spare, promote, promoted):
            await self._abandon(change, group, spare)

    async def _remove_one(self, change: int, group: str, target: str, added: str | None) -> None:
        nodes = self.nodes
        reply = await self._membership(group)
        if reply is None:
            return
        voters = _ids(reply)[0]
        if len(voters) <= nodes.size:
            return  # never below --nodes voters
        leader = await self._leader(group)
        if leader is None:
            started = self.now()
            self._invoke(change, "remove", group, "")
            self._complete(FAIL, change, "remove", group, "", started, error="no leader")
            return
        candidates = [
            name for m in voters if (name := nodes.name_of(group, m)) is not None and name != added
        ]
        if not candidates:
            return
        victim = leader if target == "leader" and leader in candidates else None
        if victim is None:
            victim = self.rng.choice(sorted(candidates))
        self.current = f"membership {change}: removing {victim}"
        if victim == leader:
            others = [name for name in candidates + ([added] if added else []) if name != victim]

            async def transfer(admin: AdminConnection) -> MembershipReply | None:
                status = await admin.status()
                if status.node_id != nodes.member_of[victim]:
                    return await admin.membership()  # someone else leads now
                lags = {
                    f.node_id: f.lag
                    for f in status.followers
                    if f.node_id in {nodes.member_of[o] for o in others}
                }
                if lags:
                    chosen = min(sorted(lags), key=lambda other: lags[other])
                    await admin.transfer_leader(chosen)
                return None  # until the victim no longer leads

            if not await self._step(change, "transfer-leader", group, victim, transfer, None):
                return
        await self._remove(change, group, victim)

    async def _remove(self, change: int, group: str, name: str) -> bool:
        nodes = self.nodes
        member_id = nodes.member_of[name]

        async def remove(admin: AdminConnection) -> MembershipReply:
            status = await admin.status()
            if status.node_id == member_id:
                # It leads (again): the leader never removes itself; hand leadership over.
                lags = {f.node_id: f.lag for f in status.followers}
                voters = set(_ids(await admin.membership())[0]) - {member_id}
                chosen = min(sorted(voters & set(lags)), key=lambda o: lags[o], default=None)
                if chosen is not None:
                    await admin.transfer_leader(chosen)
                raise DledgerError(f"{name} led: leadership handed to {chosen}")
            return await admin.change_membership("remove", member_id)

        def removed(reply: MembershipReply) -> bool:
            voters, learners = _ids(reply)
            return member_id not in voters and member_id not in learners

        if not await self._step(change, "remove", group, name, remove, removed):
            return False
        started = self.now()
        self._invoke(change, "stop", group, name)
        nodes.leave(name)
        self._complete(OK, change, "stop", group, name, started)
        return True

    async def _abandon(self, change: int, group: str, spare: str) -> None:
        """A spare that could not be added and promoted: out again (if the leader's log has
        it), and stopped."""
        reply = await self._membership(group)
        if reply is not None and _has(reply, self.nodes.member_of[spare]):
            if not await self._remove(change, group, spare):
                return  # reconcile settles it later
        else:
            self.nodes.leave(spare)

    async def reconcile(self, group: str) -> None:
        """The harness's members of ``group`` made those of its leader's log."""
        reply = await self._membership(group)
        if reply is not None:
            self._adopt(group, reply)

    def _adopt(self, group: str, reply: MembershipReply) -> None:
        voters, learners = _ids(reply)
        members = set(voters) | set(learners)
        for name in self.nodes.slot_ids(group):
            node = self.nodes.nodes.get(name)
            if self.nodes.member_of[name] in members:
                self.nodes.join(name)
            elif name in self.nodes.active or (node is not None and node.running):
                self.nodes.leave(name)  # a spare whose adding was cut short, too

    async def _leader(self, group: str) -> str | None:
        """``group``'s leader, asked until one answers (None: none within ``STEP_SECONDS``)."""
        with trio.move_on_after(STEP_SECONDS):
            while True:
                with trio.move_on_after(CALL_SECONDS):
                    leader = await self.nodes.leader(group)
                    if leader is not None:
                        return leader
                await trio.sleep(RETRY_SECONDS)
        return None

    async def _membership(self, group: str) -> MembershipReply | None:
        """The membership of ``group``'s leader's log (None: no leader answered in time)."""
        with trio.move_on_after(STEP_SECONDS):
            while True:
                try:
                    with trio.fail_after(CALL_SECONDS):
                        leader = await self.nodes.leader(group)
                        if leader is not None:
                            async with self._admin(leader) as admin:
                                return await admin.membership()
                except (DledgerError, OSError, trio.TooSlowError):
                    pass
                await trio.sleep(RETRY_SECONDS)
        return None

    def _admin(self, name: str) -> AbstractAsyncContextManager[AdminConnection]:
        nodes = self.nodes
        return connect_admin(nodes.members[name].client, CLUSTER_ID, nodes.credentials, nodes.tls)

    async def _step(
        self,
        change: int,
        action: str,
        group: str,
        node: str,
        attempt: Callable[[AdminConnection], Awaitable[MembershipReply | None]],
        done: Callable[[MembershipReply], bool] | None,
    ) -> bool:
        """Do one step through the group's leader until it is done or ``STEP_SECONDS`` pass;
        record it. ``done`` (a change): whether the leader's membership shows it done (read
        before each attempt); None: the attempt's reply (not None) says it is done."""
        started = self.now()
        self._invoke(change, action, group, node)
        progress = _Progress()
        try:
            with trio.move_on_after(STEP_SECONDS):
                await self._attempt_step(
                    change, action, group, node, attempt, done, started, progress
                )
                return True
            kind = INFO if progress.asked else FAIL
            error = f"gave up after {STEP_SECONDS:g} s ({progress.error})"
        except _Refused as invalid:
            kind, error = FAIL, str(invalid)
        except BaseException:
            # Cancelled at the run's end (trio may wrap it in an ExceptionGroup): recorded all
            # the same, then on its way.
            if not progress.recorded:
                kind = INFO if progress.asked else FAIL
                error = f"cut short at the run's end ({progress.error})"
                self._complete(kind, change, action, group, node, started, error=error)
            raise
        self._complete(kind, change, action, group, node, started, error=error)
        return False

    async def _attempt_step(
        self,
        change: int,
        action: str,
        group: str,
        node: str,
        attempt: Callable[[AdminConnection], Awaitable[MembershipReply | None]],
        done: Callable[[MembershipReply], bool] | None,
        started: float,
        progress: _Progress,
    ) -> None:
        """``_step``'s attempts until one is done (recorded ok); raises ``_Refused``."""
        while True:
            try:
                with trio.fail_after(CALL_SECONDS):
                    leader = await self.nodes.leader(group)
                    if leader is None:
                        raise DledgerError(f"{group} has no leader")
                    async with self._admin(leader) as admin:
                        if done is not None:
                            current = await admin.membership()
                            if done(current):
                                progress.recorded = True
                                self._complete(OK, change, action, group, node, started, current)
                                return
                        progress.asked = progress.asked or done is not None
                        reply = await attempt(admin)
                        if reply is not None and (done is None or done(reply)):
                            progress.recorded = True
                            self._complete(OK, change, action, group, node, started, reply)
                            return
            except InvalidMembershipChange as invalid:
                # Definite: the leader's membership (read just before) lacks it, and it
                # cannot be made.
                raise _Refused(f"{type(invalid).__name__}: {invalid}") from None
            except _NotYet as waiting:
                progress.error = str(waiting)
            except (DledgerError, OSError, trio.TooSlowError) as failure:
                progress.error = f"{type(failure).__name__}: {failure}"
            await trio.sleep(RETRY_SECONDS)

    def _invoke(self, change: int, action: str, group: str, node: str) -> None:
        value = {"change": change, "action": action, "node": node, "group": group}
        self.history.add(self.now(), PROCESS, INVOKE, MEMBERSHIP, value=value, group=group)

    def _complete(
        self,
        kind: str,
        change: int,
        action: str,
        group: str,
        node: str,
        started: float,
        reply: MembershipReply | None = None,
        error: str | None = None,
    ) -> None:
        value: dict[str, Any] = {
            "change": change,
            "action": action,
            "node": node,
            "group": group,
            "took_s": round(self.now() - started, 3),
        }
        if reply is not None:
            value["voters"], value["learners"] = _ids(reply)
        self.history.add(
            self.now(), PROCESS, kind, MEMBERSHIP, value=value, group=group, error=error
        )


async def _cancel_when(stop: trio.Event, scope: trio.CancelScope) -> None:
    await stop.wait()
    scope.cancel()


def _has(reply: MembershipReply, member_id: str) -> bool:
    voters, learners = _ids(reply)
    return member_id in voters or member_id in learners
