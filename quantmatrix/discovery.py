"""Registration by file convention: import every public module of a package so its decorators register it."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable
from types import ModuleType


def import_public_modules(package: str, path: Iterable[str]) -> list[ModuleType]:
    """Every module of `package` found on `path` whose name does not start with `_`, imported."""
    return [
        importlib.import_module(f"{package}.{mod.name}")
        for mod in pkgutil.iter_modules(list(path))
        if not mod.name.startswith("_")
    ]


def require_home(what: str, name: str, module: str, package: str) -> None:
    """A registered part named `name` lives in `<package>.<name with - as _>`: its file name is its registry key."""
    home = f"{package}.{name.replace('-', '_')}"
    if module != home:
        raise RuntimeError(f"{what} {name!r} must live in {home.replace('.', '/')}.py, not {module}")
