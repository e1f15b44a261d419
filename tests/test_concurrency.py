"""One machine, many runs: the timing turn, takeover of dead holders' locks, disturbed loops, waiting builds."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from bench import Job, Launcher, Plan, build_record, execute
from quantmatrix.capabilities import Capability
from quantmatrix.errors import QuantmatrixError
from quantmatrix.machine_lock import (
    DISTURBED_SHARE,
    MIN_WINDOW_S,
    FileLock,
    Load,
    LoadWindow,
    TimingLock,
    busy_seconds,
    give_way,
    give_way_to,
    is_disturbed,
    lock_dir,
)
from quantmatrix.spec import MeasureSpec
from quantmatrix.store import Store
from quantmatrix.turns import Coordinator, Participant
from runners.measure import Inputs, time_predict

REPO = Path(__file__).resolve().parent.parent
INPUTS = Inputs(batch_size=1, seq_mode="padded", batches=({"input_ids": np.zeros((1, 4), dtype=np.int64)},))
needs_proc_stat = pytest.mark.skipif(busy_seconds([0]) is None, reason="needs Linux /proc/stat")


def _child(code: str) -> subprocess.Popen[str]:
    """A Python process running `code` from the repository root, its stdout a pipe of lines."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, stdout=subprocess.PIPE, text=True, bufsize=1
    )


def _kill(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait()


# -- the disturbed decision ------------------------------------------------------------------------


def test_disturbed_is_more_than_the_stated_share_of_the_usable_cores():
    assert DISTURBED_SHARE == 0.25
    assert not is_disturbed(0.0, 2) and not is_disturbed(0.5, 2)  # exactly a quarter of 2 cores: not more
    assert is_disturbed(0.51, 2) and is_disturbed(1.0, 2)
    assert not is_disturbed(1.0, 16) and is_disturbed(4.5, 16)  # one busy core of 16 leaves the loop alone
    quiet, busy = Load(0.04, 2, 0.5), Load(0.97, 2, 0.5)
    assert not quiet.disturbed and quiet.share == pytest.approx(0.02)
    assert busy.disturbed and busy.share == pytest.approx(0.485)


@needs_proc_stat
def test_load_window_covers_at_least_the_minimum_whatever_the_loop():
    window = LoadWindow()
    load = window.stop()
    assert load is not None and load.window_s >= MIN_WINDOW_S
    assert load.cores == len(os.sched_getaffinity(0)) and load.background_cores >= 0


@needs_proc_stat
def test_a_short_loop_alone_records_its_load_and_decides_from_it():
    """On a shared machine 'alone' cannot be promised; what the code controls is that even a loop of a few
    milliseconds gets a load measured over the minimum window, and the flag follows from that number."""
    lat = time_predict(lambda b: None, INPUTS, MeasureSpec(warmup=0, min_iterations=3, min_seconds=0.0))
    assert lat.iterations == 3 and lat.load_window_s is not None and lat.load_window_s >= MIN_WINDOW_S
    assert lat.background_cores is not None and lat.background_share is not None
    assert lat.disturbed == is_disturbed(lat.background_cores, len(os.sched_getaffinity(0)))
    assert lat.timed_from is not None and lat.timed_until is not None and lat.timed_from <= lat.timed_until
    assert lat.lock_wait_s is None  # no turn asked for


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@needs_proc_stat
def test_a_cpu_hog_beside_a_short_timed_loop_is_seen_and_marks_it_disturbed():
    """A busy-loop process on the one CPU the loop may use: its CPU time shows up as background load
    over a 20 ms loop, and the cell is marked disturbed."""
    cpu = max(os.sched_getaffinity(0))
    before = os.sched_getaffinity(0)
    hog = subprocess.Popen([sys.executable, "-c", f"import os; os.sched_setaffinity(0, {{{cpu}}})\nwhile True: pass"])
    try:
        os.sched_setaffinity(0, {cpu})
        time.sleep(0.3)  # let it get going
        t0, hog0 = time.monotonic(), _cpu_seconds(hog.pid)
        lat = time_predict(
            lambda b: time.sleep(0.002), INPUTS, MeasureSpec(warmup=0, min_iterations=1, min_seconds=0.02)
        )
        hog_cores = (_cpu_seconds(hog.pid) - hog0) / (time.monotonic() - t0)
    finally:
        os.sched_setaffinity(0, before)
        _kill(hog)
    assert sum(lat.samples) < 200 and lat.load_window_s >= MIN_WINDOW_S
    # The hog's share of the one usable CPU is seen (with a tick's slack per end of a 0.5 s window). On a
    # machine already overloaded the hog gets little of it, and that other work is seen too: either way
    # the CPU was not the loop's.
    assert lat.background_cores >= hog_cores - 0.05, (lat.background_cores, hog_cores)
    assert lat.disturbed is True and lat.background_share > DISTURBED_SHARE


# -- locks ----------------------------------------------------------------------------------------


def _holder(path: Path, seconds: float) -> subprocess.Popen[str]:
    """Another process holding the lock file `path` for `seconds`, returned once it holds it."""
    holder = _child(f"""
        import time
        from quantmatrix.machine_lock import FileLock
        lock = FileLock({str(path)!r}, "held by a test")
        assert lock.try_acquire()
        print("held", flush=True)
        time.sleep({seconds})
    """)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path):
    path = tmp_path / ".locks" / "x.lock"
    holder = _holder(path, 600)
    try:
        lock = FileLock(path, "x")
        assert not lock.try_acquire()
        assert f"held by pid {holder.pid}" in lock.describe_holder()
        with pytest.raises(TimeoutError, match=f"pid {holder.pid}"):
            lock.acquire(timeout=0.2)
    finally:
        _kill(holder)
    waited = lock.acquire(timeout=5)  # the kernel dropped the dead holder's lock
    assert waited < 5 and lock.held
    assert f"held by pid {os.getpid()}" in FileLock(path, "x").describe_holder()
    lock.release()


TIMED_CHILD = """
    import json, sys, time
    import numpy as np
    from quantmatrix.machine_lock import TimingLock
    from quantmatrix.spec import MeasureSpec
    from runners.measure import Inputs, time_predict

    inputs = Inputs(1, "padded", ({{"input_ids": np.zeros((1, 4), dtype=np.int64)}},))
    lock = TimingLock({lock_dir!r}, log=lambda line: print(line, flush=True), quiet_wait=0)
    print("ready", flush=True)
    lat = time_predict(lambda b: time.sleep(0.01), inputs, MeasureSpec(warmup=1, min_iterations=1, min_seconds=0.3),
                       lock=lock)
    print(json.dumps({{"from": lat.timed_from, "until": lat.timed_until, "wait": lat.lock_wait_s}}), flush=True)
"""


def test_timed_phases_of_two_processes_take_turns(tmp_path):
    """Two processes wanting to time at once: one waits (and says so) until the other's loop is over."""
    gate = FileLock(tmp_path / ".locks" / "timing.lock", "timing turn")
    assert gate.try_acquire()  # both children start while the turn is taken, so they certainly collide
    children = [_child(TIMED_CHILD.format(lock_dir=str(tmp_path / ".locks"))) for _ in range(2)]
    try:
        for c in children:
            assert c.stdout is not None and c.stdout.readline().strip() == "ready"
        time.sleep(0.5)
        gate.release()
        outs = [c.stdout.read() for c in children if c.stdout is not None]  # not communicate(): it skips
        # what readline() has already buffered
    finally:
        for c in children:
            _kill(c)
    spans = []
    for out in outs:
        lines = out.strip().splitlines()
        assert any(line.startswith("[wait  ] timing turn: held by pid") for line in lines), out
        spans.append(json.loads(lines[-1]))
    first, second = sorted(spans, key=lambda s: s["from"])
    assert first["until"] <= second["from"], spans  # never timed at once
    assert first["wait"] >= 0.4 and second["wait"] >= first["wait"] + 0.3  # the second also waited out the first


SCORING_CHILD = """
    import time
    from quantmatrix.machine_lock import give_way_to
    from quantmatrix.progress import Progress

    give_way_to({lock_dir!r}, log=lambda line: print(line, flush=True))
    print("ready", flush=True)
    with Progress(3, "score", unit="batch", every=0) as p:
        for i in range(3):
            p.update(i + 1)  # a yield point: waits here while another process holds the turn
            print(f"step {{time.time()}}", flush=True)
"""


def test_untimed_work_of_another_process_pauses_while_a_turn_is_held(tmp_path):
    """A job's long untimed loop (here a progress-reporting one) stops at its next step while another
    process times, and goes on when that turn ends: its steps never land inside the timed span."""
    timing = TimingLock(tmp_path / ".locks", quiet_wait=0)
    child = _child(SCORING_CHILD.format(lock_dir=str(tmp_path / ".locks")))
    try:
        assert child.stdout is not None
        with timing.turn():
            assert child.stdout.readline().strip() == "ready"
            held_from = time.time()
            time.sleep(0.6)
            held_until = time.time()
        out = child.stdout.read()
    finally:
        _kill(child)
    lines = out.strip().splitlines()
    assert lines[0].startswith(f"[wait  ] giving way: another process is timing (held by pid {os.getpid()}"), out
    assert lines[1].startswith("[wait  ] went on after"), out
    steps = [float(line.split()[1]) for line in lines if line.startswith("step ")]
    assert len(steps) == 3 and all(not held_from <= t <= held_until for t in steps), (held_from, held_until, out)
    assert steps[0] > held_until


def test_giving_way_never_waits_on_a_turn_this_process_holds(tmp_path):
    give_way_to(tmp_path / ".locks")
    try:
        with TimingLock(tmp_path / ".locks", quiet_wait=0).turn():
            assert give_way() == 0.0  # would block forever if it took its own process's lock for another's
        assert give_way() == 0.0  # nobody holds it
    finally:
        give_way_to(None)


def test_a_participant_stops_giving_way_once_the_coordinator_grants_turns(tmp_path):
    """A turn group's coordinator (another process) holds the timing turn while its own jobs time: once
    ready, a participant must not wait on that turn."""
    path = tmp_path / ".locks" / "timing.lock"
    holder = _holder(path, 3)
    give_way_to(tmp_path / ".locks")
    try:
        directory = tmp_path / "turns"
        with Coordinator(directory, ["a"], seed=0):
            participant = Participant(directory, "a")
            participant.ready(["b1-padded"])
            assert give_way() == 0.0  # else it would wait out the holder's 3 s
            assert holder.poll() is None and not FileLock(path, "x").try_acquire()  # still held meanwhile
            participant.close()
    finally:
        _kill(holder)
        give_way_to(None)


def test_the_lock_directory_is_under_the_store_every_container_mounts(tmp_path):
    from bench.docker import DockerLauncher

    launcher = DockerLauncher(
        image="img", matrix=tmp_path / "matrix.toml", artifacts=tmp_path / "artifacts", results=tmp_path / "results"
    )
    cmd = launcher.command(Job(kind="run", name="r", argv=["-m", "runners"]), "c")
    mount = f"{tmp_path / 'artifacts'}:{DockerLauncher.ARTIFACTS}"
    assert mount in cmd
    assert lock_dir(tmp_path / "artifacts").parent == tmp_path / "artifacts"
    assert lock_dir(Path(DockerLauncher.ARTIFACTS)) == Path(DockerLauncher.ARTIFACTS) / ".locks"


# -- the store: one build per key, cleaning only what is dead ----------------------------------------

PRODUCE = """
import time
from pathlib import Path
from quantmatrix.hardware import fingerprint
from quantmatrix.records import Manifest
from quantmatrix.store import Store, now_iso

def produce(out: Path) -> Manifest:
    (out / "model.onnx").write_bytes(b"x" * 100)
    print("building", flush=True)
    time.sleep({sleep})
    return Manifest(key="", builder="b", variant="v", model="m", format="onnx", precision="fp32",
                    task="text-classification", environment=fingerprint(), created=now_iso())
"""
BUILDING_CHILD = (
    PRODUCE
    + """
Store({root!r}).build("v-0123", produce)
print("built", flush=True)
"""
)


def test_a_killed_builds_temp_dir_is_cleaned_and_a_live_ones_is_not(tmp_path):
    child = _child(BUILDING_CHILD.format(root=str(tmp_path), sleep=600))
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "building"
        [tmp] = tmp_path.glob(".tmp-v-0123-*")
        assert Store(tmp_path).clean_partials() == [] and (tmp / "model.onnx").is_file()  # live: kept
        assert f"pid {child.pid}" in Store(tmp_path).build_lock("v-0123").describe_holder()  # owner recorded
    finally:
        _kill(child)
    assert tmp.is_dir()
    assert Store(tmp_path).clean_partials() == [tmp] and not tmp.exists()  # owner dead: cleaned


def test_a_second_build_of_a_key_waits_for_the_first_then_reuses_it(tmp_path):
    child = _child(BUILDING_CHILD.format(root=str(tmp_path), sleep=1.5))
    lines: list[str] = []
    calls: list[int] = []

    def produce(out: Path):
        calls.append(1)
        raise AssertionError("built twice")

    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "building"
        manifest = Store(tmp_path, log=lines.append).build("v-0123", produce)
    finally:
        child.wait(timeout=60)
    assert calls == [] and manifest.key == "v-0123" and [f.path for f in manifest.files] == ["model.onnx"]
    assert lines[0].startswith("[wait  ] build of v-0123: held by pid")
    assert lines[-1].startswith("[reused] v-0123: built by another process while this one waited")


def test_a_failure_record_never_replaces_a_complete_artefact(tmp_path):
    child = _child(BUILDING_CHILD.format(root=str(tmp_path), sleep=0))
    assert child.wait(timeout=60) == 0
    store = Store(tmp_path)
    good = store.load("v-0123")
    failed = good.model_copy(update={"status": "failed", "reason": "another run's job was killed", "files": []})
    assert store.record_failure(failed) is False
    assert store.load("v-0123") == good
    (tmp_path / "v-0123" / "model.onnx").unlink()  # now incomplete: the failure is what there is to say
    assert store.record_failure(failed) is True and store.read_any("v-0123").status == "failed"


def test_a_run_waits_for_another_runs_build_job_and_records_the_reuse(tmp_path):
    """The orchestrator of a second run finds the key claimed, waits (saying so), and launches nothing:
    the job it would launch here fails loudly, so launching it would show as `failed`."""
    store = Store(tmp_path / "artifacts")
    other = _child(
        PRODUCE.format(sleep=0)
        + f"""
store = Store({str(store.root)!r})
claim = store.claim("v-0123")
assert claim.try_acquire()
print("claimed", flush=True)
time.sleep(1.0)
store.build("v-0123", produce)
claim.release()
"""
    )
    try:
        assert other.stdout is not None and other.stdout.readline().strip() == "claimed"
        job = Job(kind="build", name="build m/v", key="v-0123", argv=["-c", "raise SystemExit('launched')"])
        log: list[str] = []
        [done] = execute(Plan(jobs=[job], cells=0), Launcher(), store, log=log.append)
    finally:
        other.wait(timeout=60)
    assert done.state == "reused" and "reused after waiting" in done.reason, done.reason
    assert any(line.startswith("[wait  ] build of v-0123 by another run: held by pid") for line in log), log
    assert build_record([done]) == "builds: 1 reused after waiting"
    assert store.lookup("v-0123") is not None


def test_timing_lock_records_the_wait_in_the_latency(tmp_path):
    lock = TimingLock(tmp_path, quiet_wait=0)
    lat = time_predict(lambda b: None, INPUTS, MeasureSpec(warmup=0, min_iterations=2), lock=lock)
    assert lat.lock_wait_s == 0.0 and lat.quiet_wait_s == 0.0
    assert not lock.lock.held and (tmp_path / "timing.lock").is_file()


# -- what the summary and the site make of a disturbed cell -------------------------------------------


def _cells(int8_disturbed: bool, baseline_disturbed: bool):
    from test_records import make_result

    def cell(variant: str, runner: str, backend: str, precision: str, p50: float, disturbed: bool):
        r = make_result()
        r.cell = r.cell.model_copy(
            update={"variant": variant, "runner": runner, "backend": backend, "precision": precision}
        )
        # What the backends declare: the eager torch reference is the FP32 baseline of speed-ups.
        baseline = [Capability.FP32_BASELINE] if backend == "torch" else []
        r.capabilities = [Capability.SCORES_QUALITY, *baseline]
        assert r.latency is not None
        r.latency = r.latency.model_copy(update={"p50": p50, "disturbed": disturbed})
        return r

    return [
        cell("reference", "torch-eager", "torch", "fp32", 10.0, baseline_disturbed),
        cell("int8-fast", "ort", "onnxruntime", "int8", 2.0, int8_disturbed),
        cell("int8-slow", "ort", "onnxruntime", "int8", 4.0, False),
    ]


def test_a_disturbed_cell_is_shown_and_never_the_headline():
    from quantmatrix.summary import headlines, render_text, summarise

    rows = summarise(_cells(int8_disturbed=True, baseline_disturbed=False))
    fast = next(r for r in rows if r.variant == "int8-fast")
    assert fast.disturbed == 1 and fast.speedup == pytest.approx(5.0)  # still shown, with its number
    [line] = headlines(rows)
    assert "fastest passing INT8 int8-slow" in line and "= 2.50x" in line
    text = render_text(rows)
    assert any(ln.startswith("m ") and "int8-fast" in ln and ln.endswith("DISTURBED") for ln in text.splitlines())
    assert "DISTURBED: 1 of 3 cells were timed while other work took more than 25%" in text
    # A disturbed FP32 baseline makes every speed-up of the setting suspect: no headline, and why.
    rows = summarise(_cells(int8_disturbed=False, baseline_disturbed=True))
    assert all(r.baseline_disturbed for r in rows if r.precision == "int8")
    assert headlines(rows) == [
        "m b1 padded: no headline: the FP32 eager baseline was timed while disturbed (rerun the run id)"
    ]


def test_the_site_marks_disturbed_cells(tmp_path):
    from quantmatrix.records import write_record
    from report.site import render

    for i, r in enumerate(_cells(int8_disturbed=True, baseline_disturbed=False)):
        write_record(r, tmp_path / "results" / "r1" / f"{i}.json")
    index = render([tmp_path / "results"], tmp_path / "site", fallbacks=False, log=lambda _: None)
    html = index.read_text()
    assert html.count('class="warn disturbed"') == 1 and "more than 25% of the usable cores" in html


@pytest.mark.docker
def test_a_container_job_sees_the_hosts_timing_turn(tmp_path):
    """The lock file lives in the store every container mounts: a job in a container cannot take the
    turn while a host process holds it, and takes it once released."""
    from bench.docker import DockerLauncher, docker_binary, ensure_image

    try:
        docker = docker_binary()
    except QuantmatrixError as e:
        pytest.skip(str(e))
    if subprocess.run([docker, "info"], capture_output=True).returncode != 0:
        pytest.skip("no Docker engine reachable (containers/provision.sh starts one on Debian)")
    wheels = Path("/opt/wheels")
    image = ensure_image("cpu", wheelhouse=wheels if wheels.is_dir() else None, log=lambda _: None)
    (tmp_path / "matrix.toml").write_text("")
    launcher = DockerLauncher(
        image=image, matrix=tmp_path / "matrix.toml", artifacts=tmp_path / "artifacts",
        results=tmp_path / "results", docker=docker,
    )  # fmt: skip
    code = (
        "import sys; from quantmatrix.machine_lock import TIMING_LOCK, FileLock, lock_dir; "
        f"sys.exit(0 if FileLock(lock_dir({DockerLauncher.ARTIFACTS!r}) / TIMING_LOCK, 't').try_acquire() else 3)"
    )
    job = Job(kind="run", name="turn", argv=["-c", code])
    host = TimingLock(lock_dir(tmp_path / "artifacts"), quiet_wait=0)
    with host.turn():
        assert launcher.launch(job, timeout=300)[0] == 3
    assert launcher.launch(job, timeout=300) == (0, "")
