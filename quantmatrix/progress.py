"""Progress of long steps as structured events, and the list of library warnings known to be harmless.

A job (builder, runner, analysis) wraps a long loop in `Progress`; each update may become one line
on stderr, `quantmatrix-progress: {json}`, which the launcher (`bench`) turns into the job's status
line, from a subprocess or a container alike. The format is documented in docs/progress.md.
Everything else a job prints goes to its log file; `HARMLESS` lists the notices that never reach
the console or a failure record's log tail.
"""

from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TextIO

from quantmatrix.machine_lock import give_way

if TYPE_CHECKING:
    from quantmatrix.spec import MeasureSpec

EVENT_PREFIX = "quantmatrix-progress: "
EVENT_VERSION = 1
# Often enough for a person watching, rarely enough that a 10-minute job logs ~300 event lines.
EMIT_EVERY_S = 2.0


@dataclass(frozen=True)
class ProgressEvent:
    """One progress report: `done` of `total` `unit`s of `what`, with the time spent and left."""

    what: str
    done: float
    total: float
    elapsed_s: float
    eta_s: float | None  # None: not yet known (nothing done), or not meaningful (a search may stop early)
    unit: str = ""
    note: str = ""
    final: bool = False
    v: int = EVENT_VERSION

    def line(self) -> str:
        """The event as one line a launcher reads back with `parse_event`."""
        return EVENT_PREFIX + json.dumps(asdict(self), separators=(",", ":"))

    def describe(self) -> str:
        """`fine-tune: epoch 2/3 step 140/400, ETA 4m10s`."""
        count = f"{_number(self.done)}/{_number(self.total)}"
        parts = [p for p in (self.note, self.unit, count) if p]
        if self.final:
            tail = f"done in {format_duration(self.elapsed_s)}"
        elif self.eta_s is not None:
            tail = f"ETA {format_duration(self.eta_s)}"
        else:
            tail = f"{format_duration(self.elapsed_s)} so far"
        return f"{self.what}: {' '.join(parts)}, {tail}"


def parse_event(line: str) -> ProgressEvent | None:
    """The event on `line`, or None when the line is not a well-formed event (it is then ordinary output)."""
    if not line.startswith(EVENT_PREFIX):
        return None
    try:
        data: Any = json.loads(line[len(EVENT_PREFIX) :])
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict) or data.get("v") != EVENT_VERSION:
        return None
    try:
        event = ProgressEvent(**data)
    except TypeError:  # missing or unknown fields
        return None
    numbers = (event.done, event.total, event.elapsed_s)
    if not isinstance(event.what, str) or not all(isinstance(x, int | float) for x in numbers):
        return None
    return event


def eta_seconds(done: float, total: float, elapsed_s: float) -> float | None:
    """Time left if the rest goes at the rate so far; None before anything is done."""
    if done <= 0 or total <= 0:
        return None
    return max(0.0, elapsed_s * (total - done) / done)


def format_duration(seconds: float) -> str:
    """`45s`, `4m10s`, `1h02m`: short enough for a status line."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:.1f}"


class Progress:
    """Reports a long loop's progress: `with Progress(total, "fine-tune", unit="step") as p: ... p.update(i)`.

    Events are written at entry, at most every `every` seconds in between, and at exit (final).
    On a terminal they are written as the human-readable line instead of JSON, so a job run by hand
    reads well; under a launcher (a pipe) they are the machine-readable events.
    """

    def __init__(
        self,
        total: float,
        what: str,
        *,
        unit: str = "",
        eta: bool = True,
        every: float = EMIT_EVERY_S,
        stream: TextIO | None = None,
    ) -> None:
        self.total = total
        self.what = what
        self.unit = unit
        self.eta = eta  # False where the total is only an upper bound (a search that stops when it finds)
        self.every = every
        self._stream = stream
        self.done: float = 0
        self.note = ""
        self._eta_override: float | None = None
        self._t0 = time.perf_counter()
        self._last_emit = -float("inf")

    def __enter__(self) -> Self:
        self._t0 = time.perf_counter()
        self._emit(time.perf_counter(), final=False)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._emit(time.perf_counter(), final=True)

    def update(
        self, done: float, *, note: str | None = None, total: float | None = None, eta_s: float | None = None
    ) -> None:
        """Record `done` (absolute, not an increment); emit an event when the last one is old enough.

        `eta_s` overrides the straight-line ETA where the caller knows better (a timing loop that
        stops on a time limit).
        """
        self.done = done
        if note is not None:
            self.note = note
        if total is not None:
            self.total = total
        self._eta_override = eta_s
        give_way()  # a long untimed loop pauses while another process times (docs/concurrency.md)
        now = time.perf_counter()
        if now - self._last_emit >= self.every:
            self._emit(now, final=False)

    def event(self, now: float | None = None, *, final: bool = False) -> ProgressEvent:
        elapsed = (time.perf_counter() if now is None else now) - self._t0
        eta = None
        if self.eta and not final:
            eta = self._eta_override if self._eta_override is not None else eta_seconds(self.done, self.total, elapsed)
        return ProgressEvent(
            what=self.what, done=self.done, total=self.total, elapsed_s=round(elapsed, 3),
            eta_s=None if eta is None else round(eta, 3), unit=self.unit, note=self.note, final=final,
        )  # fmt: skip

    def _emit(self, now: float, *, final: bool) -> None:
        self._last_emit = now
        event = self.event(now, final=final)
        stream = self._stream or sys.stderr
        try:
            text = event.describe() if stream.isatty() else event.line()
            stream.write(text + "\n")
            stream.flush()
        except (OSError, ValueError):
            pass  # a closed or broken stderr must never fail the work being reported


class TimingProgress(Progress):
    """A timing loop's progress: it stops when both an iteration count and a duration are reached, or at a cap.

    Call it with (iterations, elapsed seconds) after each timed call; the ETA follows the loop's own
    stopping rule at the rate so far.
    """

    def __init__(
        self,
        what: str,
        *,
        min_iterations: int,
        min_seconds: float,
        max_iterations: int,
        max_seconds: float,
        **kwargs: Any,
    ) -> None:
        super().__init__(max(1, min_iterations), what, unit="iteration", **kwargs)
        self.limits = (min_iterations, min_seconds, max_iterations, max_seconds)

    def __call__(self, iterations: int, elapsed_s: float) -> None:
        if time.perf_counter() - self._last_emit < self.every:
            self.done = iterations  # the cheap path (this runs between timed calls); the final event reports it
            return
        left = timing_seconds_left(iterations, elapsed_s, *self.limits)
        expected = round(iterations + left * iterations / max(elapsed_s, 1e-9))  # at the rate so far
        self.update(iterations, total=max(iterations, expected), eta_s=left)


def timing_progress(what: str, spec: MeasureSpec) -> TimingProgress:
    """The progress of one timing loop run by `spec`'s stopping rule (see `runners.measure.time_predict`)."""
    return TimingProgress(
        what, min_iterations=spec.min_iterations, min_seconds=spec.min_seconds,
        max_iterations=spec.max_iterations, max_seconds=spec.max_seconds,
    )  # fmt: skip


def timing_seconds_left(
    iterations: int, elapsed_s: float, min_iterations: int, min_seconds: float, max_iterations: int, max_seconds: float
) -> float:
    """Seconds a timing loop still runs: until both minimums are met, or a cap, at the rate so far."""
    if iterations <= 0 or elapsed_s <= 0:
        return max(0.0, min_seconds - elapsed_s)
    per_call = elapsed_s / iterations
    end = max(min_seconds, min_iterations * per_call)
    end = min(end, max_seconds, max_iterations * per_call)
    return max(0.0, end - elapsed_s)


@dataclass(frozen=True)
class Harmless:
    """A library notice known to be harmless here: it goes to the job's log, never to the console."""

    name: str
    pattern: str  # a regular expression searched in each output line
    why: str


# The one list. Each entry says why the notice is harmless for quantmatrix; add to it only with a reason.
HARMLESS: tuple[Harmless, ...] = (
    Harmless(
        "torch pytree notices",
        r"torch\.utils\._pytree\._register_pytree_node`? is deprecated|torch/utils/_pytree\.py:\d+\] ",
        "libraries (transformers, optimum, torchao) registering their types with torch's pytree API the old way, "
        "at import; nothing quantmatrix calls",
    ),
    Harmless(
        "torchao optional kernels",
        r"Failed to load \S*torchao/_C_\w+[^:]*\.so: Could not load this library",
        "torchao's MXFP8 / CUTLASS extension kernels, built for other Python or CUDA versions; quantmatrix's "
        "torchao recipes (int8 dynamic, PT2E) do not use them",
    ),
    Harmless(
        "transformers torch_dtype rename",
        r"`torch_dtype` is deprecated! Use `dtype` instead!",
        "Optimum's ONNX export passes the old argument name to transformers; the dtype it asks for is used",
    ),
    Harmless(
        "fast tokenizer pad hint",
        r"You're using a \w+TokenizerFast tokenizer\. Please note that with a fast tokenizer",
        "a speed hint: training pads pre-tokenised batches on purpose (tokenised once, padded per batch)",
    ),
    Harmless(
        "transformers new-head notice",
        r"Some weights of \w+ were not initialized from the model checkpoint|"
        r"You should probably TRAIN this model on a down-stream task",
        "the reference builder adds a classifier head and then fine-tunes it: exactly what the notice asks for",
    ),
    Harmless(
        "tokenizers fork notice",
        r"huggingface/tokenizers: The current process just got forked|To disable this warning, you can either:|"
        r"- Avoid using `tokenizers` before the fork if possible|"
        r"- Explicitly set the environment variable TOKENIZERS_PARALLELISM",
        "the memory-bandwidth probe forks once; the tokenizer then runs single-threaded, which it does anyway",
    ),
)
_HARMLESS_RE = re.compile("|".join(f"(?:{h.pattern})" for h in HARMLESS))
# A Python warning as `warnings` prints it (`file.py:12: UserWarning: text`), a logging WARNING line, or a
# warning from torch's C++-style logger (`W1202 18:03:29.539000 5111 torch/x.py:630] text`).
_WARNING_RE = re.compile(r"^\S+:\d+: \w*Warning: |^WARNING\b|^\w*Warning: |^W\d{4} [\d:.]+ +\d+ \S+:\d+\] ")


def harmless_table() -> str:
    """The `HARMLESS` list as the markdown table in docs/progress.md (a test keeps the two equal)."""
    rows = ["| Notice | Matches | Why it is harmless |", "| --- | --- | --- |"]
    # Double backticks: some patterns hold a backtick themselves.
    rows += [f"| {h.name} | {' or '.join(f'`` {p} ``' for p in h.pattern.split('|'))} | {h.why} |" for h in HARMLESS]
    return "\n".join(rows) + "\n"


def is_harmless(line: str) -> bool:
    """True when `line` is (part of) a notice on the `HARMLESS` list."""
    return _HARMLESS_RE.search(line) is not None


def is_warning(line: str) -> bool:
    """True when `line` starts a warning a person should see (not one on the `HARMLESS` list)."""
    return _WARNING_RE.search(line) is not None and not is_harmless(line)
