"""Lay out a CUDA root that pycuda can compile against, from NVIDIA's PyPI wheels alone.

    python make_libcuda_stub.py /opt/cuda-stub [--aksetup /etc/aksetup-defaults.py]

pycuda links against the driver library libcuda.so, which only a GPU driver install provides. The
CUDA toolkit ships a link stub for this (lib64/stubs/libcuda.so); without the toolkit we generate
one: a shared library with one function per `cu*` entry point declared in cuda.h (an empty stub
would be dropped by the linker), with the soname `libcuda.so.1`, so the extension asks for the
driver's real libcuda.so.1 at run time (hosts often lack the unversioned libcuda.so).
Headers come from the nvidia-* wheels installed next to this Python. pycuda's build (aksetup)
reads its paths from a config file, never from a CUDA_ROOT environment variable: `--aksetup`
writes that file.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

ENTRY = re.compile(r"\bCUresult\s+CUDAAPI\s+(cu[A-Za-z0-9_]+)\s*\(")
SONAME = "libcuda.so.1"


def nvidia_include_dirs(site: Path) -> list[Path]:
    nvidia = site / "nvidia"
    if not nvidia.is_dir():
        sys.exit(f"no nvidia-* wheels under {nvidia}: pip install nvidia-cuda-runtime nvidia-cuda-crt ...")
    return sorted(p for p in nvidia.rglob("include") if p.is_dir())


def entry_points(cuda_h: Path) -> list[str]:
    """Every driver API function cuda.h declares (`CUresult CUDAAPI cuXxx(`)."""
    return sorted(set(ENTRY.findall(cuda_h.read_text(errors="replace"))))


def aksetup_defaults(root: Path) -> str:
    """pycuda's build config: the stub root, and no cuRAND (its library would be one more runtime dependency)."""
    return (
        f"CUDA_ROOT = {str(root)!r}\n"
        f"CUDA_INC_DIR = [{str(root / 'include')!r}]\n"
        f"CUDADRV_LIB_DIR = [{str(root / 'lib64')!r}]\n"
        "CUDA_ENABLE_CURAND = False\n"
    )


def build_stub(names: list[str], lib_dir: Path, work: Path) -> Path:
    """`lib_dir/libcuda.so` (soname libcuda.so.1) defining each name, plus the libcuda.so.1 link."""
    if not names:
        sys.exit("no cu* entry points found in cuda.h: the stub would be empty and dropped by the linker")
    source = work / "libcuda_stub.c"
    source.write_text("".join(f"int {n}(void) {{ return 999; }}\n" for n in names))
    stub = lib_dir / "libcuda.so"
    subprocess.run(["gcc", "-shared", "-fPIC", f"-Wl,-soname,{SONAME}", "-o", str(stub), str(source)], check=True)
    versioned = lib_dir / SONAME
    if not versioned.exists():
        versioned.symlink_to(stub.name)
    return stub


def main(out: Path, site: Path, aksetup: Path | None) -> None:
    include, lib = out / "include", out / "lib64"
    include.mkdir(parents=True, exist_ok=True)
    lib.mkdir(parents=True, exist_ok=True)
    for inc in nvidia_include_dirs(site):
        for header in inc.rglob("*"):
            target = include / header.relative_to(inc)
            if header.is_file() and not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                target.symlink_to(header)
    cuda_h = include / "cuda.h"
    if not cuda_h.exists():
        sys.exit(f"cuda.h not found in the nvidia wheels' include directories under {site / 'nvidia'}")
    names = entry_points(cuda_h)
    build_stub(names, lib, out)
    if aksetup is not None:
        aksetup.write_text(aksetup_defaults(out))
    print(f"{out}: {len(names)} driver entry points stubbed (soname {SONAME}); headers linked")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, nargs="?", default=Path("/opt/cuda-stub"))
    ap.add_argument("--site", type=Path, default=Path(sysconfig.get_paths()["purelib"]), help="site-packages")
    ap.add_argument("--aksetup", type=Path, default=None, help="write pycuda's build config here")
    a = ap.parse_args()
    main(a.out, a.site, a.aksetup)
