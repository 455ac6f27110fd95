"""Settings declared once: each is a typed dataclass field carrying its default, a one-line help and
its bounds or choices. One validator reads the declarations; `--set KEY=VALUE` parses by the declared
type; `pyanom info D --json` and the docs' settings reference print them. A detector's `Config` is a
`Settings` subclass, so a third-party detector gets all of this by declaring its fields::

    @dataclass
    class MyConfig(Settings):
        threshold_quantile: float = setting(0.99, "quantile of normal scores", bounds=(0, 1))

Dataclass fields with metadata rather than pydantic: the core stays free of a dependency that only
the service brings, and configs stay plain dataclasses, saved as JSON in the model file.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable, Tuple, Union

__all__ = ["Settings", "SettingError", "Size", "describe", "parse_setting", "parse_settings", "setting"]

Size = Union[int, Tuple[int, int]]  # an int (a square) or [height, width]

_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")
_UNIONS = (Union, getattr(types, "UnionType", Union))  # X | Y is types.UnionType from Python 3.10


class SettingError(ValueError):
    """A setting that its declaration refuses; the message names it, its type and bounds."""


def setting(default: Any, help: str, *, bounds: tuple | None = None, choices: tuple | None = None,
            open: str = "", check: Callable[[Any], Any] | None = None) -> Any:
    """A declared setting: a dataclass field with its default, one line of help, and where they
    apply its bounds (low, high), inclusive unless ``open`` names "low", "high" or "both" (None:
    unbounded on that side), or its choices. ``check`` receives the typed value and returns it
    (possibly normalised) or raises ValueError, for rules a type and bounds cannot say (e.g. a size
    a network can take)."""
    if not help or "\n" in help:
        raise ValueError("a setting's help is one non-empty line")
    meta = {"help": help, "bounds": bounds, "choices": choices, "open": open, "check": check}
    if isinstance(default, (list, dict, set)):
        raise TypeError("a setting's default must be immutable (use a tuple)")
    return dataclasses.field(default=default, metadata={"pyanom": meta})


# -- types ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Type:
    """A declared type: its name as `pyanom info` shows it, and how values and text become it."""

    name: str
    convert: Callable[[Any], Any]  # a Python value (from code or JSON) -> the typed value, or ValueError
    parse: Callable[[str], Any]  # command-line text -> a Python value for convert


def _int(v):
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError
    return v


def _float(v):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError
    return float(v)


def _bool(v):
    if not isinstance(v, bool):
        raise ValueError
    return v


def _str(v):
    if not isinstance(v, str):
        raise ValueError
    return v


def _size(v):
    if isinstance(v, (list, tuple)):
        if len(v) != 2:
            raise ValueError
        return tuple(_positive(_int(x)) for x in v)
    return _positive(_int(v))


def _positive(v):
    if v < 1:
        raise ValueError
    return v


def _json_or_text(text: str):
    """JSON where the text is JSON a setting can hold, else the text itself (which the declared type
    then refuses by name): nesting too deep for the parser and integers of more digits than Python
    converts are text too."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # JSONDecodeError, the integer digit limit, deep nesting
        return text


def _parse_bool(text: str):
    low = text.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    return text


def _parse_list(text: str):
    """A JSON list, or comma-separated items ("stride8,stride16", "256,320")."""
    value = _json_or_text(text)
    if isinstance(value, str) and "," in value:
        return tuple(_json_or_text(part.strip()) for part in value.split(","))
    return value


_BASIC = {int: _Type("int", _int, _json_or_text), float: _Type("float", _float, _json_or_text),
          bool: _Type("bool", _bool, _parse_bool), str: _Type("str", _str, lambda t: t)}
_SIZE = _Type("positive int | [height, width]", _size, _parse_list)


def _tuple_of(item: _Type, length: int | None) -> _Type:
    def convert(v):
        if not isinstance(v, (list, tuple)) or (length is not None and len(v) != length):
            raise ValueError
        return tuple(item.convert(x) for x in v)

    name = f"list[{item.name}]" if length is None else "[" + ", ".join([item.name] * length) + "]"
    return _Type(name, convert, _parse_list)


def _nullable(inner: _Type) -> _Type:
    def convert(v):
        return None if v is None else inner.convert(v)

    def parse(text: str):
        return None if text.strip().lower() in ("null", "none") else inner.parse(text)

    return _Type(f"{inner.name} | null", convert, parse)


def _type_of(annotation) -> _Type:
    """The declared type of an annotation: int, float, bool, str, Size, tuples of them, Optional."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in _UNIONS:
        rest = [a for a in args if a is not type(None)]
        if len(rest) < len(args):
            return _nullable(_type_of(Union[tuple(rest)] if len(rest) > 1 else rest[0]))
        if set(rest) == {int, Tuple[int, int]}:
            return _SIZE
    if annotation in _BASIC:
        return _BASIC[annotation]
    if typing.get_origin(annotation) is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return _tuple_of(_type_of(args[0]), None)
        if args and len(set(args)) == 1:
            return _tuple_of(_type_of(args[0]), len(args))
    raise TypeError(f"settings cannot declare the type {annotation!r}: use int, float, bool, str, Size, "
                    "Tuple[T, ...], Tuple[T, T] or Optional[...] of them")


# -- declarations ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Declared:
    name: str
    type: _Type
    default: Any
    help: str
    bounds: tuple | None
    choices: tuple | None
    open: str
    check: Callable | None

    @property
    def interval(self) -> str | None:
        if self.bounds is None:
            return None
        low, high = self.bounds
        left = "(" if self.open in ("low", "both") or low is None else "["
        right = ")" if self.open in ("high", "both") or high is None else "]"
        return f"{left}{'-inf' if low is None else low}, {'inf' if high is None else high}{right}"

    def what(self) -> str:
        """'a float in (0, 1]', 'one of exact, sharded, auto', 'an int | null', ..."""
        kind = self.type.name
        article = "an" if kind[0] in "aeiou" else "a"
        if self.choices is not None:
            extra = " | null" if kind.endswith("| null") else ""
            return "one of " + ", ".join(map(str, self.choices)) + extra
        return f"{article} {kind}" + (f" in {self.interval}" if self.bounds is not None else "")

    def value(self, v):
        """v as the declared type, within bounds and choices, checked; SettingError otherwise."""
        try:
            typed = self.type.convert(v)
        except (ValueError, TypeError):
            raise SettingError(f"{self.name} must be {self.what()}, got {_shown(v)}") from None
        if typed is None:
            return None
        if self.choices is not None and typed not in self.choices:
            raise SettingError(f"{self.name} must be {self.what()}, got {_shown(v)}")
        if self.bounds is not None and not _within(typed, self.bounds, self.open):
            raise SettingError(f"{self.name} must be {self.what()}, got {_shown(v)}")
        if self.check is not None:
            try:
                typed = self.check(typed)
            except ValueError as err:
                said = str(err)
                raise SettingError(said if said.startswith(self.name) else f"{self.name}: {said}") from None
        return typed


def _shown(value, limit: int = 60) -> str:
    """repr(value), its middle cut out when long: an error message stays one readable line."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit // 2]}...{text[-limit // 4:]} ({len(text)} characters)"


def _within(value, bounds, open_: str) -> bool:
    low, high = bounds
    values = value if isinstance(value, tuple) else (value,)
    for v in values:
        if low is not None and (v < low or (v == low and open_ in ("low", "both"))):
            return False
        if high is not None and (v > high or (v == high and open_ in ("high", "both"))):
            return False
    return True


def _declarations(cls) -> list[_Declared]:
    """Every setting of a Settings class, the class's own first, then those of its bases."""
    hints = typing.get_type_hints(cls)
    by_name = {f.name: f for f in dataclasses.fields(cls)}
    order = []
    for klass in cls.__mro__:
        for name in getattr(klass, "__annotations__", {}):
            if name in by_name and name not in order:
                order.append(name)
    out = []
    for name in order:
        f = by_name[name]
        meta = f.metadata.get("pyanom")
        if meta is None:
            raise TypeError(f"{cls.__qualname__}.{name} is not declared with pyanom.settings.setting() "
                            "(a default, one line of help, bounds or choices)")
        out.append(_Declared(name, _type_of(hints[name]), f.default, meta["help"], meta["bounds"],
                             meta["choices"], meta["open"], meta["check"]))
    return out


_CACHE: dict[type, dict[str, _Declared]] = {}


def _declared(cls) -> dict[str, _Declared]:
    if cls not in _CACHE:
        _CACHE[cls] = {d.name: d for d in _declarations(cls)}
    return _CACHE[cls]


@dataclass
class Settings:
    """Base of every detector's Config: each field declared with :func:`setting`. Values are checked
    (and lists turned into tuples) when the object is made; `validate` adds the rules that tie
    several settings together."""

    def __post_init__(self):
        for name, decl in _declared(type(self)).items():
            object.__setattr__(self, name, decl.value(getattr(self, name)))
        try:
            self.validate()
        except SettingError:
            raise
        except ValueError as err:
            raise SettingError(str(err)) from None

    def validate(self) -> None:
        """Rules across settings; raise ValueError with a message naming them."""


def describe(cls) -> list[dict]:
    """Each setting of a Settings class as `pyanom info --json` prints it: name, type, default,
    help, and bounds (with their interval) or choices where they apply."""
    rows = []
    for d in _declared(cls).values():
        row = {"name": d.name, "type": d.type.name, "default": _jsonable(d.default), "help": d.help}
        if d.bounds is not None:
            row["bounds"] = list(d.bounds)
            row["interval"] = d.interval
        if d.choices is not None:
            row["choices"] = list(d.choices)
        rows.append(row)
    return rows


def _jsonable(value):
    return list(_jsonable(v) for v in value) if isinstance(value, tuple) else value


def parse_setting(cls, key: str, text: str):
    """The typed, checked value of ``--set key=text`` for a Settings class; SettingError naming the
    setting, its type and bounds otherwise (before any data is read)."""
    declared = _declared(cls)
    if key not in declared:
        raise SettingError(f"--set {key}: no such setting; known: {', '.join(sorted(declared))}")
    decl = declared[key]
    return decl.value(decl.type.parse(text))


def parse_settings(cls, pairs: list[str]) -> dict:
    """``["key=value", ...]`` (the repeatable `--set`) as typed values by the declarations."""
    out = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise SettingError(f"--set expects key=value, got {pair!r}")
        out[key.strip()] = parse_setting(cls, key.strip(), text.strip())
    return out
