"""pyanom.settings: every setting of every registered detector declared with a type and a help line,
`pyanom info --json` in its documented shape, values checked and parsed by their declarations."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from typing import Optional, Tuple

import pytest

import pyanom
from pyanom.registry import describe, detector_class, list_detectors
from pyanom.settings import Settings, SettingError, Size, describe as describe_settings, parse_setting, setting


@pytest.mark.parametrize("name", [e.name for e in list_detectors()])
def test_every_setting_of_every_registered_detector_has_a_type_and_help(name):
    """A new setting without help, or of a type the declarations cannot say, fails here."""
    info = describe(name)
    assert info["name"] == name and info["supervision"] in ("unsupervised", "few-shot", "supervised")
    names = [s["name"] for s in info["settings"]]
    assert len(names) == len(set(names)) and names
    for s in info["settings"]:
        assert set(s) <= {"name", "type", "default", "help", "bounds", "interval", "choices"}, s
        assert s["type"] and s["help"].strip() and "\n" not in s["help"], s
        assert json.loads(json.dumps(s["default"])) == s["default"]
        if "choices" in s:
            assert s["default"] in s["choices"] or s["default"] is None
    cls = detector_class(name)
    assert cls.Config() == cls.Config(**{s["name"]: s["default"] for s in info["settings"]})


def test_info_json_prints_the_documented_shape():
    out = subprocess.run([sys.executable, "-m", "pyanom.cli", "info", "patchcore", "--json"], capture_output=True,
                         text=True, check=True).stdout
    info = json.loads(out)
    assert list(info) == ["name", "supervision", "settings"]
    ratio = next(s for s in info["settings"] if s["name"] == "coreset_ratio")
    assert ratio["type"] == "float" and ratio["default"] == 0.1 and ratio["bounds"] == [0, 1]
    assert ratio["interval"] == "(0, 1]" and ratio["help"]
    mode = next(s for s in info["settings"] if s["name"] == "coreset_mode")
    assert mode["choices"] == ["exact", "sharded", "auto"]


def test_training_settings_are_declared_once_by_the_engine():
    from pyanom.training import TrainingSettings

    for name in ("autoencoder", "fanogan", "siamese", "segdec"):
        config = detector_class(name).Config
        assert issubclass(config, TrainingSettings)
        for field in ("seed", "checkpoint", "checkpoint_every"):
            assert field not in config.__dict__.get("__annotations__", {}), (name, field)


@dataclass
class _Example(Settings):
    ratio: float = setting(0.5, "a share", bounds=(0, 1), open="low")
    size: Optional[Size] = setting(256, "a size")
    layers: Tuple[str, ...] = setting(("a", "b"), "names")
    mode: str = setting("x", "a choice", choices=("x", "y"))
    flag: bool = setting(False, "a flag")
    betas: Tuple[float, float] = setting((0.5, 0.9), "two numbers", bounds=(0, 1), open="high")

    def validate(self):
        if self.mode == "y" and self.flag:
            raise ValueError("mode y cannot take flag")


@pytest.mark.parametrize("key, text, value", [
    ("ratio", "0.25", 0.25), ("ratio", "1", 1.0), ("size", "320", 320), ("size", "[256, 320]", (256, 320)),
    ("size", "256,320", (256, 320)), ("size", "null", None), ("layers", "p,q", ("p", "q")),
    ("layers", '["p"]', ("p",)), ("mode", "y", "y"), ("flag", "yes", True), ("flag", "false", False),
    ("betas", "[0, 0.5]", (0.0, 0.5)),
])
def test_set_text_is_parsed_by_the_declared_type(key, text, value):
    assert parse_setting(_Example, key, text) == value


@pytest.mark.parametrize("key, text, message", [
    ("ratio", "0", "ratio must be a float in (0, 1], got 0"),
    ("ratio", "nan", "ratio must be a float in (0, 1], got 'nan'"),
    ("size", "0", "size must be a positive int | [height, width] | null, got 0"),
    ("size", "[1, 2, 3]", "size must be a positive int | [height, width] | null, got [1, 2, 3]"),
    ("mode", "z", "mode must be one of x, y, got 'z'"),
    ("flag", "2", "flag must be a bool, got '2'"),
    ("betas", "[0.5, 1]", "betas must be a [float, float] in [0, 1), got [0.5, 1]"),
    ("nope", "1", "--set nope: no such setting; known: betas, flag, layers, mode, ratio, size"),
])
def test_bad_values_name_the_setting_its_type_and_bounds(key, text, message):
    with pytest.raises(SettingError) as err:
        parse_setting(_Example, key, text)
    assert str(err.value) == message


def test_values_from_code_are_checked_and_normalised_and_rules_across_settings_hold():
    assert _Example(size=[3, 4], layers=["x"]).size == (3, 4)
    with pytest.raises(SettingError, match="ratio must be a float"):
        _Example(ratio="0.5")
    with pytest.raises(SettingError, match="mode y cannot take flag"):
        _Example(mode="y", flag=True)
    with pytest.raises(SettingError, match="ratio must be"):
        pyanom.create("patchcore", coreset_ratio=1.5)


def test_a_field_without_a_declaration_is_refused_by_name():
    @dataclass
    class Bare(Settings):
        x: int = 3

    with pytest.raises(TypeError, match=r"Bare.x is not declared with pyanom.settings.setting\(\)"):
        describe_settings(Bare)
