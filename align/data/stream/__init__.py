"""The training and eval stream: shard lists and remote reading (sources, remote), decode, augmentation,
fault counting, the loader with its exact-resume state (loader), elastic resume (resume), synthetic data."""
