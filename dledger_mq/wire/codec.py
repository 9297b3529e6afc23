"""Messages to bytes and back: msgpack arrays, (un)structured by cattrs from attrs classes.

A payload is the msgpack array ``[tag, request_id, group, field, field, ...]``: the tag names
the class (each protocol registers its own table), the request id pairs a reply with its request
so that many requests can be in flight on one connection, the group names the Raft group the
message is for (a node may host several; "" when none applies), and the fields follow in
declaration order (nested attrs records become nested arrays). Arrays rather than maps keep
the hot path close to msgpack's raw speed.

Decoding is strict: a field of the wrong type is refused, never coerced, and every failure is a
``ProtocolError`` naming what was wrong.
"""

from __future__ import annotations

import enum
import types
import typing
from collections.abc import Mapping
from typing import Any

import attrs
import cattrs
import msgpack

from dledger_mq.errors import ProtocolError

#: Longest node id, group or topic name accepted from the wire.
MAX_NAME_LENGTH = 255


def strict_structure_hook(expected: type) -> Any:
    """A cattrs structure hook that refuses a value of another type instead of coercing it
    (for configuration files: integers unbounded, their own validators say what fits)."""
    return _strict(expected, bound_ints=False)


#: Every integer field on the wire lies in [MIN_INT, MAX_INT]: -1 is the wire's "none" (the
#: broker picks the queue, no offset yet), and 2^63 - 1 the largest a signed 64-bit field holds.
#: Protocols check tighter bounds of their own where they matter (peer terms and indexes).
MIN_INT = -1
MAX_INT = (1 << 63) - 1


def _strict(expected: type, bound_ints: bool = True) -> Any:
    def structure(value: Any, target: Any) -> Any:
        # bool is an int subclass; a true/false where a number belongs is still garbage.
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            shown = repr(value)
            shown = shown if len(shown) <= 40 else shown[:37] + "..."
            raise TypeError(f"expected {expected.__name__}, got {type(value).__name__} {shown}")
        if bound_ints and isinstance(value, int) and not MIN_INT <= value <= MAX_INT:
            raise TypeError(f"{value} is outside [{MIN_INT}, {MAX_INT}]")
        if target is not expected and isinstance(target, type) and issubclass(target, enum.Enum):
            # An IntEnum (an entry's kind) reaches this hook as an int subclass: it must come
            # out as its member, or `kind is EntryKind.NORMAL` is silently false.
            return target(value)  # ValueError for a value outside the enum
        return value

    return structure


def make_converter() -> cattrs.Converter:
    converter = cattrs.Converter(unstruct_strat=cattrs.UnstructureStrategy.AS_TUPLE)
    for kind in (int, str, bytes, bool, float):
        converter.register_structure_hook(kind, _strict(kind))
    # cattrs's generic as-tuple (un)structuring looks every field's hook up on every call
    # (about 25 us for a one-message send reply); these resolve them once per class.
    converter.register_structure_hook_factory(
        attrs.has, lambda kind: _tuple_structurer(converter, kind)
    )
    converter.register_structure_hook_func(_is_scalar_union, _structure_scalar_union)
    converter.register_unstructure_hook_factory(
        attrs.has, lambda kind: _tuple_unstructurer(converter, kind)
    )
    return converter


_SCALARS = (str, int, bool, float, bytes, type(None))


def _is_scalar_union(target: Any) -> bool:
    """A union of two or more scalar types besides None (``str | int | bool | None``)."""
    members = typing.get_args(target)
    return (
        typing.get_origin(target) in (typing.Union, types.UnionType)
        and all(member in _SCALARS for member in members)
        and len([member for member in members if member is not type(None)]) >= 2
    )


def _structure_scalar_union(value: Any, target: Any) -> Any:
    if type(value) not in typing.get_args(target):
        raise TypeError(f"expected one of {target}, got {type(value).__name__} {value!r:.40}")
    return value


def _tuple_structurer(converter: cattrs.Converter, kind: type) -> Any:
    fields = attrs.fields(kind)
    hooks: list[tuple[Any, Any]] = []

    def structure(values: Any, _: Any) -> Any:
        if not hooks:  # resolved on first use: a class may refer to itself or to later ones
            attrs.resolve_types(kind)
            hooks.extend((converter.get_structure_hook(f.type), f.type) for f in fields)
        if not isinstance(values, list | tuple) or len(values) != len(fields):
            raise TypeError(f"{kind.__name__} needs {len(fields)} fields, got {values!r:.60}")
        return kind(*[hook(value, t) for (hook, t), value in zip(hooks, values, strict=True)])

    return structure


def _tuple_unstructurer(converter: cattrs.Converter, kind: type) -> Any:
    fields = attrs.fields(kind)
    hooks: list[tuple[str, Any]] = []

    def unstructure(instance: Any) -> list[Any]:
        if not hooks:
            attrs.resolve_types(kind)
            hooks.extend((f.name, converter.get_unstructure_hook(f.type)) for f in fields)
        return [hook(getattr(instance, name)) for name, hook in hooks]

    return unstructure


@attrs.frozen
class Decoded:
    request_id: int
    group: str
    message: Any


class Codec:
    """Encodes and decodes the message classes of one protocol, each under a fixed tag."""

    def __init__(self, types: Mapping[int, type]) -> None:
        self.converter = make_converter()
        self.type_by_tag = dict(types)
        self.tag_by_type = {kind: tag for tag, kind in types.items()}
        for kind in types.values():
            _resolve(kind)
        self._field_counts = {kind: len(attrs.fields(kind)) for kind in types.values()}
        # The hooks of each class, looked up once rather than dispatched on every message.
        self._structure = {kind: self.converter.get_structure_hook(kind) for kind in types.values()}
        self._unstructure = {
            kind: self.converter.get_unstructure_hook(kind) for kind in types.values()
        }

    def encode(self, message: Any, request_id: int = 0, group: str = "") -> bytes:
        kind = type(message)
        tag = self.tag_by_type[kind]
        fields = self._unstructure[kind](message)
        payload: bytes = msgpack.packb([tag, request_id, group, *fields], use_bin_type=True)
        return payload

    def decode(self, payload: bytes) -> Decoded:
        """Raises ``ProtocolError`` on anything malformed."""
        try:
            array = msgpack.unpackb(payload, raw=False, use_list=True, strict_map_key=True)
        except Exception as error:  # msgpack raises several unrelated types
            raise ProtocolError(f"undecodable msgpack payload: {error}") from None
        if not isinstance(array, list) or len(array) < 3:
            raise ProtocolError("a payload must be an array [tag, request_id, group, fields...]")
        tag, request_id, group, *fields = array
        kind = self.type_by_tag.get(tag) if isinstance(tag, int) else None
        if kind is None:
            raise ProtocolError(f"unknown message tag {tag!r}")
        if not isinstance(request_id, int) or isinstance(request_id, bool):
            raise ProtocolError(f"request id must be an integer, got {request_id!r}")
        if not isinstance(group, str) or len(group) > MAX_NAME_LENGTH:
            raise ProtocolError(f"group must be a name of at most {MAX_NAME_LENGTH} characters")
        if len(fields) != self._field_counts[kind]:
            raise ProtocolError(
                f"{kind.__name__} has {self._field_counts[kind]} fields, got {len(fields)}"
            )
        try:
            message: Any = self._structure[kind](fields, kind)
        except Exception as error:  # cattrs wraps field errors in exception groups
            raise ProtocolError(f"malformed {kind.__name__}: {_describe(error)}") from None
        return Decoded(request_id, group, message)


def _resolve(kind: Any) -> None:
    """Turn string annotations into types, down through nested records such as entries."""
    if attrs.has(kind):
        attrs.resolve_types(kind)
        for field in attrs.fields(kind):
            _resolve(field.type)
    for argument in typing.get_args(kind):
        _resolve(argument)


def _describe(error: BaseException) -> str:
    if isinstance(error, BaseExceptionGroup):
        return "; ".join(_describe(inner) for inner in error.exceptions)
    return str(error) or type(error).__name__
