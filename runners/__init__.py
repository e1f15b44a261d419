"""Runners load one artefact on one backend and predict; timing and scoring live in `runners.measure`.

A runner is one module named after its backend (`onnxruntime` -> `runners/onnxruntime.py`) with one
params dataclass and a `load` function registered with `@runner(...)`, returning a `Session`.
Modules import their backend lazily, so listing runners never imports torch or initialises CUDA.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from quantmatrix.records import Manifest

# Modules in this package that are not backends.
_NOT_BACKENDS = {"measure", "guard", "job", "peak", "inputs", "predict", "robustness", "analyses"}


class Skip(Exception):
    """Raised by `load` when this machine cannot run the cell (no GPU, backend not installed...)."""


class Session(Protocol):
    """A loaded artefact. `input_names` are what the backend binds by name; predict returns logits."""

    input_names: tuple[str, ...]

    def predict(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray: ...

    def options(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class LoadRequest:
    """What a runner's `load` gets: the artefact, its manifest, the device and thread count."""

    path: Path
    manifest: Manifest
    device: str
    threads: int
    params: Any


@dataclass(frozen=True)
class RunnerInfo:
    backend: str
    params: type
    formats: tuple[str, ...]
    devices: tuple[str, ...]
    load: Callable[[LoadRequest], Session] = field(repr=False)


_REGISTRY: dict[str, RunnerInfo] = {}


def runner(
    backend: str, *, params: type, formats: tuple[str, ...], devices: tuple[str, ...] = ("cpu",)
) -> Callable[..., Any]:
    """Register a `load(request) -> Session` function for `backend` (must match its module name)."""

    def wrap(fn: Callable[[LoadRequest], Session]) -> Callable[[LoadRequest], Session]:
        module = fn.__module__.rsplit(".", 1)[-1]
        if module != backend.replace("-", "_"):
            raise RuntimeError(f"runner {backend!r} must live in runners/{backend.replace('-', '_')}.py")
        _REGISTRY[backend] = RunnerInfo(backend=backend, params=params, formats=formats, devices=devices, load=fn)
        return fn

    return wrap


def registry() -> Mapping[str, RunnerInfo]:
    """All backends, by importing every backend module in this package (their heavy imports are lazy)."""
    for mod in pkgutil.iter_modules(__path__):
        if not mod.name.startswith("_") and mod.name not in _NOT_BACKENDS:
            importlib.import_module(f"{__name__}.{mod.name}")
    return dict(_REGISTRY)
