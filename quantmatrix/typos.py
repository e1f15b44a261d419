"""Deterministic, seeded typo injection for robustness runs: swaps, drops, doubled letters, keyboard slips.

`perturb(texts, rate, seed)` changes `rate` of the words of every text (stochastically rounded per
text, so the share over a corpus is `rate`): each chosen word gets exactly one typo, picked among
the kinds that change it. The random stream of a text depends only on (seed, rate, its index and
the text itself), so the same call gives the same texts in every process, whatever else is perturbed.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

KINDS = ("swap", "drop", "double", "neighbour")
METHOD = "typos-v1: one of swap / drop / double / keyboard-neighbour per chosen word"

# QWERTY neighbours (same row and the rows above/below), lowercase.
_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")
_NEIGHBOURS: dict[str, str] = {}
for _r, _row in enumerate(_ROWS):
    for _c, _ch in enumerate(_row):
        near = []
        for dr in (-1, 0, 1):
            rr = _r + dr
            if 0 <= rr < len(_ROWS):
                for dc in (-1, 0, 1):
                    cc = _c + dc
                    if (dr, dc) != (0, 0) and 0 <= cc < len(_ROWS[rr]):
                        near.append(_ROWS[rr][cc])
        _NEIGHBOURS[_ch] = "".join(near)

_TOKEN = re.compile(r"\S+")


@dataclass(frozen=True)
class Perturbed:
    """Perturbed texts and the counts behind them (words: tokens with at least one letter)."""

    texts: tuple[str, ...]
    rate: float
    seed: int
    words: int
    changed: int

    @property
    def share(self) -> float:
        return self.changed / self.words if self.words else 0.0


def _letters(word: str) -> list[int]:
    return [i for i, ch in enumerate(word) if ch.isalpha()]


def _options(word: str) -> list[str]:
    letters = _letters(word)
    kinds = []
    if any(word[i] != word[i + 1] and word[i + 1].isalpha() for i in letters if i + 1 < len(word)):
        kinds.append("swap")
    if len(letters) >= 2:
        kinds.append("drop")
    if letters:
        kinds.append("double")
    if any(word[i].lower() in _NEIGHBOURS for i in letters):
        kinds.append("neighbour")
    return kinds


def typo(word: str, kind: str, rng: random.Random) -> str:
    """`word` with one typo of `kind` (always different from `word`); `kind` must be applicable."""
    letters = _letters(word)
    if kind == "swap":
        i = rng.choice([i for i in letters if i + 1 < len(word) and word[i + 1].isalpha() and word[i] != word[i + 1]])
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if kind == "drop":
        i = rng.choice(letters)
        return word[:i] + word[i + 1 :]
    if kind == "double":
        i = rng.choice(letters)
        return word[: i + 1] + word[i] + word[i + 1 :]
    if kind == "neighbour":
        i = rng.choice([i for i in letters if word[i].lower() in _NEIGHBOURS])
        new = rng.choice(_NEIGHBOURS[word[i].lower()])
        return word[:i] + (new.upper() if word[i].isupper() else new) + word[i + 1 :]
    raise ValueError(f"unknown typo kind {kind!r}; expected one of {list(KINDS)}")


def perturb_text(text: str, rate: float, rng: random.Random) -> tuple[str, int, int]:
    """(perturbed text, words, words changed): round(rate x words) words, rounded stochastically."""
    spans = [m.span() for m in _TOKEN.finditer(text) if _options(m.group())]
    target = rate * len(spans)
    k = int(target) + (1 if rng.random() < target - int(target) else 0)
    chosen = sorted(rng.sample(range(len(spans)), min(k, len(spans))))
    out, last = [], 0
    for j in chosen:
        a, b = spans[j]
        word = text[a:b]
        out += [text[last:a], typo(word, rng.choice(_options(word)), rng)]
        last = b
    out.append(text[last:])
    return "".join(out), len(spans), len(chosen)


def perturb(texts: Sequence[str], rate: float, seed: int) -> Perturbed:
    """Every text with `rate` of its words mistyped; rate 0 returns the texts unchanged."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"typo rate must be between 0 and 1, got {rate!r}")
    out, words, changed = [], 0, 0
    for i, text in enumerate(texts):
        # String seeds are hashed with sha512 by `random`, so streams are stable across processes.
        rng = random.Random(f"{seed}:{rate!r}:{i}:{text}")
        new, n, c = perturb_text(text, rate, rng)
        out.append(new)
        words += n
        changed += c
    return Perturbed(texts=tuple(out), rate=rate, seed=seed, words=words, changed=changed)
