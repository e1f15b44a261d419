"""Registration by file convention: import every public module of a package so its decorators register it."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Any, Generic, TypeVar

Info = TypeVar("Info")
Fn = TypeVar("Fn", bound=Callable[..., Any])


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


class Registry(Generic[Info]):
    """The `what`s of `package` (builders, backends, analysis kinds): one module each, named after it,
    whose decorated function registers the part's `Info` when the module is imported."""

    def __init__(self, what: str, package: str) -> None:
        self.what = what
        self.package = package
        self._parts: dict[str, tuple[str, Info]] = {}  # name -> (module, info)

    def register(self, name: str, info: Callable[[Fn], Info]) -> Callable[[Fn], Fn]:
        """A decorator registering `info(fn)` under `name`; `fn` must live in the module named after `name`."""

        def wrap(fn: Fn) -> Fn:
            require_home(self.what, name, fn.__module__, self.package)
            self._parts[name] = (fn.__module__, info(fn))
            return fn

        return wrap

    def discover(self) -> dict[str, Info]:
        """Every part, by importing every public module of the package (cheap: their heavy imports are lazy)."""
        package = importlib.import_module(self.package)
        found = {m.__name__ for m in import_public_modules(self.package, package.__path__)}
        # Only what the package holds now: a module registered once and since gone from it is not listed.
        return {name: info for name, (module, info) in self._parts.items() if module in found}
