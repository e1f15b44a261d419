"""PT2E quantisation-aware fine-tuning (prepare_qat_pt2e, X86InductorQuantizer), served through torch.compile.

Steps: export the FP32 reference -> prepare: prepare_qat_pt2e inserts fake quantisation ->
train on the train split -> save the trained graph state (weights, scales, observers) as
safetensors -> convert: the runner re-prepares the FP32 graph, loads that state and runs
convert_pt2e (a .pt2 archive would be unpickled at load; this never is) -> check.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from builders import BuildContext, builder
from builders._onnx import encode, graph_logits, load_tokenizer
from builders._qat import FineTuneParams, check_int8, qat_fine_tune
from builders._recipe import LINK_STEP, link_reference, recipe_manifest
from builders._training import seed_all, torch_reference, train_split
from quantmatrix.records import Manifest, Pt2eQatInt8Load
from quantmatrix.torch_recipes import prepare_qat, rebuild


@dataclass(frozen=True)
class QatPt2eParams(FineTuneParams):
    check_examples: int = 128


def set_dropout_training(graph_module: Any, training: bool) -> int:
    """Switch an exported graph's dropout nodes between train and eval, keeping each node's own p.

    torchao's `move_exported_model_to_train` rewrites every dropout to its pattern's literal p=0.5
    (torchao 0.18), which trained MiniLM with five times its 0.1 dropout; this flips only the flag.
    Returns how many dropout nodes were switched.
    """
    import torch

    count = 0
    for node in graph_module.graph.nodes:
        if node.op == "call_function" and node.target is torch.ops.aten.dropout.default:
            node.args = (*node.args[:2], training)
            count += 1
    graph_module.recompile()
    return count


@builder("qat-pt2e", params=QatPt2eParams, output_format="torch")
def build(ctx: BuildContext, params: QatPt2eParams) -> Manifest:
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForSequenceClassification

    ref = torch_reference(ctx, "qat-pt2e")
    seed_all(params.seed)
    link_reference(ctx)
    tokenizer = load_tokenizer(ctx.out / "tokenizer")
    names = [t.name for t in ref.manifest.io_inputs]
    train = train_split(ctx.data, params.max_train_examples)
    example = encode(tokenizer, [e.text for e in train[:2]], ctx.model.max_length)
    (ctx.out / "example.json").write_text(json.dumps([{k: example[k].tolist() for k in names}]), encoding="utf-8")

    model = AutoModelForSequenceClassification.from_pretrained(
        str(ctx.out / "model"), local_files_only=True, attn_implementation="eager"
    ).eval()
    prepared = prepare_qat(model, {k: torch.from_numpy(example[k]) for k in names})
    dropouts = set_dropout_training(prepared, True)
    steps = [
        LINK_STEP,
        "prepare: torch.export + prepare_qat_pt2e with X86InductorQuantizer (QAT config, fake quant); "
        f"{dropouts} dropout nodes switched to training with the model's own p",
    ]

    y = torch.tensor([e.label for e in train])

    def loss_of(idx: list[int]) -> Any:
        enc = encode(tokenizer, [train[i].text for i in idx], ctx.model.max_length)
        out = prepared(**{k: torch.from_numpy(enc[k]) for k in names})
        logits = out.logits if hasattr(out, "logits") else out[0]
        return torch.nn.functional.cross_entropy(logits, y[idx])

    run = qat_fine_tune(ctx, params, prepared.parameters(), loss_of, len(train), "QAT (PT2E)")
    steps.append(run.step_line())

    set_dropout_training(prepared, False)
    state = {k: v.detach().contiguous().clone() for k, v in prepared.state_dict().items()}
    save_file(state, str(ctx.out / "qat_state.safetensors"))
    steps.append(f"save: trained graph state ({len(state)} tensors) to qat_state.safetensors")

    load = Pt2eQatInt8Load(calibration="example.json", state="qat_state.safetensors")
    manifest = recipe_manifest(ctx, params, load, device="cpu", extra={"serve": "torch.compile with inductor freezing"})
    converted = rebuild(ctx.out, manifest)  # what the runner does: re-prepare, load state, convert_pt2e
    steps.append("convert: re-prepare the FP32 graph, load the trained state, convert_pt2e")

    def logits_of(texts: list[str]) -> np.ndarray:
        return graph_logits(converted, tokenizer, names, texts, ctx.model.max_length)

    int8 = check_int8(ctx, logits_of, params.check_examples)
    manifest.metrics = {
        **int8.reference,
        **run.metrics(),
        "final_loss": round(run.final_loss, 4),
        "validation_macro_f1_int8": round(int8.macro_f1, 4),
    }
    if "validation_macro_f1" in ref.manifest.metrics:
        manifest.metrics["validation_macro_f1_before"] = ref.manifest.metrics["validation_macro_f1"]
    steps.append(int8.step_line())
    manifest.steps = steps
    return manifest
