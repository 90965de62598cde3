"""One configuration system for build, score and train: each setting is declared once.

A *config class* is a dataclass whose fields are settings. A field's metadata (written with
:func:`setting` / :func:`section`) says everything the rest of the toolkit needs, so one
declaration gives the command-line flags, the YAML keys, the merge (defaults < YAML file <
command line: the command line wins), the type checks and the plain-dict dump::

    @dataclass
    class LLMSettings:
        model: Optional[str] = setting(None, "the LLM (OpenAI-compatible)")
        temperature: float = setting(0.7, "sampling temperature")
        timeout: float = setting(60.0, "seconds per request", runtime=True)

    @dataclass
    class Config:
        seed: int = setting(0, "global seed")
        edit_types: List[str] = setting(["replace", "remove"], "edit types, comma separated")
        llm: LLMSettings = section(LLMSettings, "the LLM rephraser", flat_prefix="llm_")

``llm.temperature`` is then addressed as

* YAML: ``llm: {temperature: 0.5}``, ``llm.temperature: 0.5`` or (the flat alias made by
  ``flat_prefix``) ``llm_temperature: 0.5``; dashes and underscores are the same;
* flags: ``--llm-temperature 0.5`` and ``--llm.temperature 0.5``.

Flat aliases come from a section's ``flat_prefix`` (prefixes along the path are concatenated; a
section without one gives its fields no flat names) or from a field's ``aliases`` (absolute
top-level names, e.g. ``aliases=("pbe_model",)`` on the ``model`` field of a ``pbe`` section).

Kinds come from the annotation: ``bool`` (``--x`` / ``--no-x``), ``int``, ``float`` (YAML's
``2e-4`` string is read as the float it means), ``str``, ``List[str]`` (a YAML list or a
comma-separated string), ``Optional[...]`` (``none``/``null``; ``all`` too for integers),
``Dict[str, Any]`` (a mapping: YAML mapping, dotted keys into it ``model.num_heads: 4``, and a
repeatable ``--flag KEY=VALUE``; ``schema=`` names a dataclass whose fields are its only keys),
``Any`` (a YAML value as is), and a dataclass (a :func:`section`).

Metadata keys: ``help``, ``choices``, ``runtime`` (does not change outputs: left out of
``to_dict(cfg, runtime=False)``, e.g. for fingerprints), ``aliases``, ``flag`` (the flag's own
spelling, e.g. ``"editor-arg"``), ``metavar``, ``schema``, ``cli=False`` (YAML only); any other
key (e.g. ``diffusion=True``) is kept for the owner's use.

The argparse flags themselves (actions that record which flags were given, help texts) live in
:mod:`refcoco_edit.config_flags`; :func:`add_flags` and :func:`from_namespace` are their entry points.

Core layer: imports nothing from pipelines / benchmark / annotation / cli; yaml is imported lazily.
"""
from __future__ import annotations

import argparse
import collections.abc
import copy
import dataclasses
import functools
import importlib
import re
import typing
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from .config_flags import GIVEN, NONE_WORDS, add_setting_flags, parse_csv
from .errors import InputError
from .suggest import did_you_mean

__all__ = [
    "UsageError", "setting", "section", "Setting", "settings_of", "add_flags", "read_file", "read_mapping",
    "read_overrides", "from_namespace", "merge", "build", "make", "to_dict", "parse_key_values", "parse_csv",
]

_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


class UsageError(InputError, ValueError):
    """Bad usage or an unusable setting: the CLI stops with exit code 2 and this one-line message."""


# ----------------------------------------------------------------------------------------------
# declaring settings
# ----------------------------------------------------------------------------------------------

def setting(default: Any = dataclasses.MISSING, help: str = "", **meta: Any) -> Any:
    """A settings field: its default (lists and dicts are copied per instance), its help, and
    metadata (see the module docstring). No default: a required setting."""
    md = dict(help=help, **meta)
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=functools.partial(copy.deepcopy, default), metadata=md)
    return dataclasses.field(default=default, metadata=md)


def section(cls: type, help: str = "", flat_prefix: Optional[str] = None, **meta: Any) -> Any:
    """A nested section: a field holding a settings dataclass ``cls`` (default: ``cls()``).
    ``flat_prefix``: each field ``x`` of the section is also the top-level setting
    ``<flat_prefix>x`` (``"llm_"`` gives ``llm_model`` / ``--llm-model``); ``""`` keeps the
    field names flat; None (default): only the nested and dotted forms."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"section({cls!r}): a section is a dataclass")
    return dataclasses.field(default_factory=cls, metadata=dict(help=help, section=cls, flat_prefix=flat_prefix, **meta))


@dataclasses.dataclass(frozen=True)
class Setting:
    """One addressable leaf setting of a config class (sections are walked into)."""

    path: Tuple[str, ...]          # field names from the root: ("llm", "model")
    field: dataclasses.Field
    kind: str                      # bool | int | float | str | list | mapping | any
    optional: bool
    names: Tuple[str, ...]         # accepted keys (underscored): the dotted path first, then flat aliases

    dotted = property(lambda self: ".".join(self.path))
    meta = property(lambda self: self.field.metadata)
    help = property(lambda self: str(self.meta.get("help", "")))
    choices = property(lambda self: self.meta.get("choices"))
    required = property(lambda self: self.field.default is dataclasses.MISSING
                        and self.field.default_factory is dataclasses.MISSING)

    def default(self) -> Any:
        if self.field.default_factory is not dataclasses.MISSING:
            return self.field.default_factory()
        return None if self.field.default is dataclasses.MISSING else self.field.default

    @property
    def flag_name(self) -> str:
        """The name its main flag spells (``llm.json_mode`` -> ``--llm.json-mode``)."""
        if self.meta.get("flag"):
            return str(self.meta["flag"]).lstrip("-")
        return ".".join(p.replace("_", "-") for p in self.path)


def _type_kind(tp: Any) -> Tuple[str, bool]:
    """(kind, optional) of a resolved annotation."""
    optional = False
    origin = typing.get_origin(tp)
    if origin is Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) < len(typing.get_args(tp))
        tp = args[0] if len(args) == 1 else Any
        origin = typing.get_origin(tp)
    if tp is bool:
        return "bool", optional
    if tp is int:
        return "int", optional
    if tp is float:
        return "float", optional
    if tp is str:
        return "str", optional
    if tp in (list, tuple) or origin in (list, tuple, collections.abc.Sequence):
        return "list", optional
    if tp is dict or origin in (dict, collections.abc.Mapping):
        return "mapping", optional
    return "any", optional


def _string_kind(t: str) -> Tuple[str, bool]:
    """(kind, optional) from an annotation string, when it cannot be resolved."""
    t = t.replace("typing.", "").replace(" ", "")
    optional = t.startswith("Optional[") or "None" in t
    inner = t[len("Optional["):-1] if t.startswith("Optional[") else t
    for prefix, kind in (("bool", "bool"), ("int", "int"), ("float", "float"), ("str", "str"), ("List", "list"),
                         ("list", "list"), ("Tuple", "list"), ("Sequence", "list"), ("Dict", "mapping"),
                         ("dict", "mapping"), ("Mapping", "mapping")):
        if inner.startswith(prefix):
            return kind, optional
    return "any", optional


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> Dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except (NameError, TypeError, AttributeError):  # an annotation that does not resolve: read the strings
        return {}


@functools.lru_cache(maxsize=None)
def settings_of(cls: type) -> Tuple[Setting, ...]:
    """Every leaf setting of ``cls``, sections walked into, in declaration order. Two settings
    claiming one name is a declaration error (TypeError)."""
    out: List[Setting] = []
    _walk(cls, (), "", out)
    seen: Dict[str, str] = {}
    sections = set(_section_paths(cls))
    for s in out:
        for n in s.names:
            if n in seen or (n in sections and n != s.dotted):
                raise TypeError(f"{cls.__name__}: the setting name {n!r} is claimed twice ({seen.get(n, n)}, {s.dotted})")
            seen[n] = s.dotted
    return tuple(out)


def _section_cls(cls: type, f: dataclasses.Field) -> Optional[type]:
    """The settings dataclass of a section field (declared with :func:`section` or annotated)."""
    sec = f.metadata.get("section") or _hints(cls).get(f.name)
    return sec if isinstance(sec, type) and dataclasses.is_dataclass(sec) else None


def _walk(cls: type, prefix: Tuple[str, ...], flat: Optional[str], out: List[Setting]) -> None:
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        path = prefix + (f.name,)
        sec = _section_cls(cls, f)
        if sec is not None:
            fp = f.metadata.get("flat_prefix")
            _walk(sec, path, None if flat is None or fp is None else flat + fp, out)
            continue
        kind, optional = _type_kind(hints[f.name]) if f.name in hints else _string_kind(str(f.type))
        names = [".".join(path)]
        if flat is not None and prefix:
            names.append(flat + f.name)
        names += [str(a).replace("-", "_") for a in f.metadata.get("aliases", ())]
        out.append(Setting(path, f, kind, optional, tuple(dict.fromkeys(names))))


def _section_paths(cls: type, prefix: str = "") -> Iterable[str]:
    for f in dataclasses.fields(cls):
        sec = _section_cls(cls, f)
        if sec is not None:
            yield prefix + f.name
            yield from _section_paths(sec, prefix + f.name + ".")


@functools.lru_cache(maxsize=None)
def _index(cls: type) -> Dict[str, Setting]:
    return {n: s for s in settings_of(cls) for n in s.names}


# ----------------------------------------------------------------------------------------------
# values: parsing and checking
# ----------------------------------------------------------------------------------------------

def _yaml_scalar(text: str) -> Any:
    """A command-line value read as YAML (numbers, true/false, null, [lists], {maps}); text that
    is not valid YAML stays text; ``2e-4`` is a float."""
    import yaml

    try:
        v = yaml.safe_load(text) if str(text).strip() else ""
    except yaml.YAMLError:
        return text
    if not isinstance(v, (str, int, float, bool, list, dict, type(None))):
        return text  # dates and other YAML types: keep the text
    return _fix_float(v)


def _fix_float(v: Any) -> Any:
    """YAML 1.1 reads ``2e-4`` (no dot) as a string; take it as the float it means."""
    return float(v) if isinstance(v, str) and _FLOAT.match(v) else v


def parse_key_values(items: Optional[Iterable[str]], flag: str = "--option") -> Dict[str, Any]:
    """``["steps=20", "guidance=7.5", "name=x"]`` -> {"steps": 20, "guidance": 7.5, "name": "x"}
    (values read as YAML scalars: numbers, true/false, null; anything else stays a string).
    InputError for an item that is not ``key=value``."""
    out: Dict[str, Any] = {}
    for item in items or []:
        key, sep, value = str(item).partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not all(k.isidentifier() for k in key.split(".")):
            raise InputError(f"{flag} {item!r}: expected key=value")
        _set_path(out, tuple(key.split(".")), _yaml_scalar(value) if value.strip() else "")
    return out


_BOOL_WORDS = {False: ("no", "off", "false"), True: ("yes", "on", "true")}


def _check(s: Setting, value: Any, where: str, key: str) -> Any:
    """``value`` for setting ``s`` (from YAML or a command-line token), converted where the
    meaning is plain (``2e-4`` -> float, ``"a,b"`` -> list), else UsageError naming ``key``."""
    def bad(expected: str) -> UsageError:
        return UsageError(f"{where}: {key}: expected {expected}, got {value!r}")

    if value is None:
        if s.optional or s.kind in ("any", "mapping") or s.default() is None:
            return None
        raise bad("a value")
    if s.kind == "bool":
        if isinstance(value, bool):
            return value
        raise bad("true or false")
    if s.kind == "int":
        if isinstance(value, str) and s.optional and value.strip().lower() in NONE_WORDS + ("all",):
            return None
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad("an integer")
    if s.kind == "float":
        value = _fix_float(value)
        if isinstance(value, str) and s.optional and value.strip().lower() in NONE_WORDS:
            return None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise bad("a number")
    if s.kind == "str":
        if isinstance(value, bool):  # YAML 1.1 reads no/off/yes/on as booleans: a choice of that word wins
            word = next((w for w in _BOOL_WORDS[value] if s.choices and w in s.choices), None)
            if word is None:
                raise bad("a string")
            value = word
        elif isinstance(value, (int, float)):
            value = str(value)
        elif not isinstance(value, str):
            raise bad("a string")
        if s.choices and value not in s.choices:
            raise UsageError(f"{where}: {key}: {value!r} is not one of {', '.join(map(str, s.choices))}")
        return value
    if s.kind == "list":
        if isinstance(value, str):
            return parse_csv(value)
        if isinstance(value, (list, tuple)):
            return list(value)
        raise bad("a list (or comma-separated text)")
    if s.kind == "mapping":
        if isinstance(value, Mapping):
            return _check_mapping(s, dict(value), where, key)
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return _check_mapping(s, parse_key_values(value, f"{where}: {key}"), where, key)
        raise bad("a mapping")
    return value


@functools.lru_cache(maxsize=None)
def _schema(spec: Any) -> Optional[type]:
    """The dataclass of a mapping's ``schema`` (a class, or ``"module:Class"`` imported now)."""
    if spec is None or isinstance(spec, type):
        return spec
    module, _, name = str(spec).partition(":")
    return getattr(importlib.import_module(module), name)


def _check_mapping(s: Setting, d: Dict[str, Any], where: str, key: str) -> Dict[str, Any]:
    """A mapping setting's entries, checked against its ``schema`` when it has one."""
    cls = _schema(s.meta.get("schema"))
    if cls is None:
        return d
    inner = {f.name: f for f in dataclasses.fields(cls)}
    out = {}
    for k, v in d.items():
        name = str(k).replace("-", "_")
        if name not in inner:
            raise UsageError(_unknown(where, f"{key}.{k}", [f"{key}.{n}" for n in inner]))
        kind, optional = _type_kind(_hints(cls)[name]) if name in _hints(cls) else _string_kind(str(inner[name].type))
        leaf = Setting(s.path + (name,), inner[name], kind, optional, (f"{s.dotted}.{name}",))
        out[name] = _check(leaf, v, where, f"{key}.{name}")
    return out


def _unknown(where: str, key: str, known: Iterable[str]) -> str:
    return f"{where}: unknown setting {key!r}{did_you_mean(str(key).replace('-', '_'), known, n=1)}"


def _set_path(d: Dict[str, Any], path: Tuple[str, ...], value: Any) -> None:
    for p in path[:-1]:
        nxt = d.get(p)
        if not isinstance(nxt, dict):
            nxt = d[p] = {}
        d = nxt
    d[path[-1]] = value


def _deep_merge(base: Dict[str, Any], top: Mapping[str, Any]) -> Dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def _put(cls: type, values: Dict[str, Any], key: str, value: Any, where: str) -> None:
    """Set one ``key`` (a dotted path, a flat alias or a dotted path into a mapping setting)."""
    index = _index(cls)
    norm = str(key).replace("-", "_")
    s, rest = index.get(norm), ()
    if s is None:
        parts = norm.split(".")
        for i in range(len(parts) - 1, 0, -1):
            cand = index.get(".".join(parts[:i]))
            if cand is not None and cand.kind in ("mapping", "any"):
                s, rest = cand, tuple(parts[i:])
                break
    if s is None:
        raise UsageError(_unknown(where, key, list(index) + list(_section_paths(cls))))
    if rest:  # into a mapping: checked as the one-entry mapping {rest: value}
        entry: Dict[str, Any] = {}
        _set_path(entry, rest, value)
        value = _check(s, entry, where, s.dotted) if s.kind == "mapping" else entry
        cur = _get_path(values, s.path)
        value = _deep_merge(cur if isinstance(cur, dict) else {}, value)
    else:
        value = _check(s, value, where, key)
        cur = _get_path(values, s.path)
        if s.kind == "mapping" and isinstance(cur, dict) and isinstance(value, dict):
            value = _deep_merge(cur, value)
    _set_path(values, s.path, value)


def _get_path(d: Mapping[str, Any], path: Tuple[str, ...]) -> Any:
    for p in path:
        if not isinstance(d, Mapping) or p not in d:
            return None
        d = d[p]
    return d


def read_mapping(cls: type, data: Mapping[str, Any], where: str = "config") -> Dict[str, Any]:
    """Check a mapping of settings (nested sections, dotted keys and flat aliases, dashes or
    underscores) into the nested values of ``cls`` (only the keys given). UsageError with a
    did-you-mean for an unknown key, and for a value of the wrong type."""
    out: Dict[str, Any] = {}
    sections = set(_section_paths(cls))

    def walk(d: Mapping[str, Any], prefix: str) -> None:
        for key, value in d.items():
            name = prefix + str(key).replace("-", "_")
            if name in sections:
                if not isinstance(value, Mapping):
                    raise UsageError(f"{where}: {name}: expected a mapping of its settings, got {value!r}")
                walk(value, name + ".")
            else:
                _put(cls, out, name, value, where)

    walk(data, "")
    return out


def read_file(path: Union[str, Path, None], cls: type, what: str = "--config") -> Dict[str, Any]:
    """Read a YAML file of settings of ``cls`` (see :func:`read_mapping`); no path: ``{}``."""
    if not path:
        return {}
    import yaml

    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{what} {p}: no such file")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise UsageError(f"{what} {p}: not valid YAML ({e})") from None
    except UnicodeDecodeError as e:
        raise UsageError(f"{what} {p}: not a text file ({e})") from None
    if not isinstance(data, dict):
        raise UsageError(f"{what} {p}: expected a mapping of settings")
    return read_mapping(cls, data, f"{what} {p}")


def read_overrides(cls: type, tokens: Sequence[str], where: str = "command line") -> Dict[str, Any]:
    """``--key value`` / ``--key=value`` / ``--a.b value`` tokens (values read as YAML) into the
    nested values of ``cls``. Keys are those of :func:`read_mapping`."""
    out: Dict[str, Any] = {}
    it = iter(tokens)
    for tok in it:
        if not tok.startswith("--") or len(tok) == 2:
            raise UsageError(f"unexpected argument {tok!r}")
        key = tok[2:]
        if "=" in key:
            key, raw = key.split("=", 1)
        else:
            try:
                raw = next(it)
            except StopIteration:
                raise UsageError(f"{tok} needs a value") from None
        _put(cls, out, key, _yaml_scalar(raw), f"{where}: --{key}")
    return out


# ----------------------------------------------------------------------------------------------
# argparse (the flags themselves: refcoco_edit.config_flags)
# ----------------------------------------------------------------------------------------------

def add_flags(parser: argparse.ArgumentParser, cls: type, style: str = "flags") -> None:
    """One flag per setting of ``cls``: ``--name`` (dashes), ``--section.name`` and every flat
    alias; bools get ``--no-x`` too; a mapping is a repeatable ``--flag KEY=VALUE``. The
    namespace gets every default, and :func:`from_namespace` tells given values from defaults.

    ``style="tokens"``: for the help of a command that reads ``--key value`` tokens with
    :func:`read_overrides` (train): ``--key VALUE`` with the underscore names, ``--map.KEY VALUE``."""
    add_setting_flags(parser, settings_of(cls), style)


def from_namespace(cls: type, args: argparse.Namespace) -> Dict[str, Any]:
    """The settings of ``cls`` given on the command line (parsed by a parser with
    :func:`add_flags`), as nested values; a namespace made by hand counts every attribute
    named after a setting as given."""
    given = getattr(args, GIVEN, None)
    ns = vars(args)
    out: Dict[str, Any] = {}
    for s in settings_of(cls):
        if s.dotted not in ns or (given is not None and s.dotted not in given):
            continue
        value = ns[s.dotted]
        where = "--" + s.flag_name
        if s.kind == "mapping" and isinstance(value, (list, tuple)):
            value = _check_mapping(s, parse_key_values(value, where), "command line", where)
        _set_path(out, s.path, copy.deepcopy(value))
    return out


# ----------------------------------------------------------------------------------------------
# merging, building, dumping
# ----------------------------------------------------------------------------------------------

def merge(*layers: Mapping[str, Any]) -> Dict[str, Any]:
    """Nested values, later layers winning key by key (sections and mappings merge)."""
    out: Dict[str, Any] = {}
    for layer in layers:
        out = _deep_merge(out, layer or {})
    return out


def build(cls: type, *layers: Mapping[str, Any]) -> Any:
    """An instance of ``cls`` from the defaults and the nested ``layers`` (later ones win).
    A required setting missing, or a value the class rejects (``__post_init__``), is a UsageError."""
    values = merge(*layers)
    missing = [s for s in settings_of(cls) if s.required and _get_path(values, s.path) is None]
    if missing:
        raise UsageError(", ".join(f"--{s.flag_name}" for s in missing) + " is required")
    try:
        return _instantiate(cls, values)
    except ValueError as e:
        raise UsageError(str(e)) from None


def _instantiate(cls: type, values: Mapping[str, Any]) -> Any:
    kw = {}
    for f in dataclasses.fields(cls):
        sec = _section_cls(cls, f)
        if sec is not None:
            kw[f.name] = _instantiate(sec, values.get(f.name) or {})
        elif f.name in values:
            kw[f.name] = values[f.name]
    return cls(**kw)


def make(cls: type, args: Optional[argparse.Namespace] = None, path: Union[str, Path, None] = None,
         what: str = "--config") -> Any:
    """defaults < the YAML file ``path`` < the flags given in ``args``: the command line wins."""
    return build(cls, read_file(path, cls, what), from_namespace(cls, args) if args is not None else {})


def to_dict(cfg: Any, runtime: bool = True) -> Dict[str, Any]:
    """A config as plain nested dicts and lists (for reports and fingerprints); ``runtime=False``
    leaves out the settings marked ``runtime`` (they do not change outputs)."""
    out: Dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        if not runtime and f.metadata.get("runtime"):
            continue
        v = getattr(cfg, f.name)
        out[f.name] = to_dict(v, runtime) if dataclasses.is_dataclass(v) and not isinstance(v, type) else copy.deepcopy(v)
    return out
