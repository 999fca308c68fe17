"""Compact JSON (answers, JWT claims): the direct encoding of flat objects is exactly what json.dumps makes."""

from __future__ import annotations

import json

import pytest


@pytest.mark.parametrize("body", [
    {"access_token": "eyJ.a-b_c.d", "token_type": "Bearer", "expires_in": 300, "scope": "a b"},
    {"error": "invalid_request", "error_description": 'quote " backslash \\ tab \t caf\u00e9 \u2603'},
    {"active": False}, {"n": None}, {"x": 1.5}, {"nested": {"a": [1, 2]}}, {1: "int key"}, {}, [1, "a"],
    {"big": 2**70, "neg": -3, "bool": True},
])
def test_answers_are_encoded_as_json_dumps_would(body):
    from keys.compact_json import dumps

    assert dumps(body) == json.dumps(body, separators=(",", ":"))
