"""Data tools.

  inspect   `align data inspect`: what a shard holds, what would be skipped
  stats     `align data stats`: mean/std of a feature transform over shards (the audio tower's log-mel)"""
