"""Media primitives: image and audio decode (sizes checked against align.limits first), resample, downmix
and FLAC encode. Imports nothing of align but the base layer (errors, config, limits)."""
