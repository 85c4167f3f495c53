"""Records that flow between stages and small shared types (clocks); imports nothing of ours."""
