"""Media primitives: image and audio decode (sizes checked against align.limits first), resample, downmix
and FLAC encode. Imports nothing of align but the base layer (errors, limits).

  audio        decode, resample, downmix to mono, FLAC encode
  image        decode with pixel limits, every PIL mode to RGB as a viewer shows it
  truncation   a WAV, AIFF or MP3 shorter than its header says (decode refuses it)"""
