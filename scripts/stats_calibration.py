"""Calibration of quantmatrix.stats on seeded synthetic lognormal samples (numbers in docs/statistics.md).

python scripts/stats_calibration.py [--aa 5000] [--coverage 400]
prints the A/A false-positive rate of change_test and the coverage of ratio_ci's 95% CI.
"""

from __future__ import annotations

import argparse

import numpy as np

from quantmatrix.stats import change_test, ratio_ci, slices_of


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--aa", type=int, default=5000, help="A/A trials (identical distributions)")
    ap.add_argument("--coverage", type=int, default=400, help="trials with a true speed-up of 4")
    ap.add_argument("--seed", type=int, default=123)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)

    def draw(median: float) -> np.ndarray:
        return median * rng.lognormal(0.0, 0.1, 200)

    flagged = 0
    for _ in range(args.aa):
        test = change_test(slices_of(draw(10.0)), slices_of(draw(10.0)))
        flagged += bool(test and test.significant)
    print(f"A/A: {flagged} of {args.aa} flagged ({flagged / args.aa:.3f}; nominal 0.05)")
    covered = 0
    for _ in range(args.coverage):
        ci = ratio_ci(slices_of(draw(20.0)), slices_of(draw(5.0)))
        covered += bool(ci and ci.covers(4.0))
    share = covered / args.coverage
    print(f"speed-up CI covered the true 4.0 in {covered} of {args.coverage} ({share:.4f}; nominal 0.95)")


if __name__ == "__main__":
    main()
