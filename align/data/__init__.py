"""Data, split by purpose: `stream` (what training and eval read), `write` (making shards and eval sets),
`tools` (inspecting shards). Media primitives live in align.media, the shard format in align.wds."""
