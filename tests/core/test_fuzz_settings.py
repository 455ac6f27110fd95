"""`--set KEY=VALUE` parsing (pyanom.settings) under any text: every bundled detector's settings
either take the value (and a Config built from it holds) or refuse it with a SettingError naming
the setting; nothing else escapes (no RecursionError from deep JSON, no bare ValueError from a
huge integer, no TypeError from comparing a string with a bound). Typed values written back as
text parse to themselves."""

from __future__ import annotations

import json

import pytest
from fuzzing import fuzz
from hypothesis import given
from hypothesis import strategies as st

from pyanom.registry import detector_class, list_detectors
from pyanom.settings import SettingError, _declared, parse_setting, parse_settings

CONFIGS = {d.name: detector_class(d.name).Config for d in list_detectors()}
PAIRS = sorted((name, key) for name, cls in CONFIGS.items() for key in _declared(cls))

# Text that looks like what a user types, and text that does not.
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=4), max_leaves=12)
typed_text = st.one_of(
    json_values.map(lambda v: json.dumps(v)),
    st.lists(st.integers(-5, 600) | st.floats(allow_nan=True) | st.text(max_size=4), min_size=1, max_size=4)
    .map(lambda xs: ",".join(map(str, xs))),
    st.sampled_from(["null", "None", "true", "off", "NaN", "-Infinity", "1e999", "0x10", "1_000", " 7 ", "[",
                     "[1,", "{}", '{"a": 1}', "[[[]]]", "\x00", "é", "256,256,256", "-1", "0"]),
    st.text(max_size=30),
)


def _refused_or_valid(cls, key: str, text: str) -> None:
    try:
        value = parse_setting(cls, key, text)
    except SettingError as err:
        assert key in str(err)
        return
    assert _declared(cls)[key].value(value) == value  # a parsed value is a checked value
    try:
        cls(**{key: value})
    except SettingError:  # a rule across settings (e.g. swa_epochs <= seg_epochs)
        pass


@fuzz(scale=10)
@given(pair=st.sampled_from(PAIRS), text=typed_text)
def test_any_text_is_taken_or_refused_by_name(pair, text):
    name, key = pair
    _refused_or_valid(CONFIGS[name], key, text)


@fuzz(scale=5)
@given(pair=st.text(max_size=40))
def test_any_set_argument_is_parsed_or_refused(pair):
    try:
        parse_settings(CONFIGS["patchcore"], [pair])
    except SettingError:
        pass


def _as_text(value) -> str:
    """A typed value as a user would type it."""
    if isinstance(value, tuple):
        return json.dumps(list(value))
    if isinstance(value, str):
        return value
    return json.dumps(value)


@fuzz(scale=5)
@given(pair=st.sampled_from(PAIRS), data=st.data())
def test_valid_values_written_as_text_parse_to_themselves(pair, data):
    name, key = pair
    decl = _declared(CONFIGS[name])[key]
    candidates = st.one_of(st.integers(-3, 2048), st.floats(-3, 2048, allow_nan=False), st.booleans(), st.none(),
                           st.sampled_from(list(decl.choices or ()) or [decl.default]),
                           st.tuples(st.integers(1, 600), st.integers(1, 600)), st.text(max_size=6))
    value = data.draw(candidates)
    try:
        typed = decl.value(value)
    except SettingError:
        return
    if isinstance(typed, str) and typed.strip().lower() in ("null", "none", "true", "false", "yes", "no", "on",
                                                           "off", "1", "0"):
        return  # words the parser reads as null or a bool: a string setting cannot hold them from the command line
    if isinstance(typed, str) and (typed != typed.strip() or "," in typed):
        return
    assert parse_setting(CONFIGS[name], key, _as_text(typed)) == typed


# -- cases the fuzzing found, kept as plain tests -----------------------------------------------------
@pytest.mark.parametrize("text", ["[" * 100_000 + "]" * 100_000, "9" * 5000, "[" + "9" * 5000 + ", 3]"])
def test_pathological_json_is_refused_by_name(text):
    for key in ("image_size", "epochs", "betas", "learning_rate"):
        for cls in CONFIGS.values():
            if key in _declared(cls):
                with pytest.raises(SettingError, match=key):
                    parse_setting(cls, key, text)
