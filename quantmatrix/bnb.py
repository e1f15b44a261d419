"""bitsandbytes LLM.int8 for a causal LM (GPT-2): the load the builder checks and the torch runner repeats.

LLM.int8 quantises at load time (transformers' BitsAndBytesConfig): every Linear/Conv1D but the
output head becomes an 8-bit matmul with FP16 outlier columns above `threshold`. Nothing is
serialised in 8-bit; the artefact holds the FP32 safetensors and this named recipe. It needs
bitsandbytes and a CUDA GPU; without them the build is `skipped` with the reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

RECIPE = "bnb-llm-int8"


def unavailable() -> str | None:
    """Why LLM.int8 cannot run here (bitsandbytes missing, no GPU), or None."""
    from quantmatrix.gpu import missing_module, probe_cuda

    return missing_module("bitsandbytes") or probe_cuda().reason


def load_llm_int8(path: Path, threshold: float, device: int = 0) -> Any:
    """The causal LM at `path` with LLM.int8 linear layers, on CUDA device `device`."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    config = BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=threshold)
    return AutoModelForCausalLM.from_pretrained(
        str(path), local_files_only=True, quantization_config=config, device_map={"": device}
    ).eval()


def int8_modules(model: Any) -> int:
    """How many layers bitsandbytes replaced by 8-bit ones (Linear8bitLt)."""
    return sum(1 for m in model.modules() if type(m).__name__ == "Linear8bitLt")
