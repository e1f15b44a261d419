"""NNCF INT8 weight compression of a causal-LM OpenVINO IR (weights INT8, activations stay FP32).

Steps: read the FP32 IR -> compress (nncf.compress_weights, INT8 asymmetric or symmetric, per output
channel; embeddings and the output projection included unless an ignored scope keeps them) -> save
-> check greedy tokens and teacher-forced next-token KL against the FP32 reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from builders import BuildContext, builder, link_tree
from builders._openvino import check_ir_lm, ir_manifest, lm_io, op_counts
from quantmatrix.errors import QuantmatrixError
from quantmatrix.openvino_model import IR_FILE, clean_error, read_model, save_ir
from quantmatrix.records import Manifest


@dataclass(frozen=True)
class OpenVinoInt8LmParams:
    mode: Literal["int8_asym", "int8_sym"] = "int8_asym"
    # Regular expressions over IR node names whose weights stay FP32 (anchored at the start: re.match).
    ignored_scopes: tuple[str, ...] = ()


@builder("openvino-int8-lm", params=OpenVinoInt8LmParams, output_format="openvino")
def build(ctx: BuildContext, params: OpenVinoInt8LmParams) -> Manifest:
    import nncf

    src = ctx.source
    src.require("openvino-int8-lm compresses a causal-LM OpenVINO IR", format="openvino", task="text-generation")
    model = read_model(src.file())
    scope = nncf.IgnoredScope(patterns=list(params.ignored_scopes)) if params.ignored_scopes else None
    mode = nncf.CompressWeightsMode.INT8_ASYM if params.mode == "int8_asym" else nncf.CompressWeightsMode.INT8_SYM
    try:
        compressed = nncf.compress_weights(model, mode=mode, ignored_scope=scope)
    except Exception as e:  # nncf's ValidationError, e.g. an ignored scope that matches nothing
        raise QuantmatrixError(f"nncf.compress_weights failed on {src.file().name}: {clean_error(e)}") from None
    counts = op_counts(compressed)
    int8 = counts.get("Constant[i8]", 0) + counts.get("Constant[u8]", 0)
    if not int8:
        raise QuantmatrixError("nncf.compress_weights left no INT8 weight: nothing was compressed")
    steps = [
        f"compress: nncf.compress_weights mode={params.mode}, ignored scopes {list(params.ignored_scopes) or 'none'}: "
        f"{int8} INT8 weight constants"
    ]
    xml = ctx.out / IR_FILE
    save_ir(compressed, xml)
    link_tree(src.path / (src.manifest.tokenizer or "tokenizer"), ctx.out / "tokenizer")
    check = check_ir_lm(xml, ctx.reference.path)
    steps.append(
        f"check: greedy token agreement {check['check_token_agreement']:.3f}, teacher-forced top-1 "
        f"{check['check_top1']:.3f}, mean KL {check['check_mean_kl']:.2e} vs FP32"
    )
    extra = {
        "quantizer": "nncf.compress_weights",
        "nncf": nncf.__version__,
        "nncf_params": {"mode": params.mode, "ignored_scopes": list(params.ignored_scopes)},
        **lm_io(compressed),
    }
    return ir_manifest(ctx, params, precision="int8", device="cpu", steps=steps, metrics=check, extra=extra)
