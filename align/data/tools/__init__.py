"""Data tools: `align data inspect` (what a shard holds, what would be skipped)."""
