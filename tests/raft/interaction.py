"""Transcript tests for the Raft core, in the style of etcd-raft's interaction tests.

A transcript is a list of blocks separated by blank lines. Each block is one or more commands,
a ``----`` line, and the output they must produce::

    campaign n1
    ----
    n1 becomes pre-candidate at term 0

Run with ``REWRITE_TRANSCRIPTS=1`` to regenerate the expected output, then review the diff.

Commands:
    add-nodes N [pre-vote=false] [check-quorum=false]
    campaign ID                    start an election on ID now
    tick ID [COUNT]                tick ID (COUNT times)
    tick-election ID               tick ID for two election timeouts
    propose ID DATA                propose DATA on ID
    transfer-leader ID TARGET
    isolate ID / heal              cut ID off from everyone / restore every link
    stabilize                      handle Readies and deliver messages until nothing moves
    crash ID / restart ID          lose what ID has not persisted / rebuild it from its store
    status                         role, term, leader and log positions of every node
    log ID                         ID's log, persisted and not
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from dledger_mq.errors import DledgerError
from dledger_mq.raft.pure.core import Config, RaftCore, Ready
from dledger_mq.raft.pure.log_store import MemoryLogStore
from dledger_mq.raft.pure.messages import (
    AppendRequest,
    AppendResponse,
    Entry,
    EntryKind,
    Heartbeat,
    HeartbeatResponse,
    Message,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
)


def format_entry(entry: Entry) -> str:
    body = "noop" if entry.kind is EntryKind.NOOP else entry.data.decode(errors="replace")
    return f"{entry.term}/{entry.index} {body}"


def format_entries(entries: tuple[Entry, ...] | list[Entry]) -> str:
    return "[" + ", ".join(format_entry(entry) for entry in entries) + "]"


def format_message(message: Message) -> str:
    head = f"{message.source}->{message.target}"
    if isinstance(message, VoteRequest):
        kind = "PreVote" if message.pre_vote else "Vote"
        extra = " transfer" if message.leadership_transfer else ""
        return (
            f"{head} {kind} term={message.term} "
            f"last={message.last_log_term}/{message.last_log_index}{extra}"
        )
    if isinstance(message, VoteResponse):
        kind = "PreVoteResp" if message.pre_vote else "VoteResp"
        verdict = "granted" if message.granted else "rejected"
        return f"{head} {kind} term={message.term} {verdict}"
    if isinstance(message, AppendRequest):
        return (
            f"{head} Append term={message.term} prev={message.prev_term}/{message.prev_index}"
            f" commit={message.leader_commit} entries={format_entries(message.entries)}"
        )
    if isinstance(message, AppendResponse):
        if message.success:
            return f"{head} AppendResp term={message.term} match={message.match_index}"
        return (
            f"{head} AppendResp term={message.term} rejected={message.rejected_index} "
            f"hint={message.hint_term}/{message.hint_index}"
        )
    if isinstance(message, Heartbeat):
        return f"{head} Heartbeat term={message.term} commit={message.commit}"
    if isinstance(message, HeartbeatResponse):
        return f"{head} HeartbeatResp term={message.term}"
    assert isinstance(message, TimeoutNow)
    return f"{head} TimeoutNow term={message.term}"


class Interaction:
    def __init__(self) -> None:
        self.cores: dict[str, RaftCore | None] = {}
        self.stores: dict[str, MemoryLogStore] = {}
        self.configs: dict[str, Config] = {}
        self.in_flight: list[Message] = []
        self.isolated: set[str] = set()
        self.lives: dict[str, int] = {}

    def run(self, command: str) -> list[str]:
        name, *args = command.split()
        handler = getattr(self, "do_" + name.replace("-", "_"), None)
        if handler is None:
            raise ValueError(f"unknown command {name!r}")
        try:
            return handler(*args) or []
        except DledgerError as error:
            return [f"error: {type(error).__name__}: {error}"]

    def core(self, node_id: str) -> RaftCore:
        core = self.cores[node_id]
        assert core is not None, f"{node_id} is crashed"
        return core

    def _build(self, node_id: str) -> None:
        rng = random.Random(f"{node_id}-{self.lives[node_id]}")
        self.cores[node_id] = RaftCore(self.configs[node_id], self.stores[node_id], rng)

    # -- commands ----------------------------------------------------------------------------

    def do_add_nodes(self, count: str, *flags: str) -> list[str]:
        options = dict(flag.split("=") for flag in flags)
        ids = tuple(f"n{number}" for number in range(1, int(count) + 1))
        for node_id in ids:
            self.configs[node_id] = Config(
                node_id=node_id,
                members=ids,
                pre_vote=options.get("pre-vote", "true") == "true",
                check_quorum=options.get("check-quorum", "true") == "true",
            )
            self.stores[node_id] = MemoryLogStore()
            self.lives[node_id] = 0
            self._build(node_id)
        return [f"nodes {', '.join(ids)}"]

    def do_campaign(self, node_id: str) -> list[str]:
        self.core(node_id).campaign()
        return self._roles([node_id])

    def do_tick(self, node_id: str, count: str = "1") -> list[str]:
        for _ in range(int(count)):
            self.core(node_id).tick()
        return self._roles([node_id])

    def do_tick_election(self, node_id: str) -> list[str]:
        core = self.core(node_id)
        return self.do_tick(node_id, str(2 * core.config.election_timeout_ticks))

    def do_propose(self, node_id: str, data: str) -> list[str]:
        index = self.core(node_id).propose(data.encode())
        return [f"{node_id} appended {data} at {index}"]

    def do_transfer_leader(self, node_id: str, target: str) -> list[str]:
        self.core(node_id).transfer_leadership(target)
        return [f"{node_id} transfers leadership to {target}"]

    def do_isolate(self, node_id: str) -> list[str]:
        self.isolated.add(node_id)
        return [f"{node_id} isolated"]

    def do_heal(self) -> list[str]:
        self.isolated.clear()
        return ["network healed"]

    def do_crash(self, node_id: str) -> list[str]:
        self.cores[node_id] = None
        self.lives[node_id] += 1
        return [f"{node_id} crashed"]

    def do_restart(self, node_id: str) -> list[str]:
        self._build(node_id)
        store = self.stores[node_id]
        return [f"{node_id} restarted: {store.hard_state()} last={store.last_index()}"]

    def do_status(self) -> list[str]:
        lines = []
        for node_id, core in self.cores.items():
            if core is None:
                lines.append(f"{node_id}: crashed")
                continue
            status = core.status()
            lines.append(
                f"{node_id}: {status.role.value} term={status.term} leader={status.leader} "
                f"last={status.last_index} commit={status.commit} applied={status.applied}"
            )
        return lines

    def do_log(self, node_id: str) -> list[str]:
        log = self.core(node_id).log
        entries = log.slice(log.first_index(), log.last_index() + 1, 1 << 62)
        return [f"{node_id} log: {format_entries(entries)}"]

    def do_stabilize(self) -> list[str]:
        lines: list[str] = []
        moved = True
        while moved:
            moved = False
            for node_id, core in self.cores.items():
                if core is not None and core.has_ready():
                    moved = True
                    lines += self._handle_ready(node_id, core, core.ready())
            deliveries, self.in_flight = self.in_flight, []
            for message in deliveries:
                moved = True
                target = self.cores[message.target]
                blocked = message.source in self.isolated or message.target in self.isolated
                if target is None or blocked:
                    lines.append(f"  dropped {format_message(message)}")
                    continue
                target.step(message)
        return lines

    def _handle_ready(self, node_id: str, core: RaftCore, ready: Ready) -> list[str]:
        lines = [f"> {node_id} handling Ready"]
        if ready.soft_state is not None:
            soft = ready.soft_state
            lines.append(f"  {soft.role.value} term={soft.term} leader={soft.leader}")
        store = self.stores[node_id]
        for message in ready.messages_before_persist:
            lines.append(f"  send before persist {format_message(message)}")
        self.in_flight.extend(ready.messages_before_persist)
        if ready.entries:
            if ready.entries[0].index <= store.last_index():
                lines.append(f"  truncate from {ready.entries[0].index}")
            lines.append(f"  persist {format_entries(ready.entries)}")
            store.append(list(ready.entries))
        if ready.hard_state is not None:
            hard = ready.hard_state
            lines.append(f"  hard state term={hard.term} vote={hard.vote} commit={hard.commit}")
            store.set_hard_state(hard)
        for message in ready.messages:
            lines.append(f"  send {format_message(message)}")
        self.in_flight.extend(ready.messages)
        if ready.committed_entries:
            lines.append(f"  apply {format_entries(ready.committed_entries)}")
        core.advance()
        return lines

    def _roles(self, node_ids: list[str]) -> list[str]:
        return [
            f"{node_id} is {self.core(node_id).role.value} at term {self.core(node_id).term}"
            for node_id in node_ids
        ]


def run_transcript(path: Path) -> tuple[str, str]:
    """Returns (expected, actual) text of the transcript at ``path``."""
    text = path.read_text()
    interaction = Interaction()
    output_blocks = []
    for block in text.strip().split("\n\n"):
        lines = block.splitlines()
        if all(line.startswith("#") for line in lines):
            output_blocks.append(block)
            continue
        separator = lines.index("----")
        commands = lines[:separator]
        produced: list[str] = []
        for command in commands:
            if not command.startswith("#"):
                produced += interaction.run(command)
        output_blocks.append("\n".join([*commands, "----", *produced]))
    actual = "\n\n".join(output_blocks) + "\n"
    if os.environ.get("REWRITE_TRANSCRIPTS") == "1":
        path.write_text(actual)
    return text, actual
