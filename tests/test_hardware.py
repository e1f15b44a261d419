"""Fingerprint: real values read from this machine, and no heavy imports."""

from __future__ import annotations

import subprocess
import sys
import time

from quantmatrix.hardware import describe, fingerprint


def test_fingerprint_has_machine_facts():
    fp = fingerprint()
    assert fp.cpu_cores_logical >= 1 and fp.ram_bytes > 0
    assert fp.cpu_model and fp.python.startswith("3.")
    assert "numpy" in fp.packages and "pydantic" not in fp.packages  # only the key packages
    assert len(fp.machine_id) == 12
    assert describe(fp).startswith(fp.cpu_model)


def test_importing_core_and_noxfile_does_not_import_torch(repo):
    code = (
        "import sys, quantmatrix.spec, quantmatrix.records, quantmatrix.store, quantmatrix.hardware, "
        "quantmatrix.plan, quantmatrix.metrics, quantmatrix.hf, builders, runners; builders.registry(); "
        "runners.registry(); quantmatrix.hardware.fingerprint(); import runpy; "
        "runpy.run_path('noxfile.py'); "
        "bad = [m for m in ('torch', 'onnxruntime', 'tensorrt', 'transformers') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_noise_probe_reports_a_line_a_second_and_how_far_each_series_moved(capsys):
    from quantmatrix.__main__ import main
    from quantmatrix.hardware import machine_noise

    lines: list[str] = []
    t0 = time.perf_counter()
    moved = machine_noise(2, log=lines.append)
    assert time.perf_counter() - t0 >= 1.9  # a second per sample, each padded to its second (no upper bound: busy CI)
    assert [ln.split()[0] for ln in lines] == ["1s", "2s"] and all("GB/s" in ln for ln in lines)
    assert set(moved) == {"bandwidth_spread", "probe_spread"} and all(v >= 1.0 for v in moved.values())
    assert main(["noise", "--seconds", "1"]) == 2
    assert "--seconds must be at least 2" in capsys.readouterr().err
