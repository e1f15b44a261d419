"""Lay out a CUDA root that pycuda can compile against, from NVIDIA's PyPI wheels alone.

    python make_libcuda_stub.py /opt/cuda-stub

pycuda links against the driver library libcuda.so, which only a GPU driver install provides. The
CUDA toolkit ships a link stub for this (lib64/stubs/libcuda.so); without the toolkit we generate
one: a shared library with one function per `cu*` entry point declared in cuda.h (an empty stub
would be dropped by the linker). At run time the real driver's libcuda.so.1 is used instead.
Headers and libcudart/libcurand come from the nvidia-* wheels installed next to this Python.
"""

from __future__ import annotations

import re
import subprocess
import sys
import sysconfig
from pathlib import Path

ENTRY = re.compile(r"\bCUresult\s+CUDAAPI\s+(cu[A-Za-z0-9_]+)\s*\(")


def nvidia_roots() -> list[Path]:
    site = Path(sysconfig.get_paths()["purelib"]) / "nvidia"
    if not site.is_dir():
        sys.exit(f"no nvidia-* wheels under {site}: pip install nvidia-cuda-runtime nvidia-curand ...")
    return sorted(p for p in site.rglob("include") if p.is_dir())


def main(out: Path) -> None:
    include, lib = out / "include", out / "lib64"
    include.mkdir(parents=True, exist_ok=True)
    lib.mkdir(parents=True, exist_ok=True)
    for inc in nvidia_roots():
        for header in inc.rglob("*"):
            target = include / header.relative_to(inc)
            if header.is_file() and not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                target.symlink_to(header)
        for so in inc.parent.glob("lib/*.so*"):
            base = lib / re.sub(r"\.so\..*$", ".so", so.name)  # libcudart.so.13 -> libcudart.so
            for name in {lib / so.name, base}:
                if not name.exists():
                    name.symlink_to(so)
    cuda_h = include / "cuda.h"
    if not cuda_h.exists():
        sys.exit(f"cuda.h not found in the nvidia wheels' include directories under {include}")
    names = sorted(set(ENTRY.findall(cuda_h.read_text(errors="replace"))))
    source = out / "libcuda_stub.c"
    source.write_text("".join(f"int {n}(void) {{ return 999; }}\n" for n in names))
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(lib / "libcuda.so"), str(source)], check=True)
    print(f"{out}: {len(names)} driver entry points stubbed; headers and libraries linked")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "/opt/cuda-stub"))
