"""Uncertainty of latencies and speed-ups: seeded block-bootstrap CIs and a rank test for a change.

Samples of one timed loop are not independent (a slow phase of the host spans many calls), so every
method here resamples *slices* (adjacent runs of samples), never single calls. Slices that carry an
interleaving `round` present on both sides are paired: the bootstrap resamples rounds, so a slow phase
that hit both cells alike cancels in the ratio. Results without slices are cut into adjacent chunks
and treated as unpaired. docs/statistics.md explains the methods and how to gate CI on them.
Core module: numpy and the standard library only.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

from quantmatrix.records import LatencySlice

LEVEL = 0.95
RESAMPLES = 2000
SEED = 0
# Results without slices are cut into at most this many adjacent chunks of at least MIN_CHUNK samples.
CHUNKS = 20
MIN_CHUNK = 5
# Fewest slices per side (or paired rounds) behind a CI or a test; fewer give no interval at all.
MIN_SLICES = 3
# Values per side kept for the bootstrap: larger slices are thinned to evenly spaced order statistics,
# which keeps each slice's distribution and share of the pool while bounding the work per resample.
POOL_LIMIT = 2000
ALPHA = 0.05


@dataclass(frozen=True)
class Slices:
    """One latency's samples as slices; `rounds[i]` is slice i's interleaving round, or None (unpaired).

    A round is any hashable key; equal keys on two sides mean "measured side by side". Results name
    theirs (turn group, round), or (run id, repeat, round) when they predate turn groups
    (`slices_of(group=...)`), so only slices one coordinator served pair.
    """

    parts: tuple[np.ndarray, ...]
    rounds: tuple[Hashable, ...] | None
    # Each part's stratum (a result's (run id, repeat)), or None: one stratum. A latency of several
    # repeats is the median of the repeats' medians, and the bootstraps resample within each stratum
    # and take that same statistic, so an interval is always about the number it is printed beside.
    strata: tuple[Hashable, ...] | None = None

    @property
    def count(self) -> int:
        return len(self.parts)

    def pooled(self) -> np.ndarray:
        return np.concatenate(self.parts) if self.parts else np.empty(0)

    def method(self) -> str:
        return "interleaved slices" if self.rounds is not None else "adjacent chunks"


@dataclass(frozen=True)
class Interval:
    """A point estimate with its bootstrap CI and what it stands on (e.g. "paired, 20 rounds")."""

    value: float
    low: float
    high: float
    slices: int
    method: str
    level: float = LEVEL

    def covers(self, x: float) -> bool:
        return self.low <= x <= self.high

    @property
    def paired(self) -> bool:
        """Both sides were resampled by shared rounds (measured side by side)."""
        return self.method.startswith("paired")

    def describe(self, spec: str = ".2f", suffix: str = "") -> str:
        return (
            f"{self.value:{spec}}{suffix} [{self.low:{spec}}, {self.high:{spec}}] ({self.level:.0%} CI, {self.method})"
        )


@dataclass(frozen=True)
class ChangeTest:
    """A two-sided test of "these two latencies differ"; `method` names the test and its inputs."""

    p_value: float
    significant: bool
    method: str
    alpha: float = ALPHA
    direction: int = 0  # +1: the other side's latencies lie higher (slower), -1: lower, 0: no side


def slices_of(
    samples: Sequence[float] | np.ndarray,
    slices: Sequence[LatencySlice] | None = None,
    *,
    source: str = "latency",
    group: tuple[Hashable, ...] = (),
) -> Slices:
    """Cut samples into the recorded slices, or (none recorded) into up to CHUNKS adjacent chunks.

    A recorded slice's round becomes `(*group, round)`: pass what identifies the interleaving group it
    was timed in (a result's run id and repeat), so only slices of the same group and round pair.
    """
    values = np.asarray(samples, dtype=float)
    if slices:
        parts: list[np.ndarray] = []
        rounds: list[Hashable] = []
        for i, s in enumerate(slices):
            if s.first + s.count > len(values):
                raise ValueError(
                    f"{source}: slices[{i}] covers samples {s.first}..{s.first + s.count - 1} "
                    f"but there are only {len(values)} samples"
                )
            parts.append(values[s.first : s.first + s.count])
            rounds.append((*group, s.round) if group else s.round)
        return Slices(tuple(parts), tuple(rounds), (group,) * len(parts) if group else None)
    chunks = min(CHUNKS, len(values) // MIN_CHUNK)
    if chunks < 1:
        return Slices((), None)
    return Slices(tuple(np.array_split(values, chunks)), None, (group,) * chunks if group else None)


def combine(parts: Sequence[Slices]) -> Slices:
    """Slices of several rounds of one cell, pooled; pairing survives only if every part has rounds."""
    rounds: tuple[Hashable, ...] | None = ()
    strata: tuple[Hashable, ...] | None = ()
    for p in parts:
        rounds = rounds + p.rounds if rounds is not None and p.rounds is not None else None
        strata = strata + p.strata if strata is not None and p.strata is not None else None
    return Slices(tuple(a for p in parts for a in p.parts), rounds, strata)


def _strata(s: Slices) -> list[list[int]]:
    """Indices of `s.parts` per stratum, in order of first appearance (one stratum without strata)."""
    if s.strata is None:
        return [list(range(s.count))]
    out: dict[Hashable, list[int]] = {}
    for i, key in enumerate(s.strata):
        out.setdefault(key, []).append(i)
    return list(out.values())


def _side(s: Slices, rng: np.random.Generator, resamples: int) -> tuple[float, np.ndarray]:
    """One latency's median of its strata's medians, and that statistic per resample: each stratum's
    slices resampled with replacement on their own."""
    points, boots = [], []
    for idx in _strata(s):
        parts = [s.parts[i] for i in idx]
        points.append(float(np.median(np.concatenate(parts))))
        boots.append(_boot_medians(_matrix(_thinned(parts)), rng.integers(0, len(idx), size=(resamples, len(idx)))))
    return float(np.median(points)), np.median(np.stack(boots), axis=0)


def _thinned(parts: Sequence[np.ndarray]) -> list[np.ndarray]:
    total = sum(len(p) for p in parts)
    step = math.ceil(total / POOL_LIMIT)
    if step <= 1:
        return list(parts)
    return [
        np.sort(p)[step // 2 :: step] if len(p) > step else np.sort(p)[len(p) // 2 : len(p) // 2 + 1] for p in parts
    ]


def _matrix(parts: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Slices as rows of one NaN-padded matrix and their lengths, so a resample is one fancy index."""
    width = max(len(p) for p in parts)
    out = np.full((len(parts), width), np.nan)
    for i, p in enumerate(parts):
        out[i, : len(p)] = p
    return out, np.array([len(p) for p in parts])


def _boot_medians(groups: tuple[np.ndarray, np.ndarray], picks: np.ndarray) -> np.ndarray:
    """Median of the pooled samples of each resample; `picks` is (resamples, slices drawn)."""
    values, lengths = groups
    out = np.empty(len(picks))
    for start in range(0, len(picks), 250):  # bounded memory per batch of resamples
        rows = picks[start : start + 250]
        # np.sort puts the NaN padding last, so the median sits at the middle of each row's real values
        # (np.nanmedian would loop in Python over the rows).
        pooled = np.sort(values[rows].reshape(len(rows), -1), axis=1)
        n = lengths[rows].sum(axis=1)
        lo = np.take_along_axis(pooled, ((n - 1) // 2)[:, None], axis=1)[:, 0]
        hi = np.take_along_axis(pooled, (n // 2)[:, None], axis=1)[:, 0]
        out[start : start + 250] = (lo + hi) / 2
    return out


def _percentiles(values: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def median_ci(s: Slices, *, seed: int = SEED, resamples: int = RESAMPLES, level: float = LEVEL) -> Interval | None:
    """The median of one latency with a block-bootstrap CI (slices resampled with replacement)."""
    if s.count < MIN_SLICES:
        return None
    value, boots = _side(s, np.random.default_rng(seed), resamples)
    low, high = _percentiles(boots, level)
    return Interval(value, low, high, s.count, f"{s.count} {s.method()}", level)


def _by_round(s: Slices, keep: set[Hashable]) -> dict[Hashable, np.ndarray]:
    out: dict[Hashable, list[np.ndarray]] = {}
    for part, r in zip(s.parts, s.rounds or (), strict=True):
        if r in keep:
            out.setdefault(r, []).append(part)
    return {r: np.concatenate(v) for r, v in out.items()}


def shared_rounds(a: Slices, b: Slices) -> list[Hashable]:
    """Rounds both latencies were measured in, side by side; empty unless both carry rounds."""
    if a.rounds is None or b.rounds is None:
        return []
    return sorted(set(a.rounds) & set(b.rounds), key=repr)


def ratio_ci(
    base: Slices, other: Slices, *, seed: int = SEED, resamples: int = RESAMPLES, level: float = LEVEL
) -> Interval | None:
    """median(base) / median(other) (a speed-up of `other` over `base`) with a block-bootstrap CI.

    Paired when both sides share at least MIN_SLICES interleaving rounds: rounds are resampled and
    both sides take the same ones. Otherwise each side's slices are resampled on their own.
    """
    found = ratio_boots(base, other, np.random.default_rng(seed), resamples)
    if found is None:
        return None
    value, boots, method, n = found
    low, high = _percentiles(boots, level)
    return Interval(value, low, high, n, method, level)


def ratio_boots(
    base: Slices, other: Slices, rng: np.random.Generator, resamples: int = RESAMPLES
) -> tuple[float, np.ndarray, str, int] | None:
    """median(base) / median(other), its bootstrap draws, what they stand on and how many slices/rounds."""
    rounds = shared_rounds(base, other)
    if len(rounds) >= MIN_SLICES:
        a, b = _by_round(base, set(rounds)), _by_round(other, set(rounds))
        by_stratum: dict[Hashable, list[Hashable]] = {}
        for r in rounds:  # a round keyed (run, repeat, round) belongs to the stratum (run, repeat)
            by_stratum.setdefault(r[:-1] if isinstance(r, tuple) else None, []).append(r)
        points_a, points_b, boots_a, boots_b = [], [], [], []
        for rs in by_stratum.values():
            picks = rng.integers(0, len(rs), size=(resamples, len(rs)))
            boots_a.append(_boot_medians(_matrix(_thinned([a[r] for r in rs])), picks))
            boots_b.append(_boot_medians(_matrix(_thinned([b[r] for r in rs])), picks))
            points_a.append(float(np.median(np.concatenate([a[r] for r in rs]))))
            points_b.append(float(np.median(np.concatenate([b[r] for r in rs]))))
        # The ratio within each stratum (one coordinator's turns: both sides measured side by side), then
        # the median over strata: a stratum whose processes all ran slow cancels, as its rounds do.
        boots = np.median(np.stack(boots_a) / np.stack(boots_b), axis=0)
        value = float(np.median(np.array(points_a) / np.array(points_b)))
        method, n = f"paired, {len(rounds)} rounds", len(rounds)
    else:
        if min(base.count, other.count) < MIN_SLICES:
            return None
        value_a, boots_a_side = _side(base, rng, resamples)
        value_b, boots_b_side = _side(other, rng, resamples)
        boots = boots_a_side / boots_b_side
        value = value_a / value_b
        each = f"{base.count} slices each" if base.count == other.count else f"{base.count}+{other.count} slices"
        method, n = f"unpaired, {each}", min(base.count, other.count)
    return value, boots, method, n


def relative_change(
    cell_a: Slices,
    ref_a: Slices,
    cell_b: Slices,
    ref_b: Slices,
    *,
    seed: int = SEED,
    resamples: int = RESAMPLES,
    level: float = LEVEL,
    alpha: float = ALPHA,
) -> tuple[Interval, ChangeTest] | None:
    """How a cell's time relative to its run's baseline moved from run A to run B: (cell_b / ref_b) /
    (cell_a / ref_a), each in-run ratio measured side by side (paired where interleaved), so a change of
    the host's speed between the runs, which hits a cell and its baseline alike, cancels.

    The CI is the percentile bootstrap of that quotient (the two runs resampled independently); the
    test is the bootstrap's own: two-sided p = 2 x the share of draws on the far side of 1.
    """
    rng = np.random.default_rng(seed)
    a = ratio_boots(cell_a, ref_a, rng, resamples)
    b = ratio_boots(cell_b, ref_b, rng, resamples)
    if a is None or b is None:
        return None
    boots = b[1] / a[1]
    low, high = _percentiles(boots, level)
    interval = Interval(b[0] / a[0], low, high, min(a[3], b[3]), f"relative to the baseline; {a[2]} / {b[2]}", level)
    p = min(1.0, max(1.0 / resamples, 2 * min(float(np.mean(boots <= 1)), float(np.mean(boots >= 1)))))
    method = f"bootstrap of the in-run ratios ({a[2]}; {b[2]})"
    return interval, ChangeTest(p, p < alpha, method, alpha, int(np.sign(float(np.median(boots)) - 1)))


def _ranks(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Average ranks (1-based) of `values`, and the sizes of its groups of ties."""
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values))
    uniq, first, counts = np.unique(values[order], return_index=True, return_counts=True)
    del uniq
    for start, c in zip(first, counts, strict=True):
        ranks[order[start : start + c]] = start + (c + 1) / 2
    return ranks, counts


def _two_sided(z: float) -> float:
    return math.erfc(abs(z) / math.sqrt(2))


def mann_whitney(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided p of the Mann-Whitney U test, normal approximation with tie and continuity corrections."""
    n1, n2 = len(a), len(b)
    ranks, ties = _ranks(np.concatenate([a, b]))
    u = ranks[:n1].sum() - n1 * (n1 + 1) / 2
    n = n1 + n2
    var = n1 * n2 / 12 * ((n + 1) - float((ties**3 - ties).sum()) / (n * (n - 1)))
    if var <= 0:
        return 1.0
    return min(1.0, _two_sided(max(abs(u - n1 * n2 / 2) - 0.5, 0.0) / math.sqrt(var)))


def wilcoxon_signed_rank(d: np.ndarray) -> float:
    """Two-sided p of the Wilcoxon signed-rank test (zeros dropped), normal approximation, corrected."""
    d = d[d != 0]
    n = len(d)
    if n == 0:
        return 1.0
    ranks, ties = _ranks(np.abs(d))
    w = ranks[d > 0].sum()
    var = n * (n + 1) * (2 * n + 1) / 24 - float((ties**3 - ties).sum()) / 48
    if var <= 0:
        return 1.0
    return min(1.0, _two_sided(max(abs(w - n * (n + 1) / 4) - 0.5, 0.0) / math.sqrt(var)))


def change_test(base: Slices, other: Slices, *, alpha: float = ALPHA) -> ChangeTest | None:
    """Did the latency change? Compares slice medians, so one slow phase counts once, not per call.

    Paired rounds: Wilcoxon signed-rank on each round's log(median other / median base). Otherwise
    Mann-Whitney U on the two sets of slice medians. Two-sided; significant when p < alpha.
    """
    rounds = shared_rounds(base, other)
    if len(rounds) >= MIN_SLICES:
        a, b = _by_round(base, set(rounds)), _by_round(other, set(rounds))
        d = np.array([math.log(float(np.median(b[r])) / float(np.median(a[r]))) for r in rounds])
        p = wilcoxon_signed_rank(d)
        method = f"Wilcoxon signed-rank on {len(rounds)} paired rounds"
        ranks, _ = _ranks(np.abs(d[d != 0]))
        tilt = float(ranks[d[d != 0] > 0].sum() - ranks.sum() / 2)  # positive ranks above half: slower
    else:
        if min(base.count, other.count) < MIN_SLICES:
            return None
        ma, mb = np.array([np.median(x) for x in base.parts]), np.array([np.median(x) for x in other.parts])
        p = mann_whitney(ma, mb)
        method = f"Mann-Whitney U on {base.count}+{other.count} slice medians"
        tilt = float((mb[:, None] > ma[None, :]).sum() - (mb[:, None] < ma[None, :]).sum())
    return ChangeTest(p, p < alpha, method, alpha, int(np.sign(tilt)))
