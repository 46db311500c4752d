"""The training and eval stream: shard lists and remote reading (sources, remote), decode, augmentation,
fault counting, the batch control keys (keys), the one per-worker decode loop (worker), the loader with its
exact-resume state (loader, pack), elastic resume from any checkpoint (resume), synthetic data."""
