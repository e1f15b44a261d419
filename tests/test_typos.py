"""Seeded typo injection: deterministic across processes, the requested share of words, one typo per word."""

from __future__ import annotations

import random
import subprocess
import sys

import pytest

from quantmatrix.data import load_dataset
from quantmatrix.spec import DatasetSpec
from quantmatrix.typos import KINDS, perturb, typo


@pytest.fixture(scope="module")
def texts() -> list[str]:
    data = load_dataset(DatasetSpec(name="headlines9", source="bundled:headlines9"))
    return [e.text for e in data.split("test")]


def _words(text: str) -> list[str]:
    return text.split()


def _one_edit_apart(a: str, b: str) -> bool:
    """True when b is a with one swap of neighbours, one letter dropped, doubled or replaced."""
    if len(b) == len(a):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        if len(diff) == 1:
            return True
        return len(diff) == 2 and diff[1] == diff[0] + 1 and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]]
    if len(b) == len(a) - 1:
        return any(a[:i] + a[i + 1 :] == b for i in range(len(a)))
    if len(b) == len(a) + 1:
        return any(b[:i] + b[i + 1 :] == a and b[i] in (b[i - 1 : i] + b[i + 1 : i + 2]) for i in range(len(b)))
    return False


def test_rate_zero_is_the_identity(texts):
    p = perturb(texts, 0.0, seed=1)
    assert p.texts == tuple(texts) and p.changed == 0 and p.words > len(texts)


@pytest.mark.parametrize("rate", [0.05, 0.10, 0.20])
def test_share_of_words_changed_matches_the_rate(texts, rate):
    p = perturb(texts, rate, seed=1234)
    # Counted from the texts themselves, not from what perturb reports.
    changed = sum(
        sum(a != b for a, b in zip(_words(t), _words(n), strict=True)) for t, n in zip(texts, p.texts, strict=True)
    )
    assert changed == p.changed
    assert abs(p.share - rate) < 0.25 * rate, (p.share, rate)  # 800 texts: stochastic rounding stays close
    for t, n in zip(texts, p.texts, strict=True):
        for a, b in zip(_words(t), _words(n), strict=True):
            assert a == b or _one_edit_apart(a, b), (a, b)


def test_same_seed_same_texts_other_seed_other_texts(texts):
    a, b, c = perturb(texts, 0.2, seed=7), perturb(texts, 0.2, seed=7), perturb(texts, 0.2, seed=8)
    assert a.texts == b.texts and a.texts != c.texts
    # A text's typos do not depend on what else is perturbed with it (only on seed, rate, index, text).
    assert perturb(texts[:5], 0.2, seed=7).texts == a.texts[:5]


def test_deterministic_across_processes(texts):
    code = (
        "from quantmatrix.typos import perturb; import sys, json; "
        "print(json.dumps(perturb(json.loads(sys.stdin.read()), 0.1, 99).texts))"
    )
    import json

    runs = [
        subprocess.run(
            [sys.executable, "-c", code],
            input=json.dumps(texts[:50]),
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": str(s), "PATH": ""},
        ).stdout
        for s in (1, 2)
    ]
    assert runs[0] == runs[1] and json.loads(runs[0]) == list(perturb(texts[:50], 0.1, 99).texts)


def test_every_kind_changes_the_word_and_is_used(texts):
    rng = random.Random(0)
    for kind in KINDS:
        for word in ("Stocks", "rally", "Fed's", "COVID-19"):
            new = typo(word, kind, rng)
            assert new != word and _one_edit_apart(word, new), (kind, word, new)
    assert typo("Qa", "neighbour", random.Random(3))[0] in "WASZ"  # case kept
    p = perturb(texts, 1.0, seed=3)
    edits = {"drop": 0, "double": 0, "same_len": 0}
    for t, n in zip(texts, p.texts, strict=True):
        for a, b in zip(_words(t), _words(n), strict=True):
            edits["drop" if len(b) < len(a) else "double" if len(b) > len(a) else "same_len"] += 1
    assert all(v > 100 for v in edits.values()), edits


def test_bad_rate_and_kind_are_refused(texts):
    with pytest.raises(ValueError, match="between 0 and 1"):
        perturb(texts, 1.5, seed=1)
    with pytest.raises(ValueError, match="unknown typo kind"):
        typo("word", "shout", random.Random(0))
