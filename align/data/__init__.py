"""Data: webdataset shards, audio I/O, speech synthesis and the built-in demo dataset."""
