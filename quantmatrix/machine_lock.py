"""Locks shared by every quantmatrix process on one machine, and how busy the machine was meanwhile.

Locks are `flock(2)` on files under a directory every job can reach (the artefact store's `.locks/`,
which every container already mounts): the kernel drops a lock when its holder dies, however it
died, so a lock left by a killed process is simply taken by the next one, in any container or
invocation. The holder writes who it is into the file, for the progress line of whoever waits.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

LOCK_DIR = ".locks"
TIMING_LOCK = "timing.lock"
# A timed loop during which other work took more than this share of the usable cores is `disturbed`.
DISTURBED_SHARE = 0.25
# Background load is measured over at least this long, however short the loop: /proc/stat counts in
# 10 ms ticks, so a 5 ms loop alone would read as 0 or 2 cores of load by chance.
MIN_WINDOW_S = 0.5
# Before timing, wait up to this long (holding the turn) for other work to drop below the share.
QUIET_WAIT_S = 3.0
QUIET_SAMPLE_S = 0.25
POLL_S = 0.05
PROGRESS_EVERY_S = 30.0


def lock_dir(store_root: Path) -> Path:
    return Path(store_root) / LOCK_DIR


def _open_lock_file(path: Path) -> int:
    """Open (creating) a lock file any uid can lock: containers run as another user than the host."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(PermissionError):
        os.chmod(path.parent, 0o1777)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except PermissionError:
        return os.open(path, os.O_RDONLY)  # flock needs no write access; the holder note is skipped
    with contextlib.suppress(PermissionError):
        os.fchmod(fd, 0o666)
    return fd


class FileLock:
    """An exclusive `flock` on one file; `holder()` says who holds it (as it wrote itself in)."""

    # Lock files this process holds now, whichever FileLock holds them: `give_way` must not wait on a
    # turn its own process holds (a second flock on the same file from one process would block on itself).
    held_here: ClassVar[set[Path]] = set()

    def __init__(self, path: Path, what: str) -> None:
        self.path = Path(path)
        self.what = what
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def try_acquire(self) -> bool:
        if self._fd is not None:
            raise RuntimeError(f"{self.path}: already held by this process")
        fd = _open_lock_file(self.path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        FileLock.held_here.add(self.path.resolve())
        self._write_holder(fd)
        return True

    def acquire(self, *, log: Callable[[str], None] | None = None, timeout: float | None = None) -> float:
        """Block until held; return the seconds waited. Waiting is announced, then repeated every 30 s."""
        t0 = time.monotonic()
        if self.try_acquire():
            return 0.0
        if log is not None:
            log(f"[wait  ] {self.what}: {self.describe_holder()}")
        next_note = t0 + PROGRESS_EVERY_S
        while not self.try_acquire():
            now = time.monotonic()
            if timeout is not None and now - t0 >= timeout:
                raise TimeoutError(f"{self.path}: not acquired within {timeout:.0f}s ({self.describe_holder()})")
            if log is not None and now >= next_note:
                log(f"[wait  ] {self.what}: still waiting after {now - t0:.0f}s ({self.describe_holder()})")
                next_note = now + PROGRESS_EVERY_S
            time.sleep(POLL_S)
        return time.monotonic() - t0

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        FileLock.held_here.discard(self.path.resolve())
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def hold(self, *, log: Callable[[str], None] | None = None) -> Iterator[float]:
        """Hold the lock for the block; yields the seconds waited for it."""
        waited = self.acquire(log=log)
        try:
            yield waited
        finally:
            self.release()

    def holder(self) -> dict[str, object] | None:
        """What the current (or last) holder wrote: pid, host, since (epoch s); None if unreadable."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8") or "null")
        except (OSError, ValueError):
            return None  # being rewritten this instant, or never written (read-only opener)
        return data if isinstance(data, dict) else None

    def describe_holder(self) -> str:
        h = self.holder()
        if not h:
            return "held by another process"
        since = h.get("since")
        ago = f" for {time.time() - since:.0f}s" if isinstance(since, int | float) else ""
        return f"held by pid {h.get('pid')} on host {h.get('host')}{ago}"

    def _write_holder(self, fd: int) -> None:
        note = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()})
        with contextlib.suppress(OSError):  # a read-only opener (another uid's file) still holds the lock
            os.ftruncate(fd, 0)
            os.pwrite(fd, note.encode(), 0)


# -- how busy the rest of the machine is ----------------------------------------------------------


def usable_cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))


def busy_seconds(cpus: Collection[int]) -> float | None:
    """CPU time every process has used on `cpus` since boot (per-CPU lines of /proc/stat), or None.

    Only the CPUs this process may run on count: with `--cpuset-cpus` other work on other cores does
    not compete with the timed loop.
    """
    try:
        lines = Path("/proc/stat").read_text(encoding="ascii").splitlines()
    except OSError:
        return None
    wanted = {f"cpu{c}" for c in cpus}
    total = 0
    seen = 0
    for line in lines:
        fields = line.split()
        if fields and fields[0] in wanted:
            ticks = [int(v) for v in fields[1:]]
            # user nice system idle iowait irq softirq steal ...: busy is everything but idle and iowait.
            total += sum(ticks[:8]) - ticks[3] - ticks[4]
            seen += 1
    if seen != len(wanted):
        return None
    return total / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """User + system CPU time of this process, all its threads (backend thread pools included)."""
    t = os.times()
    return t.user + t.system


def is_disturbed(background_cores: float, cores: int, share: float = DISTURBED_SHARE) -> bool:
    """Whether other work took more than `share` of the `cores` a timed loop could use."""
    return background_cores > share * max(1, cores)


@dataclass(frozen=True)
class Load:
    """Other processes' CPU use on the usable cores over a window covering a timed loop."""

    background_cores: float
    cores: int
    window_s: float

    @property
    def share(self) -> float:
        return self.background_cores / max(1, self.cores)

    @property
    def disturbed(self) -> bool:
        return is_disturbed(self.background_cores, self.cores)


class LoadWindow:
    """Started just before a timed loop, stopped just after; `stop` extends the window to `min_window`."""

    def __init__(self, cpus: Collection[int] | None = None) -> None:
        self.cpus = list(cpus) if cpus is not None else usable_cpus()
        self.t0 = time.monotonic()
        self.busy0 = busy_seconds(self.cpus)
        self.own0 = own_cpu_seconds()

    def stop(self, min_window: float = MIN_WINDOW_S) -> Load | None:
        """Other work's CPU over the window; sleeps first until the window is `min_window` long."""
        short = min_window - (time.monotonic() - self.t0)
        if short > 0:
            time.sleep(short)
        busy1, own1 = busy_seconds(self.cpus), own_cpu_seconds()
        window = time.monotonic() - self.t0
        if self.busy0 is None or busy1 is None or window <= 0:
            return None
        others = max(0.0, (busy1 - self.busy0) - (own1 - self.own0))
        # Tick rounding of the two clocks can read a little over the cores there are.
        cores = min(others / window, float(len(self.cpus)))
        return Load(background_cores=round(cores, 3), cores=len(self.cpus), window_s=round(window, 3))


def wait_for_quiet(max_wait: float = QUIET_WAIT_S, sample: float = QUIET_SAMPLE_S) -> float:
    """Sample other work in `sample`-second windows until it is under the disturbed share or `max_wait`
    has passed; return the seconds spent. A run that just started beside us is loading and scoring for
    a few seconds; waiting that out keeps it out of our samples."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < max_wait:
        load = LoadWindow().stop(min_window=sample)
        if load is None or not load.disturbed:
            break
    return round(time.monotonic() - t0, 3)


@dataclass
class Turn:
    """What holding the timing lock cost: seconds waited for it and for the machine to quieten."""

    lock_wait_s: float = 0.0
    quiet_wait_s: float = 0.0


class TimingLock:
    """The machine-wide turn to time: held around every timed phase, so no two quantmatrix processes
    sharing the store's lock directory ever time at once, in any container or invocation."""

    def __init__(
        self, directory: Path, *, log: Callable[[str], None] | None = None, quiet_wait: float = QUIET_WAIT_S
    ) -> None:
        self.lock = FileLock(Path(directory) / TIMING_LOCK, "timing turn")
        self.log = log
        self.quiet_wait = quiet_wait

    @contextlib.contextmanager
    def turn(self) -> Iterator[Turn]:
        t = Turn(lock_wait_s=round(self.lock.acquire(log=self.log), 3))
        try:
            if self.quiet_wait > 0:
                t.quiet_wait_s = wait_for_quiet(self.quiet_wait)
            yield t
        finally:
            self.lock.release()


# -- work that is not timed gives way to work that is ---------------------------------------------


@dataclass
class GiveWay:
    """The timing-turn lock file this process gives way to (resolved once), and where it says so."""

    lock: Path
    log: Callable[[str], None] | None = None


# Set once per job process by its entry point (`give_way_to`): the yield points (`give_way`) sit deep
# inside loops every builder and runner shares (progress updates, scoring batches), which should not
# each carry the store's path. None: this process never gives way (the launcher, tests, a notebook).
_give_way: GiveWay | None = None


def give_way_to(directory: Path | None, log: Callable[[str], None] | None = None) -> None:
    """From now on, pause this process's untimed work while another process holds the timing turn in
    `directory` (None: stop giving way, e.g. once a turn coordinator times this process's cells)."""
    global _give_way
    _give_way = GiveWay((Path(directory) / TIMING_LOCK).resolve(), log) if directory is not None else None


def give_way(poll: float = QUIET_SAMPLE_S) -> float:
    """A yield point: if another process is timing, wait until its turn ends; return the seconds waited.

    Loading, scoring, calibrating and fine-tuning beside a timed loop is what marks it `disturbed`
    (docs/concurrency.md): the timer waits `QUIET_WAIT_S` for quiet, but work that never pauses never
    lets it be. Called between steps of long untimed loops, so the timer's quiet wait only has to cover
    the one step in flight. Never waits on a turn this process holds itself.
    """
    state = _give_way
    if state is None:
        return 0.0
    path = state.lock
    if path in FileLock.held_here or not path.parent.is_dir():
        return 0.0
    fd = _open_lock_file(path)
    t0 = time.monotonic()
    try:
        noted = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                if not noted and state.log is not None:
                    who = FileLock(path, "timing turn").describe_holder()
                    state.log(f"[wait  ] giving way: another process is timing ({who})")
                noted = True
                time.sleep(poll)
                continue
            fcntl.flock(fd, fcntl.LOCK_UN)
            break
    finally:
        os.close(fd)
    if not noted:
        return 0.0
    waited = time.monotonic() - t0
    if state.log is not None:
        state.log(f"[wait  ] went on after {waited:.1f}s")
    return waited
