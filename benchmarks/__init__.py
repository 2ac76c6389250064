"""Benchmarks: each ``python -m benchmarks.NAME`` writes ``benchmarks/results/NAME.{json,md}``."""

import os

# As in the CLI: OpenMP threads that spin-wait run torch tens of times slower whenever another process
# shares the cores (measured: the quick scale run rendered at 26 s per image beside a one-thread job).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
