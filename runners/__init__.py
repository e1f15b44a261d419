"""Runners load one artefact on one backend and predict; the task scenarios (`runners.tasks`) guard, score and time.

A backend is one module in `runners/backends/`, named after it (`onnxruntime` -> `runners/backends/onnxruntime.py`),
with one params dataclass and a `load` function registered with `@runner(...)`, returning a `Session`,
and the capabilities it has (`quantmatrix.capabilities.Capability`). Every public module there is a
backend; helpers live elsewhere. Backend modules import their library lazily, so listing them never
imports torch or initialises CUDA.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from quantmatrix.capabilities import Capabilities, Capability
from quantmatrix.discovery import Registry
from quantmatrix.records import Manifest

if TYPE_CHECKING:
    from quantmatrix.causal_lm import Stepper

BACKENDS_PACKAGE = f"{__name__}.backends"


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


# A causal LM loaded for generation: the Stepper and the runner options to record.
LoadLM = Callable[[LoadRequest], "tuple[Stepper, dict[str, Any]]"]


@dataclass(frozen=True)
class RunnerInfo:
    backend: str
    params: type
    formats: tuple[str, ...]
    devices: tuple[str, ...]
    capabilities: Capabilities
    load: Callable[[LoadRequest], Session] = field(repr=False)
    load_lm: LoadLM | None = field(default=None, repr=False)
    module: str = ""

    def can(self, capability: Capability) -> bool:
        return capability in self.capabilities


_BACKENDS: Registry[RunnerInfo] = Registry("runner", BACKENDS_PACKAGE)


def runner(
    backend: str,
    *,
    params: type,
    formats: tuple[str, ...],
    capabilities: Iterable[Capability],
    devices: tuple[str, ...] = ("cpu",),
    load_lm: LoadLM | None = None,
) -> Callable[..., Any]:
    """Register a `load(request) -> Session` function for `backend` (must match its module name).

    A backend with `Capability.GENERATES` also gives `load_lm(request) -> (Stepper, options)`.
    """
    caps = frozenset(capabilities)
    if (Capability.GENERATES in caps) != (load_lm is not None):
        raise RuntimeError(f"runner {backend!r}: Capability.GENERATES and load_lm go together (one without the other)")

    def info(fn: Callable[[LoadRequest], Session]) -> RunnerInfo:
        return RunnerInfo(
            backend=backend, params=params, formats=formats, devices=devices, capabilities=caps, load=fn,
            load_lm=load_lm, module=fn.__module__,
        )  # fmt: skip

    return _BACKENDS.register(backend, info)


def registry() -> Mapping[str, RunnerInfo]:
    """All backends, by importing every module in `runners/backends/` (their heavy imports are lazy)."""
    return _BACKENDS.discover()


def fp32_baseline() -> RunnerInfo:
    """The backend that runs the FP32 reference eagerly (what headline speed-ups and typo references use)."""
    found = [info for info in registry().values() if info.can(Capability.FP32_BASELINE)]
    if len(found) != 1:
        raise RuntimeError(
            f"exactly one backend must declare Capability.FP32_BASELINE; found {sorted(i.backend for i in found)}"
        )
    return found[0]
