"""The timing loop itself: sample counts and bounds, and how much of the machine other work took meanwhile."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from quantmatrix.hardware import cpu_busy_seconds, memory_bandwidth_forked_gbs
from quantmatrix.spec import MeasureSpec
from runners.measure import Inputs, time_predict

INPUTS = Inputs(batch_size=1, seq_mode="padded", batches=({"input_ids": np.zeros((1, 4), dtype=np.int64)},))


def test_iterations_respect_both_minimums_and_the_cap():
    spec = MeasureSpec(warmup=2, min_iterations=7, min_seconds=0.0, max_seconds=5.0)
    lat = time_predict(lambda b: None, INPUTS, spec)
    assert lat.iterations == len(lat.samples) == 7 and lat.warmup == 2
    capped = time_predict(lambda b: None, INPUTS, MeasureSpec(warmup=0, min_iterations=10**9, max_iterations=50))
    assert capped.iterations == 50
    slow = time_predict(lambda b: time.sleep(0.002), INPUTS, MeasureSpec(warmup=0, min_iterations=1, min_seconds=0.1))
    assert sum(slow.samples) >= 95 and slow.min >= 2.0  # timed until min_seconds, whatever the count


@pytest.mark.skipif(cpu_busy_seconds() is None, reason="needs Linux /proc/stat")
def test_background_load_during_timing_is_recorded():
    """A process spinning beside the timed loop shows up as about one core of background load."""
    spec = MeasureSpec(warmup=0, min_iterations=1, min_seconds=1.0)
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)  # let it get going
        burned, t0 = _cpu_seconds(burner.pid), time.monotonic()
        busy = time_predict(lambda b: time.sleep(0.005), INPUTS, spec)
        burner_cores = (_cpu_seconds(burner.pid) - burned) / (time.monotonic() - t0)
    finally:
        burner.kill()
        burner.wait()
    # Compared with what the burner itself got (a busy CI machine may give it less than a core), not a
    # fixed share: the recorded load must account for it, whatever the machine's speed.
    assert busy.background_cores is not None and burner_cores > 0.05
    assert 0.6 * burner_cores <= busy.background_cores <= len(__import__("os").sched_getaffinity(0)) + 0.5


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / __import__("os").sysconf("SC_CLK_TCK")


def test_injected_busy_work_slows_every_call_by_at_least_its_share():
    """RunnerSpec.inject_busy: each call spins a share of its own time after it (compare's known slowdown)."""
    from runners.measure import with_busy_work

    def predict(b):
        time.sleep(0.01)

    assert with_busy_work(predict, 0.0) is predict
    slowed = with_busy_work(predict, 0.5)
    lat = time_predict(slowed, INPUTS, MeasureSpec(warmup=0, min_iterations=5, min_seconds=0.0))
    assert lat.min >= 15.0  # 10 ms slept + at least half of the call's own (>= 10 ms) time spun


def test_process_start_time_falls_between_launch_and_first_output():
    """Launch overheads are differences of wall clocks: a process cannot start before it was launched."""
    before = time.time()
    out = subprocess.run(
        [sys.executable, "-c",
         "import time; from runners.tasks import process_start_time as p; print(p(), time.time())"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    started, printed = float(out[0]), float(out[1])
    assert before - 0.02 <= started <= printed  # 0.02: one 10 ms clock tick either side


def test_every_cell_records_the_machine_speed_probe():
    """Best of three runs of a fixed workload: preemption by local processes (counted by background_cores)
    is filtered out, so what moves it is the machine itself running slower."""
    import os

    lat = time_predict(lambda b: None, INPUTS, MeasureSpec(warmup=0, min_iterations=3))
    assert lat.probe_ms is not None and 0.1 < lat.probe_ms < 1000
    # One entry per CPU this process may use (the probe pins itself to each), the slowest reported.
    assert len(lat.probe_cpus_ms) == len(os.sched_getaffinity(0)) and lat.probe_ms == max(lat.probe_cpus_ms)
    before = os.sched_getaffinity(0)
    time_predict(lambda b: None, INPUTS, MeasureSpec(warmup=0, min_iterations=1))
    assert os.sched_getaffinity(0) == before


def test_memory_bandwidth_is_probed_around_the_loop_in_a_child_process():
    """64 MiB buffers copied in a forked child: a GB/s figure, and this process's peak RSS stays put."""
    import resource

    def peak_mib() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    before = peak_mib()
    gbs = memory_bandwidth_forked_gbs()
    assert gbs is not None and 0.1 < gbs < 10_000
    assert peak_mib() - before < 32  # the child's 128 MiB never counted here
    lat = time_predict(lambda b: None, INPUTS, MeasureSpec(warmup=0, min_iterations=3))
    assert lat.bandwidth_gbs is not None and len(lat.bandwidth_gbs) == 2 and min(lat.bandwidth_gbs) > 0.1


def test_a_cell_timed_in_slices_meets_the_stopping_rule_on_timed_calls_alone():
    """Interleaved timing: `enough` counts the seconds of the slices' timed calls, not their setup (the
    untimed call and any collection before each slice), so a cell gets as many timed seconds as in one loop."""
    from runners.measure import SliceTimer

    timer = SliceTimer(lambda b: time.sleep(0.01), INPUTS, MeasureSpec(warmup=0, min_iterations=1, min_seconds=0.2))
    rounds = 0
    while not timer.enough():
        timer.slice(0.05, rounds)
        rounds += 1
    assert sum(timer.samples) >= 200.0 and rounds >= 4
    assert [s.round for s in timer.slices] == list(range(rounds))
    assert sum(s.count for s in timer.slices) == len(timer.samples)


def test_the_gemm_roof_is_cached_only_when_measured_on_a_quiet_machine(tmp_path, monkeypatch):
    """A roof measured beside other work is low (once 10x); such a measurement is not kept."""
    from quantmatrix.machine_lock import Load
    from runners import peak

    monkeypatch.setattr(peak, "fp32_peak", lambda: 1e11)
    monkeypatch.setattr(peak, "int8_peak", lambda: 4e11)
    assert peak.machine_peak(tmp_path, "m", measure=False) == {}  # a job that cannot time alone only reads

    class Busy:
        def stop(self):
            return Load(background_cores=1.5, cores=2, window_s=1.0)

    monkeypatch.setattr(peak, "LoadWindow", Busy)
    lines: list[str] = []
    assert peak.machine_peak(tmp_path, "m", log=lines.append) == {} and not list(tmp_path.iterdir())
    assert "not kept: other work took 1.50 of 2 cores" in lines[0]
    monkeypatch.setattr(peak, "LoadWindow", lambda: type("Quiet", (), {"stop": lambda self: None})())
    assert peak.machine_peak(tmp_path, "m") == {"fp32": 1e11, "int8": 4e11}
    monkeypatch.setattr(peak, "fp32_peak", lambda: 0.0)
    assert peak.machine_peak(tmp_path, "m")["fp32"] == 1e11  # cached


def test_a_job_that_waited_for_the_turn_reads_the_roof_another_job_measured_meanwhile(tmp_path, monkeypatch):
    """Interleaved jobs of one group all want the roof at once: the first measures it holding the turn,
    the others, let in after it, find it cached instead of measuring it again."""
    import contextlib
    import json

    from runners import peak

    measured: list[str] = []
    monkeypatch.setattr(peak, "fp32_peak", lambda: measured.append("fp32") or 1e11)
    monkeypatch.setattr(peak, "int8_peak", lambda: measured.append("int8") or 4e11)

    class Sibling:
        """A turn that, while this job waited for it, another job used to measure and cache the roof."""

        @contextlib.contextmanager
        def turn(self):
            (tmp_path / "peak-v2-m.json").write_text(json.dumps({"fp32": 2e11, "int8": 5e11}))
            yield None

    assert peak.machine_peak(tmp_path, "m", Sibling()) == {"fp32": 2e11, "int8": 5e11}
    assert measured == []
