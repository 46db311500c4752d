"""The built-in demo: `align demo` builds a dataset from scikit-learn's real handwritten digits
(images, captions, and the digit names spoken by eSpeak NG), trains recipes/demo.yaml and benchmarks it.

  data.py     the demo dataset builder (train shards + CLIP_benchmark-layout val sets)
  espeak.py   a ctypes binding to libespeak-ng (speech synthesis for the audio modality)
  run.py      `align demo`: data -> train -> FAISS benchmarks -> report
"""
