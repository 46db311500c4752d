"""Media primitives. Imports nothing of align but errors.

  audio   decode, resample, downmix to mono, FLAC encode"""
