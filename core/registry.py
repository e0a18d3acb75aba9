"""Registries of methods, filled by a decorator on each class (timm's ``register_model`` is the model):

    @register_attack
    class BadNets(Attack):
        name = "BadNets"
        ...

A package imports all of its modules (:func:`import_all`), so a method is one new file in core/attacks/ or
core/defenses/: its class registers itself, and the scripts, the jobs, the checks and the tables find it
there. Nothing else names it.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Iterator

from .errors import UserError


class Registry:
    """Name -> class, in the order of the classes' ``order`` attribute (the paper's), then of registration.
    A class declares ``name`` and optionally ``aliases`` (other spellings: the paper's, BackdoorBox's)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._classes: dict[str, type] = {}
        self._aliases: dict[str, str] = {}

    def register(self, cls: type) -> type:
        name = cls.name
        if not name:
            raise ValueError(f"{cls.__qualname__} has no name to be registered under")
        for spelling in (name, *getattr(cls, "aliases", ())):
            owner = self._classes.get(spelling) or self._classes.get(self._aliases.get(spelling, ""))
            if owner is not None and owner is not cls:
                raise ValueError(f"{self.kind} name {spelling!r} of {cls.__qualname__} is taken by "
                                 f"{owner.__qualname__}")
        self._classes[name] = cls
        for alias in getattr(cls, "aliases", ()):
            self._aliases[alias] = name
        ordered = sorted(self._classes.items(), key=lambda kv: getattr(kv[1], "order", 100))
        self._classes = dict(ordered)
        return cls

    def canonical(self, name) -> str | None:
        """The registered name of ``name`` or an alias (case-insensitive as a last resort); None if unknown."""
        if name in self._classes:
            return name
        if name in self._aliases:
            return self._aliases[name]
        folded = {k.lower(): k for k in self._classes} | {a.lower(): t for a, t in self._aliases.items()}
        return folded.get(str(name).lower()) if name is not None else None

    def get(self, name) -> type:
        """The class of ``name`` or an alias; a one-line UserError listing the known names otherwise."""
        canonical = self.canonical(name)
        if canonical is None:
            raise UserError(f"unknown {self.kind} {name!r}; choose one of {', '.join(self._classes)}")
        return self._classes[canonical]

    @property
    def aliases(self) -> dict[str, str]:
        """alias -> name, in the order of the classes."""
        return {alias: name for name, cls in self._classes.items() for alias in getattr(cls, "aliases", ())}

    def names(self) -> list[str]:
        return list(self._classes)

    def items(self):
        return self._classes.items()

    def values(self):
        return self._classes.values()

    def __contains__(self, name) -> bool:
        return name in self._classes

    def __getitem__(self, name) -> type:
        return self._classes[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._classes)

    def __len__(self) -> int:
        return len(self._classes)


def import_all(package_name: str, package_path) -> None:
    """Imports every module of a package (so that their classes register themselves)."""
    for module in pkgutil.iter_modules(package_path):
        importlib.import_module(f"{package_name}.{module.name}")
