"""Users and what they may do, in the spirit of RocketMQ's ACL 2.0: rules of (resource, action).

A resource is ``cluster``, ``topic:<pattern>`` or ``group:<pattern>``, where a pattern is a
name, a prefix ending in ``*`` (``orders*``) or ``*`` alone. An action is ``publish``,
``subscribe``, ``create`` (a topic, also by sending to one that does not exist) or ``admin``.
``admin`` on ``cluster`` allows everything. Users and their rules are replicated state (they
live in the log, ``records.py``); a node keeps only each user's stored key
(``wire/client_auth.py``), never the secret.

Pure: decided by the state alone, so every replica answers alike.
"""

from __future__ import annotations

import re

import attrs

from dledger_mq.errors import InvalidName, InvalidRule

ACTIONS = ("publish", "subscribe", "create", "admin")
CLUSTER = "cluster"
RESOURCE_KINDS = ("topic", "group")
MAX_USERS = 10_000
MAX_RULES_PER_USER = 256
MAX_ACCESS_KEY_LENGTH = 128
MAX_RULE_RESOURCE_LENGTH = 300
_ACCESS_KEY_PATTERN = re.compile(r"[A-Za-z0-9_.@\-]+")
_PATTERN = re.compile(r"[A-Za-z0-9_.%\-]*\*?")


def check_access_key(access_key: object) -> None:
    if not (
        type(access_key) is str
        and 0 < len(access_key) <= MAX_ACCESS_KEY_LENGTH
        and _ACCESS_KEY_PATTERN.fullmatch(access_key)
    ):
        raise InvalidName(
            "access key",
            str(access_key)[:MAX_ACCESS_KEY_LENGTH],
            f"1 to {MAX_ACCESS_KEY_LENGTH} characters of A-Z a-z 0-9 _ . @ -",
        )


@attrs.frozen(order=True)
class Rule:
    """``action`` is allowed on every resource ``resource`` matches."""

    resource: str
    action: str

    def __attrs_post_init__(self) -> None:
        check_rule(self.resource, self.action)

    def __str__(self) -> str:
        return f"{self.action} on {self.resource}"

    def allows(self, action: str, resource: str) -> bool:
        if self.resource == CLUSTER and self.action == "admin":
            return True
        if self.action != action:
            return False
        if self.resource == resource:
            return True
        pattern = self.resource
        return pattern.endswith("*") and resource.startswith(pattern[:-1])


def check_rule(resource: object, action: object) -> None:
    text = f"{action} on {resource}"
    if action not in ACTIONS:
        raise InvalidRule(text, f"the action must be one of {', '.join(ACTIONS)}")
    if type(resource) is not str or len(resource) > MAX_RULE_RESOURCE_LENGTH:
        raise InvalidRule(text, f"the resource must be text of at most {MAX_RULE_RESOURCE_LENGTH}")
    if resource == CLUSTER:
        return
    kind, colon, pattern = resource.partition(":")
    if not colon or kind not in RESOURCE_KINDS or not pattern or not _PATTERN.fullmatch(pattern):
        raise InvalidRule(
            text,
            "the resource must be 'cluster', 'topic:NAME' or 'group:NAME', where NAME may end "
            "in '*' (a prefix) or be '*'",
        )


def topic_resource(topic: str) -> str:
    return f"topic:{topic}"


def group_resource(group: str) -> str:
    return f"group:{group}"


@attrs.frozen
class User:
    access_key: str
    #: SHA-256 of the client key (``wire/client_auth.stored_key``).
    stored_key: bytes
    rules: frozenset[Rule] = frozenset()

    def allows(self, action: str, resource: str) -> bool:
        return any(rule.allows(action, resource) for rule in self.rules)
