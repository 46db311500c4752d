"""The webdataset shard format, owned in one place.

  format   member names -> (key, extension), the extension table per modality, sample grouping
  reader   the tar reader (streaming, and a byte-range index for random access)
  writer   the shard writer (webdataset's TarWriter with fixed headers)
  decode   raw samples -> decoded modalities (and, with transforms, training batches)

Training, `align data shards|inspect`, `align bench` datasets, the demo builder, the benchmarks and
the test helpers all read, write and split names through these modules only.
"""
