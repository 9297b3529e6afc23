"""Tag expressions: ``*``, one tag, or tags joined by ``||``, whitespace tolerant; a typed error
for anything else; and the tag codes the consume queue filters by."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dledger_mq.broker.tag_filter import (
    MATCH_ALL,
    TagFilter,
    parse_tag_expression,
    tag_code,
)
from dledger_mq.errors import InvalidTagExpression

tags = st.text("abcdefpaidrefunded-_.0123456789", min_size=1, max_size=10)


@pytest.mark.parametrize("expression", ["*", " * ", "", "   "])
def test_star_and_empty_match_every_message(expression: str) -> None:
    tag_filter = parse_tag_expression(expression)
    assert tag_filter is MATCH_ALL
    assert tag_filter.matches("paid")
    assert tag_filter.matches(None)


@pytest.mark.parametrize(
    "expression",
    ["paid || refunded", "paid||refunded", "  refunded ||paid  ", "paid || refunded || paid"],
)
def test_alternatives_match_any_of_their_tags(expression: str) -> None:
    tag_filter = parse_tag_expression(expression)
    assert tag_filter.expression == "paid || refunded"
    assert tag_filter.matches("paid")
    assert tag_filter.matches("refunded")
    assert not tag_filter.matches("created")
    assert not tag_filter.matches(None)  # a message without tags matches only *
    assert not tag_filter.matches("PAID")  # tags are case-sensitive


@pytest.mark.parametrize(
    "expression",
    [
        "paid ||",
        "|| paid",
        "paid |||| refunded",
        "paid | refunded",
        "paid refunded",
        "* || paid",
        "pa*id",
        "x" * 300,
        "a" * 5000,
    ],
)
def test_a_bad_expression_is_refused_with_a_typed_error(expression: str) -> None:
    with pytest.raises(InvalidTagExpression) as refused:
        parse_tag_expression(expression)
    assert refused.value.reason


def test_a_non_string_expression_is_refused() -> None:
    with pytest.raises(InvalidTagExpression):
        parse_tag_expression(None)  # type: ignore[arg-type]


@given(st.lists(tags, min_size=1, max_size=5), st.data())
def test_parsing_is_whitespace_tolerant_and_order_insensitive(
    chosen: list[str], data: st.DataObject
) -> None:
    spaces = st.text(" \t", max_size=2)
    written = "||".join(data.draw(spaces) + tag + data.draw(spaces) for tag in chosen)
    tag_filter = parse_tag_expression(written)
    assert tag_filter == parse_tag_expression(" || ".join(reversed(chosen)))
    assert tag_filter.tags == frozenset(chosen)
    for tag in chosen:
        assert tag_filter.matches(tag)
        assert tag_filter.may_match_code(tag_code(tag))


@given(st.lists(tags, min_size=1, max_size=3), st.one_of(st.none(), tags))
def test_a_code_that_cannot_match_means_the_tag_cannot_match(
    chosen: list[str], message_tags: str | None
) -> None:
    tag_filter = parse_tag_expression(" || ".join(chosen))
    if not tag_filter.may_match_code(tag_code(message_tags)):
        assert not tag_filter.matches(message_tags)


def test_tag_codes_are_stable_across_processes() -> None:
    # CRC-32, not hash(): these values must never change, or stored codes stop matching.
    assert tag_code(None) == 0
    assert tag_code("paid") == 0xFD8EAB38
    assert isinstance(MATCH_ALL, TagFilter)
