"""Benchmark harness: size, cost, latency, training step and memory of bundle variants against a reference.

Run ``python -m benchmarks.compare`` (see ``benchmarks/README.md``); every variant is measured in a fresh
child process (``python -m benchmarks.measure``) so timings and memory peaks belong to one variant only.
"""

from .settings import BenchSettings, add_settings_args, settings_from_args

__all__ = ["BenchSettings", "add_settings_args", "settings_from_args"]
