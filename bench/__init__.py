"""The latency benchmark harness: one module per suite, run as `elastic bench <suite>`.

Every suite measures its contenders side by side in one run (interleaved repeats) and
reports ratios, because timings on shared machines swing ±30–70% between runs.
"""

SUITES = [
    "overhead",
    "switching",
    "parity",
    "scheduler",
    "memory",
    "load",
    "headroom",
    "pricing",
    "margin",
    "ride_along",
    "refit",
    "onnx",
    "contention",
    "switch_interval",
    "streaming",
    "ray_load",
    "lanes",
    "targets",
]
