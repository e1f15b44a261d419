"""The turn coordinator with real processes: exclusive, randomly ordered slices; a killed participant."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from quantmatrix.turns import Coordinator, Participant, TurnsError

# A participant: ready with its cells, then for each turn spin for `slice` seconds and log when.
SCRIPT = """
import json, os, sys, time
from pathlib import Path
from quantmatrix.turns import Participant
d, name, log, die_at = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
p = Participant(d, name)
p.ready(["b1", "b8"])
count = {"b1": 0, "b8": 0}
rows = []
for turn in p.turns():
    if turn.cell is None:
        p.finish(turn)
        break
    if len(rows) == die_at:
        os._exit(3)
    t0 = time.time()
    while time.time() - t0 < 0.01:
        pass
    rows.append([turn.cell, turn.round, t0, time.time(), turn.group])
    count[turn.cell] += 1
    p.finish(turn, [c for c, n in count.items() if n >= 5])
log.write_text(json.dumps(rows))
"""


def _serve(tmp_path: Path, die_at: dict[str, int]) -> tuple[object, dict[str, list], dict[str, int]]:
    names = ["alpha", "beta", "gamma"]
    coord = Coordinator(tmp_path / "turns", names, seed=7, turn_timeout=30)
    procs = {
        n: subprocess.Popen(
            [
                sys.executable,
                "-c",
                SCRIPT,
                str(tmp_path / "turns"),
                n,
                str(tmp_path / f"{n}.json"),
                str(die_at.get(n, -1)),
            ],
            cwd=Path(__file__).resolve().parent.parent,
        )
        for n in names
    }
    try:
        report = coord.serve(lambda n: procs[n].poll() is None, log=lambda _: None)
    finally:
        coord.close()
    codes = {n: p.wait(timeout=30) for n, p in procs.items()}
    rows = {n: json.loads((tmp_path / f"{n}.json").read_text()) for n in names if codes[n] == 0}
    return report, rows, codes


def test_slices_never_overlap_and_each_round_has_every_cell(tmp_path: Path) -> None:
    report, rows, codes = _serve(tmp_path, {})
    assert codes == {"alpha": 0, "beta": 0, "gamma": 0}
    assert report.dropped == {}
    assert report.rounds == 5  # every cell asked for 5 slices
    spans = sorted((r[2], r[3]) for rs in rows.values() for r in rs)
    assert len(spans) == 3 * 2 * 5
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end  # one slice at a time, machine-wide
    for name, rs in rows.items():
        for rnd in range(5):
            assert sorted(r[0] for r in rs if r[1] == rnd) == ["b1", "b8"], name
    # Every turn names the coordinator, so results can pair slices across runs it served.
    assert len({r[4] for rs in rows.values() for r in rs}) == 1 and rows["alpha"][0][4]
    # Random order: the sequence of (participant, cell) slots is not the same every round.
    order = sorted((r[2], n, r[0], r[1]) for n, rs in rows.items() for r in rs)
    per_round = [tuple((n, c) for _, n, c, rnd in order if rnd == k) for k in range(5)]
    assert len(set(per_round)) > 1


def test_a_killed_participant_is_dropped_and_the_others_finish(tmp_path: Path) -> None:
    report, rows, codes = _serve(tmp_path, {"beta": 3})
    assert codes["beta"] == 3
    assert codes["alpha"] == 0 and codes["gamma"] == 0
    assert "beta" in report.dropped
    assert all(len(rs) == 10 for rs in rows.values())  # 2 cells x 5 slices each


def test_a_participant_sees_its_coordinator_vanish(tmp_path: Path) -> None:
    coord = Coordinator(tmp_path / "t", ["solo"])
    part = Participant(tmp_path / "t", "solo")
    part.ready(["c"])
    coord.close()  # the coordinator's process ended: the write end of the participant's pipe closed
    with pytest.raises(TurnsError, match="coordinator went away"):
        next(part.turns())
    part.close()


def test_a_participant_without_a_coordinator_says_so(tmp_path: Path) -> None:
    with pytest.raises(TurnsError, match="no such pipe"):
        Participant(tmp_path, "x")
    with pytest.raises(TurnsError, match="without spaces"):
        Coordinator(tmp_path, ["a b"])


def test_a_participant_that_never_gets_ready_is_dropped(tmp_path: Path) -> None:
    alive = threading.Event()
    alive.set()
    coord = Coordinator(tmp_path / "t", ["late"])
    t = threading.Timer(0.3, alive.clear)  # its process exits without ever saying ready
    t.start()
    t0 = time.monotonic()
    report = coord.serve(lambda _: alive.is_set(), log=lambda _: None)
    coord.close()
    assert report.dropped == {"late": "exited before it was ready"}
    assert time.monotonic() - t0 < 30
