"""One lazy registry for everything chosen by name: pipelines, editors, metrics, executors.

The habit of lm-evaluation-harness' registry: entries are ``"module:Attr"`` strings (or objects),
imported only when one is asked for, so naming a diffusion pipeline or editor never imports
torch. A registry also knows aliases (``ip2p`` -> ``instruct-pix2pix``) and, when given an entry
point group, plug-ins of installed distributions (built-in names win over plug-ins). An unknown
name raises ``UnknownNameError`` (an ``InputError``: exit code 2 at the command line, and a
``KeyError`` for code that looks names up) with the closest known names.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable, Dict, Generic, Iterable, List, Mapping, Optional, TypeVar, Union

from .errors import InputError
from .suggest import close_matches

__all__ = ["Registry", "UnknownNameError", "import_target"]

T = TypeVar("T")


class UnknownNameError(InputError, KeyError):
    """A name no registry entry, alias or plug-in answers to."""

    def __init__(self, message: str, name: str = "", suggestions: Iterable[str] = ()):
        super().__init__(message)
        self.name = name
        self.suggestions = list(suggestions)

    __str__ = Exception.__str__  # not KeyError's repr-quoting


def import_target(target: str, what: str = "") -> Any:
    """Import ``"module:Attr"`` (``Attr`` may be dotted) and return the attribute.

    Raises ``InputError`` naming ``what`` when the module or the attribute does not exist."""
    module_name, sep, attr = str(target).partition(":")
    label = f"{what}: " if what else ""
    if not module_name or not sep or not attr:
        raise InputError(f"{label}{target!r} is not of the form module:Class")
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise InputError(f"{label}cannot import module {module_name!r} ({e})") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise InputError(f"{label}module {module_name!r} has no attribute {attr!r}") from None
    return obj


class Registry(Generic[T]):
    """Names -> lazily imported objects, with aliases, plug-ins and "did you mean" errors.

    ``kind`` names what is registered in messages ("pipeline", "editor"). ``normalize`` maps a
    user's spelling to the stored form before lookup (e.g. lower case)."""

    def __init__(self, kind: str, entries: Optional[Mapping[str, Union[str, T]]] = None, *,
                 aliases: Optional[Mapping[str, str]] = None, entry_point_group: Optional[str] = None,
                 normalize: Callable[[str], str] = lambda s: s):
        self.kind = kind
        self.entry_point_group = entry_point_group
        self.normalize = normalize
        self._entries: Dict[str, Union[str, T]] = {}
        self._aliases: Dict[str, str] = {}
        self._loaded: Dict[str, T] = {}
        for name, target in (entries or {}).items():
            self.register(name, target)
        for alias, name in (aliases or {}).items():
            self.alias(alias, name)

    # -- filling ---------------------------------------------------------------------------------
    def register(self, name: str, target: Union[str, T]) -> None:
        """Add ``name`` -> ``"module:Attr"`` (imported when first asked for) or an object."""
        if name in self._entries or name in self._aliases:
            raise ValueError(f"{self.kind} {name!r} is registered already")
        self._entries[name] = target

    def alias(self, alias: str, name: str) -> None:
        """Let ``alias`` stand for the registered ``name``."""
        if name not in self._entries:
            raise ValueError(f"alias {alias!r} of unknown {self.kind} {name!r}")
        if alias in self._entries:
            raise ValueError(f"alias {alias!r} is a {self.kind} name already")
        self._aliases[alias] = name

    # -- reading ---------------------------------------------------------------------------------
    @property
    def entries(self) -> Dict[str, Union[str, T]]:
        """Built-in name -> target (a copy)."""
        return dict(self._entries)

    @property
    def aliases(self) -> Dict[str, str]:
        return dict(self._aliases)

    def plugins(self) -> Dict[str, Any]:
        """Plug-in name -> EntryPoint of the entry point group (read fresh each time; no import)."""
        if not self.entry_point_group:
            return {}
        from importlib.metadata import entry_points

        eps = entry_points()
        group = (eps.select(group=self.entry_point_group) if hasattr(eps, "select")
                 else eps.get(self.entry_point_group, []))  # type: ignore[union-attr]  # Python < 3.10
        out: Dict[str, Any] = {}
        for ep in group:
            out.setdefault(ep.name, ep)
        return out

    def names(self, plugins: bool = True) -> List[str]:
        """Registered names (and plug-in names), sorted; aliases not included."""
        out = set(self._entries)
        if plugins:
            out |= set(self.plugins())
        return sorted(out)

    def canonical(self, name: str) -> Optional[str]:
        """The registered name ``name`` stands for (itself or an alias' target), else None."""
        key = self.normalize(str(name))
        if key in self._entries:
            return key
        return self._aliases.get(key)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (self.canonical(name) is not None or name in self.plugins())

    def target(self, name: str) -> Union[str, T]:
        """The registered target of ``name`` (an alias resolves); a plug-in's ``"module:Attr"``."""
        canonical = self.canonical(name)
        if canonical is not None:
            return self._entries[canonical]
        plugins = self.plugins()
        if name in plugins:
            return plugins[name].value
        raise self.unknown(name)

    def get(self, name: str) -> T:
        """The object registered as ``name``, imported on first use."""
        canonical = self.canonical(name) or str(name)
        if canonical in self._loaded:
            return self._loaded[canonical]
        target = self.target(name)
        obj = import_target(target, f"{self.kind} {canonical!r}") if isinstance(target, str) else target
        self._loaded[canonical] = obj
        return obj

    def unknown(self, name: str, extra: str = "") -> UnknownNameError:
        """The error for a name nothing answers to, with close matches among names and aliases."""
        key = self.normalize(str(name))
        # names first; an alias only when no name is close, and then said with what it stands for
        # (aliases are listed by --list-*, not in every help text: 'source' alone would puzzle)
        close = close_matches(key, set(self._entries) | set(self.plugins()))
        shown = [repr(c) for c in close]
        if not close:
            close = close_matches(key, set(self._aliases))
            shown = [f"{c!r} (alias of {self._aliases[c]!r})" for c in close]
        said = f"; did you mean {' or '.join(shown)}?" if shown else ""
        return UnknownNameError(f"unknown {self.kind} {name!r}{said} (known: {', '.join(self.names())}){extra}",
                                str(name), close)
