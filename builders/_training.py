"""The fine-tuning loop the builders share: shuffled mini-batches, AdamW, clipped gradients.

Plain torch, no Trainer: every step is visible and deterministic for a fixed seed.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from quantmatrix.errors import QuantmatrixError
from quantmatrix.progress import Progress

if TYPE_CHECKING:
    from builders import BuildContext, Input
    from quantmatrix.data import Example, LabelledData


def seed_all(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global RNGs (dropout, initialisation, sampling)."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def torch_reference(ctx: BuildContext, builder: str) -> Input:
    """The FP32 reference a fine-tuning builder starts from; it must be a torch model to train on."""
    ref = ctx.reference
    if ref.manifest.format != "torch":
        raise QuantmatrixError(f"{builder} fine-tunes a torch reference, got {ref.manifest.format!r}")
    return ref


def train_split(data: LabelledData, limit: int) -> list[Example]:
    """The train split's first `limit` examples (0: all of them)."""
    train = list(data.split("train"))
    return train[:limit] if limit else train


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
    examples: int
    epochs: float
    batch_size: int
    learning_rate: float

    @property
    def final_loss(self) -> float:
        """Mean loss of the last ten steps: one step's loss is too noisy to report."""
        import numpy as np

        return float(np.mean(self.losses[-10:]))

    def step_line(self) -> str:
        """The manifest's `train:` build step."""
        return f"train: {self.steps} steps, batch {self.batch_size}, lr {self.learning_rate}, {self.seconds:.1f}s"

    def metrics(self) -> dict[str, float]:
        """The training cost every fine-tuning builder records in its manifest metrics."""
        return {
            "train_seconds": round(self.seconds, 2),
            "train_examples": self.examples,
            "train_steps": self.steps,
            "train_epochs": self.epochs,
        }


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
    return Training(
        steps=step, seconds=time.perf_counter() - t0, losses=losses,
        examples=examples, epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
    )  # fmt: skip
