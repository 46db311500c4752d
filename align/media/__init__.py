"""Media primitives: audio decode, resample, downmix and FLAC encode. Imports nothing of align but errors."""
