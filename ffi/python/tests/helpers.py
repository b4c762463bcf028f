"""Shared message samples and comparison helpers for the tests."""

import json


def load_ordered(text):
    """json.loads keeping every object as a list of (key, value) pairs, so order counts."""
    return json.loads(text, object_pairs_hook=list)


def assert_same_json(decoded: str, original: str) -> None:
    """The decoded text is the original JSON value: equal as Python values, and with every
    object's members in their original order except each message's top-level members, which
    the engine writes in canonical order (jsonrpc, id, method, params/result/error, extras)."""
    assert json.loads(decoded) == json.loads(original)
    got, want = load_ordered(decoded), load_ordered(original)
    if _is_message(want):
        got, want = [got], [want]
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert sorted(g, key=_key) == sorted(w, key=_key)


def _key(pair):
    return pair[0]


def _is_message(value):
    """A single message as load_ordered returns it: a list of (key, value) tuples."""
    return isinstance(value, list) and all(isinstance(kv, tuple) for kv in value)


BIG = 123456789012345678901234567890

MESSAGES = {
    "initialize": {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-03-26",
            "capabilities": {"roots": {"listChanged": True}, "sampling": {}},
            "clientInfo": {"name": "erlmcp-flow-python", "version": "0.1.0"},
        },
    },
    "initialize_result": {
        "jsonrpc": "2.0",
        "id": 1,
        "result": {
            "protocolVersion": "2025-03-26",
            "capabilities": {"tools": {"listChanged": False}, "resources": {"subscribe": True}},
            "serverInfo": {"name": "server", "version": "1.2.3"},
        },
    },
    "tools_list": {"jsonrpc": "2.0", "id": "req-2", "method": "tools/list", "params": {}},
    "tools_call": {
        "jsonrpc": "2.0",
        "id": 3,
        "method": "tools/call",
        "params": {
            "name": "search",
            "arguments": {
                "query": "rust ctypes",
                "filters": {"lang": ["en", "fr"], "range": {"from": 0, "to": 10}},
                "nested": [[1, [2, [3, {"deep": [None, True, False]}]]]],
                "zeta": 1,
                "alpha": 2,
            },
        },
    },
    "resources_read": {
        "jsonrpc": "2.0",
        "id": 4,
        "result": {
            "contents": [
                {
                    "uri": "file:///big.txt",
                    "mimeType": "text/plain",
                    "text": "".join(f"line {i}: the quick brown fox\n" for i in range(4000)),
                }
            ]
        },
    },
    "progress": {
        "jsonrpc": "2.0",
        "method": "notifications/progress",
        "params": {"progressToken": "tok", "progress": 50, "total": 100},
    },
    "error": {
        "jsonrpc": "2.0",
        "id": 5,
        "error": {"code": -32601, "message": "Method not found", "data": {"method": "nope"}},
    },
    "error_null_id": {
        "jsonrpc": "2.0",
        "id": None,
        "error": {"code": -32700, "message": "Parse error"},
    },
    "unicode": {
        "jsonrpc": "2.0",
        "id": "ünï-😀",
        "method": "échos/读",
        "params": ["héllo ✓ 😀", "\u0000\u001f\"\\/\n\t", "日本語テキスト", "\U0010ffff"],
    },
    "big_integers": {
        "jsonrpc": "2.0",
        "id": BIG,
        "result": {
            "big": BIG,
            "neg": -BIG,
            "u64max": 2**64 - 1,
            "i64min": -(2**63),
            "past_u64": 2**64,
        },
    },
    "floats": {
        "jsonrpc": "2.0",
        "id": 6,
        "result": [0.1, -0.0, 1e-300, 5e-324, 1.7976931348623157e308, 2.5, 1e22, -3.25e-7],
    },
    "extra_members": {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "x",
        "zz_extension": {"b": 1, "a": 2},
        "aa_extension": [1],
    },
}
