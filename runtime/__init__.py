"""Process-level setup: logging, signals, GC tuning, the metrics registry, progress lines."""
