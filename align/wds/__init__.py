"""The webdataset shard format, owned in one place.

  format   member names -> (key, extension), the extension table per modality, sample grouping
  reader   the tar reader (streaming, and a byte-range index for random access)
  writer   the shard writer (webdataset's TarWriter with fixed headers)

Training, `align data shards|inspect`, `align bench` datasets, the demo builder, the benchmarks and
the test helpers all read, write and split names through these modules only. The format imports
nothing else of align; decoding samples into tensors is the stream's job (align.data.stream.decode).
"""
