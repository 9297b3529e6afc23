"""The CommitLog's terms as runs: the same answers as one term per entry, through every edit."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dledger_mq.raft.storage.term_runs import TermRuns

_EDITS = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.lists(st.integers(0, 3), min_size=1, max_size=6)),
        st.tuples(st.just("truncate"), st.integers(0, 30)),
        st.tuples(st.just("drop"), st.integers(0, 30)),
    ),
    max_size=30,
)


@given(_EDITS)
def test_runs_answer_as_a_term_per_entry_would(edits: list[tuple[str, object]]) -> None:
    runs = TermRuns()
    first, terms = 1, []  # the model: entries first, first + 1, ... with these terms
    for kind, argument in edits:
        if kind == "append":
            assert isinstance(argument, list)
            bumped = [max(terms[-1] if terms else 0, t) for t in sorted(argument)]
            runs.extend(first + len(terms), bumped)
            terms += bumped
        elif kind == "truncate":
            assert isinstance(argument, int)
            cut = max(first, min(first + len(terms), first + argument))
            runs.truncate(cut)
            del terms[cut - first :]
        else:
            assert isinstance(argument, int)
            if not terms:
                continue
            index = first + min(argument, len(terms) - 1)
            runs.drop_before(index)
            del terms[: index - first]
            first = index
        for offset, term in enumerate(terms):
            assert runs.term(first + offset) == term
        assert runs.terms(first, first + len(terms)) == terms
        assert len(runs) <= len(set(terms)) + 1
