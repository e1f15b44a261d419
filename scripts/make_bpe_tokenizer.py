"""Train the offline byte-level BPE tokenizer used when no GPT-2 tokenizer can be had.

    python scripts/make_bpe_tokenizer.py [OUT]   # default: rewrites quantmatrix/tokenizers/bpe-headlines9/

Nothing GPT-2 ships in a package here and no hub is reachable, so causal-LM runs on a random
distilgpt2 use this: GPT-2's pre-tokenisation and byte-level alphabet, merges learnt from the
bundled headlines9 train split. Deterministic (single-threaded training on a fixed text order). It
is NOT GPT-2's vocabulary: token ids mean nothing to real distilgpt2 weights.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "quantmatrix" / "tokenizers" / "bpe-headlines9"
VOCAB_SIZE = 2048
EOS = "<|endoftext|>"


def train(out: Path = OUT) -> None:
    os.environ["RAYON_NUM_THREADS"] = "1"  # merge ties are broken in a fixed order single-threaded
    sys.path.insert(0, str(ROOT))
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from quantmatrix.data import load_dataset
    from quantmatrix.spec import DatasetSpec

    data = load_dataset(DatasetSpec(name="headlines9", source="bundled:headlines9"))
    texts = [e.text for e in data.split("train")]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS, unk_token=EOS)
    fast.model_max_length = 1024
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out))
    print(f"{out}: vocab {fast.vocab_size}, trained on {len(texts)} headlines")


if __name__ == "__main__":
    train(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)
