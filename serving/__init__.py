"""The serving runtime: latency profiles, scheduler and policies, executor, metrics."""
