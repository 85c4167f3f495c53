"""Test and benchmark infrastructure shared by `tests/` and `bench/` (neither imports the other):
the Tansu broker process, the fault harness and scenarios, the workload generator, the
step-id contract checks."""
