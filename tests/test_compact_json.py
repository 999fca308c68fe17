"""Compact JSON (answers, JWT claims): what tessera.keys.compact_json writes is what json.dumps writes
without whitespace and with UTF-8 in place of \\u escapes, for any JSON value."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings, strategies as st


def _reference(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


@pytest.mark.parametrize("body", [
    {"access_token": "eyJ.a-b_c.d", "token_type": "Bearer", "expires_in": 300, "scope": "a b"},
    {"error": "invalid_request", "error_description": 'quote " backslash \\ tab \t nul \x00 del \x7f caf\u00e9 \u2603 \U0001f600 \u2028'},
    {"active": False}, {"n": None}, {"x": 1.5}, {"nested": {"a": [1, 2]}}, {}, [1, "a"],
    {"bool": True, "neg": -3, "max": 2**63 - 1},
    # What orjson refuses goes through the json module, with the same output.
    {1: "int key"}, {"big": 2**70},
])
def test_answers_are_encoded_as_json_dumps_would(body):
    from tessera.keys.compact_json import dumps

    assert dumps(body) == _reference(body)


# Lone surrogates cannot be written as UTF-8 at all (and never reach an answer: forms are decoded
# strictly); every other character can.
_characters = st.characters(blacklist_categories=("Cs",))
_text = st.text(alphabet=_characters)
_scalars = st.none() | st.booleans() | st.integers(min_value=-(2**80), max_value=2**80) | _text
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.text(alphabet=_characters, max_size=8), inner, max_size=4), max_leaves=12)


@settings(max_examples=1500, deadline=None)
@given(_values)
def test_any_json_value_is_encoded_as_json_dumps_would(value):
    from tessera.keys.compact_json import dumps

    encoded = dumps(value)
    assert encoded == _reference(value)
    assert json.loads(encoded) == value


@settings(max_examples=500, deadline=None)
@given(st.recursive(_scalars | st.floats(allow_nan=False, allow_infinity=False), lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(_text, inner, max_size=4), max_leaves=8))
def test_floats_round_trip(value):
    """Floats may be spelt differently (orjson writes 1e-7 where json writes 1e-07); the value is the same."""
    from tessera.keys.compact_json import dumps

    assert json.loads(dumps(value)) == value
