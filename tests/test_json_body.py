"""The one JSON reader of request bodies and WebSocket messages (chatproject.json_body)."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatproject.errors import ApiError
from chatproject.json_body import MAX_DEPTH, nesting_depth_exceeds, parse_json


def nested(depth: int, inner: str = "1") -> str:
    return "[" * depth + inner + "]" * depth


def refusal(raw) -> ApiError:
    with pytest.raises(ApiError) as caught:
        parse_json(raw)
    assert caught.value.code == "VALIDATION_ERROR"
    return caught.value


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 1_000, 10_000, 100_000])
def test_deep_nesting_is_refused_before_parsing(depth):
    error = refusal(nested(depth).encode())
    assert "nests more than" in error.message


def test_nesting_up_to_the_limit_parses():
    assert parse_json(nested(MAX_DEPTH)) == json.loads(nested(MAX_DEPTH))


def test_brackets_inside_strings_are_not_nesting():
    text = json.dumps({"content": "[" * 5000 + '\\"{' * 100, "n": [[1]]})
    assert parse_json(text)["n"] == [[1]]


def test_objects_count_as_nesting():
    assert nesting_depth_exceeds(('{"a":' * 70 + "1" + "}" * 70).encode())


# Strings full of what the scan must tell apart from structure: brackets, quotes, escapes.
TRICKY_TEXT = st.text(alphabet='[]{}"\\/ab\n', max_size=6) | st.text(max_size=4)


def json_values():
    leaves = st.none() | st.booleans() | st.integers() | TRICKY_TEXT
    return st.recursive(
        leaves,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TRICKY_TEXT, inner),
        max_leaves=30,
    )


def depth_of(value) -> int:
    if isinstance(value, list):
        return 1 + max((depth_of(item) for item in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth_of(item) for item in value.values()), default=0)
    return 0


@settings(max_examples=500)
@given(json_values(), st.integers(min_value=0, max_value=8), st.booleans())
def test_the_scan_finds_the_parsed_depth(value, limit, ascii_only):
    raw = json.dumps(value, ensure_ascii=ascii_only).encode()
    assert nesting_depth_exceeds(raw, limit) == (depth_of(value) > limit)


def test_closing_brackets_in_keys_do_not_hide_nesting():
    assert nesting_depth_exceeds(json.dumps({"]": [[]]}).encode(), 2)
    assert nesting_depth_exceeds(json.dumps({"]]]]": {"a": {"b": []}}}).encode(), 3)


@pytest.mark.parametrize(
    "raw",
    [
        '{"content": "a\\u0000b"}',
        '{"meta": {"deep": ["x", "\\u0000"]}}',
        '{"content": "\\ud800"}',
        '{"content": "\\udfff tail"}',
        '{"ke\\u0000y": 1}',
        b'{"content": "\xed\xa0\x80"}',  # a surrogate encoded as UTF-8
    ],
)
def test_nul_and_lone_surrogates_are_refused_with_the_field(raw):
    error = refusal(raw)
    assert error.details and "NUL" in next(iter(error.details.values()))[0]


def test_the_refused_field_is_named():
    error = refusal('{"messages": [{"content": "ok"}, {"content": "\\u0000"}]}')
    assert list(error.details) == ["messages[1].content"]


def test_paired_surrogates_and_escaped_backslashes_are_fine():
    assert parse_json('{"a": "\\ud83d\\ude00", "b": "\\\\u0000"}') == {"a": "😀", "b": "\\u0000"}


@pytest.mark.parametrize("raw", ["NaN", "[Infinity]", '{"t": -Infinity}', "1e400", "[-1e999]"])
def test_numbers_that_are_not_finite_are_refused(raw):
    assert "not valid JSON" in refusal(raw).message


def test_huge_integers_parse_as_integers():
    assert parse_json(str(2**70)) == 2**70


def test_integers_past_pythons_digit_limit_are_a_client_error():
    refusal("1" * 5000)


def test_invalid_utf8_is_a_client_error():
    refusal(b'{"a": "\xff"}')
