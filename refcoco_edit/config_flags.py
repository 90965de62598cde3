"""The command-line side of :mod:`refcoco_edit.config`: the argparse flags of a config class's
settings, and the record of which flags were given (so the command line wins over a YAML file
only where it was used). :func:`refcoco_edit.config.add_flags` and
:func:`refcoco_edit.config.from_namespace` are the entry points; this module knows a setting
only through :class:`FlagSetting` (what :class:`refcoco_edit.config.Setting` provides).

Core layer: imports nothing of refcoco_edit.
"""
from __future__ import annotations

import argparse
from typing import Any, Dict, Iterable, List, Mapping, Optional, Protocol, Tuple

GIVEN = "_config_given"
"""Namespace attribute: the dests given on the command line (the rest are defaults)."""

NONE_WORDS = ("none", "null", "")
"""Words an optional number reads as None (``all`` too for integers)."""


class FlagSetting(Protocol):
    """What the flags need of a setting (:class:`refcoco_edit.config.Setting`)."""

    names: Tuple[str, ...]
    kind: str
    optional: bool

    @property
    def dotted(self) -> str: ...

    @property
    def meta(self) -> Mapping[str, Any]: ...

    @property
    def help(self) -> str: ...

    @property
    def choices(self) -> Optional[Any]: ...

    @property
    def required(self) -> bool: ...

    @property
    def flag_name(self) -> str: ...

    def default(self) -> Any: ...


# ----------------------------------------------------------------------------------------------
# command-line values
# ----------------------------------------------------------------------------------------------

def parse_csv(text: Any) -> List[str]:
    """``"a, b,c"`` -> ``["a", "b", "c"]``."""
    return [t.strip() for t in str(text).split(",") if t.strip()]


# the argparse ``type=`` of optional numbers; argparse names them in its errors ("invalid
# _optional_int value"), so they keep these names
def _optional_int(text: str) -> Optional[int]:
    if str(text).strip().lower() in NONE_WORDS + ("all",):
        return None
    return int(text)


def _optional_float(text: str) -> Optional[float]:
    if str(text).strip().lower() in NONE_WORDS:
        return None
    return float(text)


# ----------------------------------------------------------------------------------------------
# argparse
# ----------------------------------------------------------------------------------------------

def _mark(namespace: argparse.Namespace, dest: str) -> None:
    """Record ``dest`` as given on the command line (in the namespace's :data:`GIVEN` set)."""
    given = getattr(namespace, GIVEN, None)
    if not isinstance(given, set):  # the parser's default is an empty tuple: a new set per parse
        given = set(given or ())
        setattr(namespace, GIVEN, given)
    given.add(dest)


class _Store(argparse.Action):
    """``store``, marking the setting given."""

    def __call__(self, parser, namespace, values, option_string=None):  # noqa: D401 - argparse API
        setattr(namespace, self.dest, values)
        _mark(namespace, self.dest)


class _Append(argparse.Action):
    """``append`` (a mapping's repeatable ``KEY=VALUE``), marking the setting given."""

    def __call__(self, parser, namespace, values, option_string=None):
        items = list(getattr(namespace, self.dest, None) or [])
        items.append(values)
        setattr(namespace, self.dest, items)
        _mark(namespace, self.dest)


class _Bool(argparse.BooleanOptionalAction):
    """``--x`` / ``--no-x``, marking the setting given."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        help_ = kw.get("help")
        super().__init__(*a, **kw)
        self.help = help_  # the default is already in the help text (3.9-3.13 would add it again)

    def __call__(self, parser, namespace, values, option_string=None):
        super().__call__(parser, namespace, values, option_string)
        _mark(namespace, self.dest)


def _help(s: FlagSetting) -> str:
    """The flag's help: the setting's, with its default when the text does not give it."""
    h = s.help
    d = s.default()
    if "default" in h or d is None or d == "" or s.kind == "mapping" or s.required:
        return h.replace("%", "%%")
    shown = ",".join(map(str, d)) if isinstance(d, list) else d
    return f"{h} (default: {shown})".replace("%", "%%")


def add_setting_flags(parser: argparse.ArgumentParser, settings: Iterable[FlagSetting], style: str = "flags") -> None:
    """The flags of ``settings`` (see :func:`refcoco_edit.config.add_flags`, which passes every
    setting of a config class)."""
    parser.set_defaults(**{GIVEN: ()})
    for s in settings:
        if s.meta.get("cli", True) is False:
            continue
        kw: Dict[str, Any] = {"dest": s.dotted, "default": s.default(), "help": _help(s)}
        if style == "tokens":
            opts = ["--" + n for n in s.names]
            if s.kind == "mapping":
                opts, kw["metavar"] = [o + ".KEY" for o in opts], "VALUE"
            elif s.kind == "bool":
                kw["metavar"] = "{true,false}"
            parser.add_argument(*opts, action=_Store, choices=s.choices, **kw)
            continue
        flags = [n.replace("_", "-") for n in s.names[1:]] + [s.flag_name]
        opts = list(dict.fromkeys("--" + f for f in flags))
        if s.meta.get("metavar"):
            kw["metavar"] = s.meta["metavar"]
        if s.kind == "bool":
            parser.add_argument(*opts, action=_Bool, **kw)
            continue
        if s.kind == "mapping":
            parser.add_argument(*opts, action=_Append, **{"metavar": "KEY=VALUE", **kw, "default": []})
            continue
        conv = {"list": parse_csv, "int": _optional_int if s.optional else int,
                "float": _optional_float if s.optional else float}.get(s.kind)
        if conv is not None:
            kw["type"] = conv
        if s.choices:
            kw["choices"] = s.choices
        parser.add_argument(*opts, action=_Store, **kw)

