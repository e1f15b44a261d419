"""quantmatrix core: the matrix spec, typed records, data, hardware fingerprint and artefact store.

Everything else (builders, runners, report, noxfile) imports from here; this package never
imports torch, onnxruntime or tensorrt at import time.
"""

__version__ = "0.1.0"
