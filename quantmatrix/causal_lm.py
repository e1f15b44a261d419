"""Causal LMs (distilgpt2) offline: real weights where they can be had, else a labelled seeded random init.

Also the fixed prompts every generation cell uses, a plain greedy loop in PyTorch (the FP32
reference's tokens and teacher-forced logits), and the dynamic-INT8 recipe for GPT-2, whose
attention/MLP layers are transformers `Conv1D` modules that `quantize_dynamic` would not touch.
Imports torch/transformers lazily.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from quantmatrix.errors import QuantmatrixError

# distilgpt2's configuration (6 layers of GPT-2 small) and a 2-layer one for tests. vocab_size
# None: the tokenizer's size. distilgpt2 keeps GPT-2's 50257 so the output projection costs what
# it costs with real weights.
RANDOM_LM_ARCHS: dict[str, dict[str, Any]] = {
    "distilgpt2": {"n_layer": 6, "n_embd": 768, "n_head": 12, "n_positions": 1024, "vocab_size": 50257},
    "gpt2-tiny": {"n_layer": 2, "n_embd": 64, "n_head": 2, "n_positions": 128, "vocab_size": None},
}
OFFLINE_TOKENIZER = Path(__file__).resolve().parent / "tokenizers" / "bpe-headlines9"
OFFLINE_TOKENIZER_LABEL = (
    "bpe-headlines9: byte-level BPE (vocab 2048) trained offline on the headlines9 train split "
    "(scripts/make_bpe_tokenizer.py); not GPT-2's tokenizer"
)


@dataclass
class LoadedLM:
    model: Any
    tokenizer: Any
    source: str  # the source actually used
    random_init: bool
    tokenizer_label: str
    notes: list[str] = field(default_factory=list)


def offline_tokenizer() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(OFFLINE_TOKENIZER), local_files_only=True)


def random_lm(arch: str, seed: int) -> LoadedLM:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    if arch not in RANDOM_LM_ARCHS:
        raise QuantmatrixError(
            f"unknown random causal-LM architecture {arch!r}; expected one of {sorted(RANDOM_LM_ARCHS)}"
        )
    tokenizer = offline_tokenizer()
    kwargs = dict(RANDOM_LM_ARCHS[arch])
    kwargs["vocab_size"] = kwargs["vocab_size"] or len(tokenizer)
    config = GPT2Config(
        **kwargs, bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True
    )
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config).eval()
    return LoadedLM(model, tokenizer, f"random:{arch}", True, OFFLINE_TOKENIZER_LABEL)


def load_causal_lm(source: str, fallback: str | None, seed: int, base_dir: Path | None = None) -> LoadedLM:
    """`source` (hf:/package:/random:), else `fallback` with the reason it was needed in `notes`."""
    kind, _, where = source.partition(":")
    if kind == "random":
        return random_lm(where, seed)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from quantmatrix.hf import resolve_source

    path = resolve_source(source, base_dir)
    errors = []
    # The local cache first; the hub only where it is allowed (HF_HUB_OFFLINE unset).
    attempts = [True] if os.environ.get("HF_HUB_OFFLINE") == "1" or Path(path).exists() else [True, False]
    for local in attempts:
        try:
            model = AutoModelForCausalLM.from_pretrained(path, local_files_only=local).eval()
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=local)
            return LoadedLM(model, tokenizer, source, False, f"{source} (the model's own tokenizer)")
        except (OSError, ValueError) as e:
            errors.append(f"{'local files' if local else 'hub'}: {str(e).splitlines()[0][:200]}")
    if fallback is None:
        raise QuantmatrixError(f"cannot load causal LM {source!r} ({'; '.join(errors)}) and no fallback is set")
    loaded = load_causal_lm(fallback, None, seed, base_dir)
    loaded.notes.append(f"{source} unavailable ({'; '.join(errors)}): using {fallback}, seeded random weights")
    return loaded


def fixed_prompts(tokenizer: Any, texts: Sequence[str], count: int, length: int) -> np.ndarray:
    """[count, length] token ids: the first texts with at least `length` tokens, cut to that length.

    Equal lengths mean a batch needs no padding, so batch 1 and batch 4 see the same positions.
    """
    rows = []
    for text in texts:
        ids = tokenizer(text)["input_ids"]
        if len(ids) >= length:
            rows.append(ids[:length])
            if len(rows) == count:
                return np.asarray(rows, dtype=np.int64)
    raise QuantmatrixError(f"only {len(rows)} of {len(texts)} texts have {length} tokens; {count} prompts needed")


class Stepper(Protocol):
    """One forward pass of a causal LM on some backend, with an opaque KV cache.

    `step(ids, past, use_cache)` feeds `ids` [batch, s] after `past` (None: nothing yet) and returns
    the last position's logits [batch, vocab] and the new cache (None when `use_cache` is false).
    `logits(ids)` returns every position's logits [batch, s, vocab] (teacher forcing).
    """

    has_past: bool

    def step(self, ids: np.ndarray, past: Any, use_cache: bool) -> tuple[np.ndarray, Any]: ...

    def logits(self, ids: np.ndarray) -> np.ndarray: ...


def greedy(
    stepper: Stepper, prompts: np.ndarray, new_tokens: int, use_cache: bool, clock: Callable[[], int] | None = None
) -> tuple[np.ndarray, list[int]]:
    """Greedy continuation [batch, new_tokens] of equal-length prompts, with or without the KV cache.

    Without the cache every step re-runs the whole sequence so far. With `clock` (e.g.
    time.perf_counter_ns), also the clock reading before the first step and after each step.
    """
    ids = prompts
    feed = prompts
    past = None
    out = []
    ticks = [clock()] if clock else []
    for _ in range(new_tokens):
        logits, past = stepper.step(feed, past, use_cache)
        token = np.asarray(logits).argmax(-1).astype(np.int64)[:, None]
        out.append(token)
        ids = np.concatenate([ids, token], 1)
        feed = token if use_cache else ids
        if clock:
            ticks.append(clock())
    return np.concatenate(out, 1), ticks


def teacher_forced(stepper: Stepper, prompts: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """Next-token logits [batch, new_tokens, vocab] along prompt + `tokens` (one forward pass)."""
    seq = np.concatenate([prompts, tokens[:, :-1]], 1)
    return np.asarray(stepper.logits(seq), dtype=np.float32)[:, prompts.shape[1] - 1 :]


class TorchLM:
    """A Hugging Face causal LM (eager, or compiled by the caller) as a Stepper."""

    has_past = True

    def __init__(self, model: Any, device: str = "cpu") -> None:
        import torch

        self._torch, self._model, self._device = torch, model, device

    def _forward(self, ids: np.ndarray, past: Any, use_cache: bool) -> Any:
        torch = self._torch
        start = past.get_seq_length() if past is not None else 0
        x = torch.from_numpy(ids).to(self._device)
        b, s = ids.shape
        with torch.inference_mode():
            return self._model(
                input_ids=x,
                attention_mask=torch.ones((b, start + s), dtype=torch.long, device=self._device),
                position_ids=torch.arange(start, start + s, device=self._device).expand(b, -1),
                past_key_values=past,
                use_cache=use_cache,
            )

    def step(self, ids: np.ndarray, past: Any, use_cache: bool) -> tuple[np.ndarray, Any]:
        out = self._forward(ids, past, use_cache)
        logits = out.logits[:, -1].float().cpu().numpy()
        return logits, (out.past_key_values if use_cache else None)

    def logits(self, ids: np.ndarray) -> np.ndarray:
        return self._forward(ids, None, False).logits.float().cpu().numpy()


class OrtLM:
    """An ONNX Runtime session of an Optimum causal-LM export (with or without past) as a Stepper.

    Inputs are bound by name: input_ids, attention_mask, [position_ids], past_key_values.<i>.key/value;
    outputs logits, present.<i>.key/value. The first step of a with-past graph gets empty past tensors.
    """

    def __init__(self, session: Any) -> None:
        self._session = session
        inputs = {i.name: i for i in session.get_inputs()}
        self.input_names = tuple(inputs)
        if "input_ids" not in inputs:
            raise QuantmatrixError(f"graph has no input_ids input (inputs: {list(inputs)})")
        self._past = [n for n in inputs if n.startswith("past_key_values.")]
        self.has_past = bool(self._past)
        self._position_ids = "position_ids" in inputs
        outputs = [o.name for o in session.get_outputs()]
        if "logits" not in outputs:
            raise QuantmatrixError(f"graph has no logits output (outputs: {outputs})")
        self._present = [n.replace("past_key_values.", "present.") for n in self._past]
        missing = [n for n in self._present if n not in outputs]
        if missing:
            raise QuantmatrixError(f"graph has past inputs but no outputs {missing[:2]}")
        # Empty-past shape [batch, heads, 0, head_dim] from the graph's declared dims.
        self._past_dims = {n: [d if isinstance(d, int) else None for d in inputs[n].shape] for n in self._past}

    def _feed(self, ids: np.ndarray, past: Any) -> dict[str, np.ndarray]:
        b, s = ids.shape
        start = 0 if not past else int(past[0].shape[2])
        feed = {"input_ids": ids, "attention_mask": np.ones((b, start + s), dtype=np.int64)}
        if self._position_ids:
            feed["position_ids"] = np.broadcast_to(np.arange(start, start + s, dtype=np.int64), (b, s)).copy()
        for i, name in enumerate(self._past):
            if past:
                feed[name] = past[i]
            else:
                dims = self._past_dims[name]
                feed[name] = np.zeros((b, dims[1] or 1, 0, dims[3] or 1), dtype=np.float32)
        return feed

    def step(self, ids: np.ndarray, past: Any, use_cache: bool) -> tuple[np.ndarray, Any]:
        if use_cache and not self.has_past:
            raise QuantmatrixError("graph was exported without past key/values: no KV cache")
        wanted = ["logits", *self._present] if use_cache else ["logits"]
        out = self._session.run(wanted, self._feed(ids, past))
        return out[0][:, -1], (out[1:] if use_cache else None)

    def logits(self, ids: np.ndarray) -> np.ndarray:
        return self._session.run(["logits"], self._feed(ids, None))[0]


def conv1d_to_linear(model: Any) -> int:
    """Replace every transformers Conv1D (x @ W + b, W [in, out]) by the equivalent nn.Linear; returns the count."""
    import torch
    from transformers.pytorch_utils import Conv1D

    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Conv1D):
                w = child.weight  # [in, out]
                linear = torch.nn.Linear(w.shape[0], w.shape[1])
                with torch.no_grad():
                    linear.weight.copy_(w.t())
                    linear.bias.copy_(child.bias)
                setattr(parent, name, linear)
                count += 1
    return count


def dynamic_int8_lm(model: Any) -> dict[str, Any]:
    """torch.ao dynamic INT8 of GPT-2: Conv1D -> Linear, then every Linear (lm_head included) quantised.

    The tied lm_head gets its own packed INT8 weight; the input embedding stays FP32.
    """
    import torch

    converted = conv1d_to_linear(model)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    int8_bytes = sum(m.weight.numel() for m in linears)  # one byte per weight once quantised
    torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
    return {"conv1d_converted": converted, "quantized_linear": len(linears), "int8_weight_bytes": int8_bytes}


def load_lm(path: Path, recipe: dict[str, Any] | None = None) -> Any:
    """An artefact's causal LM from its safetensors directory, with the named recipe re-applied."""
    return load_lm_with_facts(path, recipe)[0]


def load_lm_with_facts(path: Path, recipe: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True).eval()
    facts: dict[str, Any] = {}
    if recipe:
        if recipe.get("name") != "dynamic-int8-lm":
            raise QuantmatrixError(f"unknown causal-LM recipe {recipe.get('name')!r} (expected dynamic-int8-lm)")
        facts = dynamic_int8_lm(model)
    return model, facts


def kl_next_token(ref_logits: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """KL(softmax(ref) || softmax(variant)) per position, in float64."""
    a = ref_logits.astype(np.float64)
    b = logits.astype(np.float64)
    la = a - a.max(-1, keepdims=True)
    la -= np.log(np.exp(la).sum(-1, keepdims=True))
    lb = b - b.max(-1, keepdims=True)
    lb -= np.log(np.exp(lb).sum(-1, keepdims=True))
    return np.maximum((np.exp(la) * (la - lb)).sum(-1), 0.0)
