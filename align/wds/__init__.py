"""The webdataset shard format, owned in one place: member names and extensions, the tar reader and
the decoders."""
