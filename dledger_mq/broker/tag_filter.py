"""Tag expressions of subscriptions: ``*`` (every message) or ``tag || tag || ...``.

Whitespace around tags and operators is ignored. As in RocketMQ, an empty expression means ``*``,
and a message without tags matches only ``*``.

The consume queue keeps a 32-bit code of each message's tag (``tag_code``), so the broker can skip
messages that cannot match without reading their entries; codes may collide, so a position that
passes ``may_match_code`` is confirmed with ``matches`` on the message itself.
"""

from __future__ import annotations

import zlib

import attrs

from dledger_mq.broker.records import tag_problem
from dledger_mq.errors import InvalidTagExpression

MATCH_ALL_EXPRESSION = "*"
#: Longest expression accepted: a subscription travels in every heartbeat.
MAX_EXPRESSION_LENGTH = 4096


def tag_code(tags: str | None) -> int:
    """A stable 32-bit code of a message's tag (CRC-32 of its UTF-8); 0 for no tag."""
    if tags is None:
        return 0
    return zlib.crc32(tags.encode())


@attrs.frozen
class TagFilter:
    """A parsed expression. ``tags`` is None for ``*``; ``expression`` is the canonical text."""

    expression: str
    tags: frozenset[str] | None
    codes: frozenset[int] | None

    def matches(self, tags: str | None) -> bool:
        if self.tags is None:
            return True
        return tags is not None and tags in self.tags

    def may_match_code(self, code: int) -> bool:
        """False only when no message with a tag of this code can match."""
        return self.codes is None or code in self.codes


MATCH_ALL = TagFilter(MATCH_ALL_EXPRESSION, None, None)


def parse_tag_expression(expression: str) -> TagFilter:
    """Parse ``*``, ``paid`` or ``paid || refunded``. Raises ``InvalidTagExpression``."""
    if type(expression) is not str:
        raise InvalidTagExpression(repr(expression), "must be a string")
    if len(expression) > MAX_EXPRESSION_LENGTH:
        raise InvalidTagExpression(
            expression[:40] + "...", f"longer than {MAX_EXPRESSION_LENGTH} characters"
        )
    stripped = expression.strip()
    if stripped in ("", MATCH_ALL_EXPRESSION):
        return MATCH_ALL
    tags: list[str] = []
    for part in stripped.split("||"):
        tag = part.strip()
        if not tag:
            raise InvalidTagExpression(expression, "an empty tag around '||'")
        if tag == MATCH_ALL_EXPRESSION:
            raise InvalidTagExpression(expression, "'*' cannot be combined with tags")
        problem = tag_problem(tag)
        if problem is not None:
            raise InvalidTagExpression(expression, f"tag {tag!r}: {problem}")
        if tag not in tags:
            tags.append(tag)
    # Sorted, so that equal subscriptions have equal text whatever order they were written in.
    canonical = " || ".join(sorted(tags))
    return TagFilter(canonical, frozenset(tags), frozenset(tag_code(tag) for tag in tags))
