"""Do ONNX Runtime's spinning threads disturb the next process's turn? (numbers in docs/measurements.md)

python scripts/ort_spinning_pairs.py MODEL.onnx [--setting default|forcestop|nospin|noarena] [--launches 8]

Each launch forks two identical processes holding MODEL with the ONNX Runtime runner's session options
(runners.backends.onnxruntime.session_options, 2 threads; run from the repository root).
They take turns in 0.1 s bursts, in random order, for --rounds rounds. Printed per launch: the
paired ratio A/B (median over rounds of the two burst medians' ratio) and the sd of its log over
rounds. The two processes are identical, so a ratio off 1 or a wide sd means one's turn disturbs
the other's. The launch-to-launch sd says how much a fresh pair of processes differs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
import traceback

import numpy as np

BURST_S = 0.1


def _worker(model: str, setting: str, length: int, rd: int, wr: int) -> None:
    import onnxruntime as ort

    from runners.backends.onnxruntime import OrtParams, session_options

    params = OrtParams(allow_spinning=setting != "nospin", force_spinning_stop=setting == "forcestop")
    o = session_options(ort, params, threads=2)
    o.enable_cpu_mem_arena = setting != "noarena"
    session = ort.InferenceSession(model, o, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feed = {
        i.name: (rng.integers(100, 20000, (1, length)) if i.name == "input_ids" else np.ones((1, length))).astype(
            np.int64
        )
        for i in session.get_inputs()
    }
    for _ in range(20):
        session.run(None, feed)
    medians: list[float] = []
    while os.read(rd, 1) == b"g":
        session.run(None, feed)  # untimed, as the harness leads each slice
        times, start = [], time.perf_counter()
        while time.perf_counter() - start < BURST_S:
            t0 = time.perf_counter()
            session.run(None, feed)
            times.append(time.perf_counter() - t0)
        medians.append(float(np.median(times)))
        os.write(wr, b"d")
    os.write(wr, json.dumps(medians).encode() + b"\n")


def _launch(model: str, setting: str, length: int, rounds: int) -> tuple[np.ndarray, np.ndarray]:
    ends = [(os.pipe(), os.pipe()) for _ in range(2)]  # per process: (parent -> child, child -> parent)
    pipes, pids = [], []
    for to_child, from_child in ends:
        pid = os.fork()
        if pid == 0:
            status = 1
            try:  # only this process's own ends stay open, so a dead process reads as EOF in the parent
                for fd in {fd for pair in ends for p in pair for fd in p} - {to_child[0], from_child[1]}:
                    os.close(fd)
                _worker(model, setting, length, to_child[0], from_child[1])
                status = 0
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(status)
        pipes.append((to_child[1], from_child[0]))
        pids.append(pid)
    for to_child, from_child in ends:
        os.close(to_child[0])
        os.close(from_child[1])
    for _ in range(rounds):
        for i in random.sample([0, 1], 2):
            os.write(pipes[i][0], b"g")
            if os.read(pipes[i][1], 1) != b"d":
                for pid in pids:
                    os.kill(pid, 9)
                raise SystemExit(f"{model}: a timing process died (its traceback is above)")
    out = []
    for w, r in pipes:
        os.write(w, b"q")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = os.read(r, 65536)
            if not chunk:
                raise SystemExit(f"{model}: a timing process died before it sent its times")
            buf += chunk
        out.append(np.array(json.loads(buf)))
    for pid in pids:
        os.waitpid(pid, 0)
    return out[0], out[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="an ONNX classifier with input_ids (and attention_mask etc.) inputs")
    ap.add_argument("--setting", choices=["default", "forcestop", "nospin", "noarena"], default="default")
    ap.add_argument("--launches", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--length", type=int, default=128, help="tokens per input (batch 1)")
    args = ap.parse_args()
    if not os.path.isfile(args.model):
        raise SystemExit(f"{args.model}: no such file")
    ratios = []
    for k in range(args.launches):
        a, b = _launch(args.model, args.setting, args.length, args.rounds)
        per_round = a / b
        ratios.append(float(np.median(per_round)))
        print(
            f"{args.setting} launch {k}: A {np.median(a) * 1e3:.2f} ms, B {np.median(b) * 1e3:.2f} ms, "
            f"A/B {ratios[-1]:.3f}, sd of log(A/B) over rounds {np.std(np.log(per_round), ddof=1):.3f}",
            flush=True,
        )
    spread = f", sd of their logs {np.std(np.log(ratios), ddof=1):.3f}" if len(ratios) > 1 else ""
    print(f"{args.setting}: A/B {min(ratios):.3f}-{max(ratios):.3f} over {len(ratios)} launches{spread}")


if __name__ == "__main__":
    main()
