"""Turns: cells that are compared take turns in short, randomly ordered slices, each in its own process.

Google Benchmark's random interleaving, across processes and containers: the launcher runs one
`Coordinator`; every run job of a comparison group is a `Participant`. Once each participant has
loaded, guarded and scored its artefact it says `ready` with its cells, and blocks. The coordinator
then grants one turn at a time — a (participant, cell) slot — in a fresh random order every round,
so a slow phase of a shared host hits every cell alike, and slices of one round are measured side by
side (paired). Only the participant holding the turn runs; the others sleep in a blocking read.

They talk through named pipes in one directory on a mount every job shares (the results directory),
so it works for subprocesses and for containers alike, and nothing busy-waits:

    <dir>/coordinator.fifo      participants -> coordinator: `ready <name> <json>` / `done <name> <seq> <json>`
    <dir>/<name>.fifo           coordinator -> one participant: `<json turn>`; {"cell": null} ends it

Every turn carries the coordinator's `group`, an id made fresh for each coordinator: results record it,
and slices of two cells pair when they share group and round, even when the cells belong to two runs
(`python -m bench --side-by-side` puts another checkout's run jobs into this run's turn groups).

A participant that dies or stops answering is dropped (its cells are failed by its launcher) and the
others finish; a participant whose coordinator dies sees end-of-file and stops with an error.
Messages are single lines under PIPE_BUF (4096 bytes), so writes from many processes never interleave.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import select
import stat
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quantmatrix.errors import QuantmatrixError
from quantmatrix.machine_lock import give_way_to

INBOX = "coordinator.fifo"
PIPE_BUF = 4096


class TurnsError(QuantmatrixError):
    """The turn protocol broke: a coordinator vanished, or a message could not be understood."""


def _fifo(path: Path) -> None:
    if path.exists():
        if not stat.S_ISFIFO(path.stat().st_mode):
            raise TurnsError(f"{path}: exists and is not a named pipe")
        return
    os.mkfifo(path)
    # Containers may run as another user than the launcher (the image's user when it runs as root).
    os.chmod(path, 0o666)


def _send(fd: int, message: str) -> None:
    data = (message + "\n").encode()
    if len(data) > PIPE_BUF:
        raise TurnsError(f"turn message of {len(data)} bytes is over PIPE_BUF ({PIPE_BUF}): {message[:80]}...")
    os.write(fd, data)


@dataclass(frozen=True)
class Turn:
    """One slot granted: run `cell` for one slice. `group` and `round` pair slices measured side by side."""

    seq: int
    cell: str | None
    round: int
    group: str = ""


@dataclass
class TurnsReport:
    """What the coordinator did: rounds served, turns granted, and who was dropped and why."""

    rounds: int = 0
    turns: int = 0
    dropped: dict[str, str] = field(default_factory=dict)
    waited_ready_s: float = 0.0


class Coordinator:
    """Grants turns to participants in random order, round after round, until every cell has enough.

    `alive(name)` says whether a participant's process still runs (its launcher knows); a participant
    that exits, or does not finish a turn within `turn_timeout` seconds, is dropped.
    """

    def __init__(
        self,
        directory: Path,
        participants: Sequence[str],
        *,
        seed: int = 0,
        max_rounds: int = 1000,
        min_rounds: int = 1,
        turn_timeout: float = 300.0,
    ) -> None:
        if len(set(participants)) != len(participants):
            raise TurnsError(f"participant names must be unique: {list(participants)}")
        bad = [n for n in participants if not n or any(c.isspace() for c in n) or "/" in n]
        if bad:
            raise TurnsError(f"participant names must be non-empty, without spaces or '/': {bad}")
        self.dir = directory
        self.group = uuid.uuid4().hex[:16]  # this coordinator's turns, as results record them
        self.names = list(participants)
        self.rng = random.Random(seed)
        self.max_rounds, self.min_rounds, self.turn_timeout = max_rounds, min_rounds, turn_timeout
        self.dir.mkdir(parents=True, exist_ok=True)
        _fifo(self.dir / INBOX)
        # O_RDWR: opening never blocks, and the pipe never reads end-of-file while we hold it.
        self._inbox = os.open(self.dir / INBOX, os.O_RDWR | os.O_NONBLOCK)
        self._out: dict[str, int] = {}
        for name in self.names:
            _fifo(self.dir / f"{name}.fifo")
            self._out[name] = os.open(self.dir / f"{name}.fifo", os.O_RDWR | os.O_NONBLOCK)
        self._buffer = b""
        self._pending: list[tuple[str, list[str]]] = []

    def close(self) -> None:
        for fd in [self._inbox, *self._out.values()]:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._out.clear()

    def __enter__(self) -> Coordinator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _messages(self, timeout: float) -> Iterator[tuple[str, str, str]]:
        """(kind, participant, rest) lines from the inbox, waiting up to `timeout` seconds for the first."""
        ready, _, _ = select.select([self._inbox], [], [], timeout)
        if ready:
            with contextlib.suppress(BlockingIOError):
                self._buffer += os.read(self._inbox, 65536)
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            kind, name, rest = ([*line.decode().split(" ", 2), "", ""])[:3]
            yield kind, name, rest

    def _drop(self, report: TurnsReport, name: str, why: str, log: Callable[[str], None]) -> None:
        if name not in report.dropped:
            report.dropped[name] = why
            log(f"[turns ] {name}: dropped ({why}); the others go on")

    def serve(
        self,
        alive: Callable[[str], bool],
        log: Callable[[str], None] = print,
        ready_timeout: float = 7200.0,
        exclusive: Callable[[], AbstractContextManager[Any]] | None = None,
    ) -> TurnsReport:
        """Wait for every live participant to be ready, then grant turns until all cells have enough.

        `exclusive()` is entered once everyone is ready and held until the last turn: the machine-wide
        timing lock, so that no other run times while these turns go on (and none waits while they load).
        """
        report = TurnsReport()
        cells: dict[str, list[str]] = {}
        t0 = time.monotonic()
        while len(cells) + len(report.dropped) < len(self.names):
            for kind, name, rest in self._messages(0.5):
                if kind == "ready" and name in self._out:
                    cells[name] = [str(c) for c in json.loads(rest)]
            for name in self.names:
                if name not in cells and not alive(name):
                    self._drop(report, name, "exited before it was ready", log)
            if time.monotonic() - t0 > ready_timeout:
                for name in self.names:
                    if name not in cells:
                        self._drop(report, name, f"not ready after {ready_timeout:.0f} s", log)
        report.waited_ready_s = time.monotonic() - t0
        enough: dict[tuple[str, str], bool] = {(n, c): False for n, cs in cells.items() for c in cs}
        live = [n for n in self.names if n in cells and n not in report.dropped]
        log(f"[turns ] {len(live)} participants, {len(enough)} cells ready after {report.waited_ready_s:.0f} s")
        with exclusive() if exclusive is not None else nullcontext():
            seq = self._rounds(live, cells, enough, alive, report, log)
            # Each participant's last turn is exclusive too: it may probe the machine after timing.
            for name in live:
                if name not in report.dropped:
                    seq += 1
                    self._grant(name, Turn(seq, None, report.rounds, self.group), alive, report, log)
        return report

    def _rounds(
        self,
        live: list[str],
        cells: dict[str, list[str]],
        enough: dict[tuple[str, str], bool],
        alive: Callable[[str], bool],
        report: TurnsReport,
        log: Callable[[str], None],
    ) -> int:
        seq = 0
        t_rounds = time.monotonic()
        while report.rounds < self.max_rounds:
            slots = [(n, c) for n in live if n not in report.dropped for c in cells[n]]
            if not slots:
                break
            self.rng.shuffle(slots)
            for name, cell in slots:
                if name in report.dropped:
                    continue
                seq += 1
                reply = self._grant(name, Turn(seq, cell, report.rounds, self.group), alive, report, log)
                report.turns += 1
                if reply is not None:
                    for c in reply.get("enough", []):
                        if (name, c) in enough:
                            enough[(name, c)] = True
            report.rounds += 1
            done = [k for k, v in enough.items() if v or k[0] in report.dropped]
            if report.rounds % 10 == 0 or report.rounds == 1:
                per_round = (time.monotonic() - t_rounds) / report.rounds
                log(f"[turns ] round {report.rounds}: {len(done)}/{len(enough)} cells have enough "
                    f"({per_round:.2f} s a round)")  # fmt: skip
            if report.rounds >= self.min_rounds and len(done) == len(enough):
                break
        return seq

    def _grant(
        self, name: str, turn: Turn, alive: Callable[[str], bool], report: TurnsReport, log: Callable[[str], None]
    ) -> dict[str, Any] | None:
        """Give `name` the turn and wait for its `done`; None (and the participant dropped) if it never comes."""
        try:
            message = {"seq": turn.seq, "cell": turn.cell, "round": turn.round, "group": turn.group}
            _send(self._out[name], json.dumps(message))
        except OSError as e:
            self._drop(report, name, f"cannot write its pipe: {e}", log)
            return None
        deadline = time.monotonic() + self.turn_timeout
        while time.monotonic() < deadline:
            for kind, sender, rest in self._messages(0.5):
                seq, _, body = rest.partition(" ")
                if kind == "done" and sender == name and seq == str(turn.seq):
                    return dict(json.loads(body)) if body else {}
                if kind == "ready":
                    self._drop(report, sender, "became ready after turns had started", log)
            if not alive(name):
                self._drop(report, name, "exited during its turn", log)
                return None
        self._drop(report, name, f"did not finish a turn within {self.turn_timeout:.0f} s", log)
        return None


class Participant:
    """One run job's side: say `ready` with its cells, then run a slice per turn until told to stop."""

    def __init__(self, directory: Path, name: str) -> None:
        if not name or any(c.isspace() for c in name):
            raise TurnsError(f"participant name {name!r}: must be non-empty, without spaces")
        self.dir, self.name = directory, name
        for path in (directory / INBOX, directory / f"{name}.fifo"):
            if not path.exists():
                raise TurnsError(f"{path}: no such pipe; was this job started by a coordinator for {directory}?")
        self._in: int | None = None
        self._out: int | None = None
        self._buffer = b""

    def ready(self, cells: Sequence[str]) -> None:
        # From here the coordinator holds the timing turn for this job's own turns: giving way to it
        # would wait forever.
        give_way_to(None)
        self._out = os.open(self.dir / INBOX, os.O_WRONLY)
        self._in = os.open(self.dir / f"{self.name}.fifo", os.O_RDONLY)
        _send(self._out, f"ready {self.name} {json.dumps(list(cells), separators=(',', ':'))}")

    def _next(self) -> Turn:
        assert self._in is not None, "ready() first"
        while b"\n" not in self._buffer:
            chunk = os.read(self._in, 4096)  # blocks without using the CPU
            if not chunk:
                raise TurnsError(f"{self.dir}: the coordinator went away (its pipe closed)")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        msg = json.loads(line)
        return Turn(seq=int(msg["seq"]), cell=msg["cell"], round=int(msg["round"]), group=str(msg.get("group", "")))

    def turns(self) -> Iterator[Turn]:
        """Turns in the order granted. The caller reports after each with `finish(turn, enough)`.

        The last turn has `cell=None`: the participant's exclusive moment after all slices (probe, then
        stop). After it the iterator ends.
        """
        while True:
            turn = self._next()
            yield turn
            if turn.cell is None:
                return

    def finish(self, turn: Turn, enough: Sequence[str] = ()) -> None:
        """Hand the turn back; `enough` lists this participant's cells that need no more slices."""
        assert self._out is not None, "ready() first"
        _send(self._out, f"done {self.name} {turn.seq} {json.dumps({'enough': list(enough)})}")

    def close(self) -> None:
        for fd in (self._in, self._out):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._in = self._out = None
