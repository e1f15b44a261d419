"""What the QAT builders share: their fine-tuning params, the logged fine-tune, the INT8 model's check."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from builders._onnx import reference_check
from builders._training import Training, fine_tune
from quantmatrix.metrics import quality

if TYPE_CHECKING:
    import numpy as np

    from builders import BuildContext


@dataclass(frozen=True)
class FineTuneParams:
    """The training options a QAT builder's params start with."""

    epochs: float = 1.0
    learning_rate: float = 2e-5
    batch_size: int = 32
    max_train_examples: int = 1000  # 0: the whole train split
    seed: int = 1234


def qat_fine_tune(
    ctx: BuildContext,
    params: FineTuneParams,
    parameters: Iterable[Any],
    loss_of: Callable[[list[int]], Any],
    examples: int,
    what: str,
) -> Training:
    """`fine_tune` with `params`' options, its progress and summary logged as `what` (e.g. "QAT")."""
    run = fine_tune(
        parameters, loss_of, examples,
        epochs=params.epochs, batch_size=params.batch_size, learning_rate=params.learning_rate, seed=params.seed,
        what=f"{what} fine-tune",
    )  # fmt: skip
    ctx.log(f"  {what}: {run.steps} steps in {run.seconds:.0f}s, final loss {run.final_loss:.4f}")
    return run


def validation_macro_f1(ctx: BuildContext, logits_of: Callable[[list[str]], np.ndarray]) -> float:
    """Macro-F1 on the validation split of the classifier whose logits `logits_of(texts)` returns."""
    validation = ctx.data.split("validation")
    predicted = logits_of([e.text for e in validation]).argmax(-1)
    return quality([e.label for e in validation], predicted, ctx.data.labels).macro_f1


@dataclass(frozen=True)
class Int8Check:
    """The trained INT8 model against the reference's test logits, and its validation macro-F1."""

    reference: dict[str, float]
    macro_f1: float

    def step_line(self) -> str:
        """The manifest's `check:` build step."""
        return (
            f"check: top-1 agreement {self.reference['check_top1_agreement']:.3f} on "
            f"{self.reference['check_examples']} test examples, INT8 validation macro-F1 {self.macro_f1:.4f}"
        )


def check_int8(ctx: BuildContext, logits_of: Callable[[list[str]], np.ndarray], examples: int) -> Int8Check:
    """`reference_check` on the first `examples` test examples, then macro-F1 on the validation split."""
    return Int8Check(reference_check(ctx, logits_of, examples), validation_macro_f1(ctx, logits_of))
