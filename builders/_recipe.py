"""Torch artefacts made of the reference's own safetensors (hard links, no copy) plus a load recipe.

Quantised torch modules have no safe serialisation, so these builders write the recipe that rebuilds
the module at load time (`Manifest.load`) next to links to the FP32 weights.
"""

from __future__ import annotations

from typing import Any

from builders import BuildContext, link_tree
from quantmatrix.records import Manifest, TorchLoad

LINK_STEP = "link: reference model/ (safetensors) and tokenizer/ (hard links, no copy)"


def link_reference(ctx: BuildContext) -> str:
    """Hard-link the reference's model/ and tokenizer/ into the artefact; returns the step that says so."""
    ref = ctx.reference
    link_tree(ref.path / (ref.manifest.entry or "model"), ctx.out / "model")
    link_tree(ref.path / (ref.manifest.tokenizer or "tokenizer"), ctx.out / "tokenizer")
    return LINK_STEP


def recipe_manifest(
    ctx: BuildContext,
    params: Any,
    load: TorchLoad,
    *,
    device: str,
    steps: list[str] | None = None,
    metrics: dict[str, float] | None = None,
    **fields: Any,
) -> Manifest:
    """The INT8 manifest of linked weights + `load`: model/ and tokenizer/ as `link_reference` made them."""
    return ctx.manifest(
        format="torch", precision="int8", params=params, entry="model", tokenizer="tokenizer", device=device,
        steps=steps or [], metrics=metrics or {}, load=load, **fields,
    )  # fmt: skip
