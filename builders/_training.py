"""The fine-tuning loop the builders share: shuffled mini-batches, AdamW, clipped gradients.

Plain torch, no Trainer: every step is visible and deterministic for a fixed seed.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from quantmatrix.errors import QuantmatrixError
from quantmatrix.progress import Progress


def seed_all(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global RNGs (dropout, initialisation, sampling)."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def shuffled_batches(n: int, size: int, rng: random.Random) -> list[list[int]]:
    """Indices 0..n-1 in one order drawn from `rng`, cut into batches of `size` (the last may be shorter)."""
    order = list(range(n))
    rng.shuffle(order)
    return [order[i : i + size] for i in range(0, n, size)]


@dataclass(frozen=True)
class Training:
    steps: int
    seconds: float
    losses: list[float]


def fine_tune(
    parameters: Iterable[Any],
    loss_of: Callable[[list[int]], Any],
    examples: int,
    *,
    epochs: float,
    batch_size: int,
    learning_rate: float,
    seed: int,
    what: str = "fine-tune",
) -> Training:
    """`epochs` passes (fractions allowed) over `examples` training examples in shuffled batches.

    `loss_of(indices)` returns the batch's loss tensor; AdamW (weight decay 0.01) steps on it after
    clipping the gradients to norm 1. A new shuffle per pass, all drawn from one seeded RNG.
    """
    import torch

    if examples < 1:
        raise QuantmatrixError("fine-tuning needs at least one training example")
    params = list(parameters)
    rng = random.Random(seed)
    total_steps = max(1, int(epochs * math.ceil(examples / batch_size)))
    optim = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.01)
    t0, step, losses = time.perf_counter(), 0, []
    with Progress(total_steps, what, unit="step") as progress:
        while step < total_steps:
            for idx in shuffled_batches(examples, batch_size, rng):
                if step >= total_steps:
                    break
                loss = loss_of(idx)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optim.step()
                optim.zero_grad(set_to_none=True)
                losses.append(loss.item())
                step += 1
                progress.update(step)
    return Training(steps=step, seconds=time.perf_counter() - t0, losses=losses)
