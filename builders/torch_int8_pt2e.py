"""Static INT8 PTQ via torchao PT2E (X86InductorQuantizer), served through torch.compile.

Steps: link the reference's safetensors -> export (torch.export, dynamic batch/sequence) ->
prepare_pt2e -> calibrate on the calibration split -> convert_pt2e -> check against the reference.
The artefact keeps the FP32 weights plus the tokenised calibration batches: `torch.export.load`
unpickles parts of a .pt2 archive, so the runner re-runs the same deterministic recipe at load
(its cold start includes it) instead of loading a pickled program.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from builders import BuildContext, builder
from builders._onnx import encode, graph_logits, load_tokenizer, reference_check
from builders._recipe import LINK_STEP, link_reference, recipe_manifest
from quantmatrix.errors import QuantmatrixError
from quantmatrix.records import Manifest, Pt2eInt8Load
from quantmatrix.torch_recipes import rebuild


@dataclass(frozen=True)
class TorchInt8Pt2eParams:
    calibration_examples: int = 128
    calibration_batch_size: int = 16
    check_examples: int = 128


@builder("torch-int8-pt2e", params=TorchInt8Pt2eParams, output_format="torch")
def build(ctx: BuildContext, params: TorchInt8Pt2eParams) -> Manifest:
    ref = ctx.reference
    ref.require("torch-int8-pt2e quantises a torch reference", format="torch")
    link_reference(ctx)
    tokenizer = load_tokenizer(ctx.out / "tokenizer")
    names = [t.name for t in ref.manifest.io_inputs]
    texts = [e.text for e in ctx.data.split("calibration")[: params.calibration_examples]]
    if not texts:
        raise QuantmatrixError(f"dataset {ctx.data.name} has an empty calibration split")
    calibration = []
    for i in range(0, len(texts), params.calibration_batch_size):
        enc = encode(tokenizer, texts[i : i + params.calibration_batch_size], ctx.model.max_length)
        calibration.append({k: enc[k].tolist() for k in names})
    (ctx.out / "calibration.json").write_text(json.dumps(calibration), encoding="utf-8")
    load = Pt2eInt8Load(calibration="calibration.json")
    manifest = recipe_manifest(ctx, params, load, device="cpu", extra={"serve": "torch.compile with inductor freezing"})
    converted = rebuild(ctx.out, manifest)  # exactly what the runner will do
    q_nodes = sum(1 for n in converted.graph.nodes if "quantize_per_tensor" in str(n.target))
    manifest.metrics = check = reference_check(
        ctx,
        lambda texts: graph_logits(converted, tokenizer, names, texts, ctx.model.max_length),
        params.check_examples,
    )
    manifest.steps = [
        LINK_STEP,
        "export: torch.export (dynamic batch and sequence), called by input name",
        "prepare: prepare_pt2e with X86InductorQuantizer (default static config)",
        f"calibrate: {len(texts)} calibration examples in {len(calibration)} batches (saved as calibration.json)",
        f"convert: convert_pt2e ({q_nodes} quantize nodes)",
        f"check: top-1 agreement {check['check_top1_agreement']:.3f} on {check['check_examples']} test examples",
    ]
    return manifest
