"""Shipped training configs: the YAML files a model's ``configs`` package installs, found by name.

Each trainer's ``configs`` package (``referdiffusion/configs``, ``freeedit/configs``) holds its
``*.yaml`` files and one :class:`ShippedConfigs` over its own folder; ``--config`` then takes a
file, a shipped name (``3_rem_rcl``) or ``builtin:NAME``.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Union

PREFIX = "builtin:"


class ShippedConfigs:
    """The ``*.yaml`` configs of ``folder``; ``label`` names the model in error messages."""

    def __init__(self, folder: Union[str, Path], label: str) -> None:
        self.folder = Path(folder).resolve()
        self.label = label

    def names(self) -> List[str]:
        """The shipped config names (file names without ``.yaml``), sorted."""
        return sorted(p.stem for p in self.folder.glob("*.yaml"))

    def path(self, name: str) -> Path:
        """The file of the shipped config ``name`` (``NAME``, ``NAME.yaml`` or ``builtin:NAME``);
        ValueError naming the shipped ones when there is none."""
        stem = name[len(PREFIX):] if name.startswith(PREFIX) else name
        if stem.endswith(".yaml"):
            stem = stem[: -len(".yaml")]
        p = self.folder / f"{stem}.yaml"
        if "/" in stem or "\\" in stem or not stem or not p.is_file():
            raise ValueError(f"no shipped {self.label} config {name!r}; shipped: {', '.join(self.names())}")
        return p

    def resolve(self, config: Union[str, Path]) -> Path:
        """``--config`` as given: an existing file wins; else ``builtin:NAME`` or a bare ``NAME``
        (no folder part) is a shipped config; else ValueError (file not found / unknown name)."""
        s = str(config)
        if s.startswith(PREFIX):
            return self.path(s)
        p = Path(s).expanduser()
        if p.is_file():
            return p
        if Path(s).name == s and s.removesuffix(".yaml") in self.names():
            return self.path(s)
        raise ValueError(f"config {s!r} is neither a file nor a shipped {self.label} config; shipped: "
                         f"{', '.join(self.names())} (use --config NAME or --config {PREFIX}NAME)")
