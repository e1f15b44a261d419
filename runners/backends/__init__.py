"""The backends: one module each, registered with `runners.runner(...)` and found by `runners.registry()`.

Every public module here is a backend; a file whose name starts with `_` is not imported by discovery.
"""
