"""Errors that align reports to users as one clear line (no traceback).

Anything raised as `AlignError` is caught by the CLI and printed as
`align: error: <message>`; the message must name the file, key or sample
and say what is wrong.
"""


class AlignError(Exception):
    """A user-facing error: bad recipe, bad path, bad sample, refused file."""


class ConfigError(AlignError):
    """A recipe key is unknown, mistyped, or missing."""


class DataError(AlignError):
    """A dataset path, shard pattern or sample cannot be used."""


class SourceUnavailable(DataError):
    """A remote data source stayed unreachable for the whole retry budget (align.data.stream.remote).
    `align train` saves a checkpoint and the CLI exits with status 75 (rerun to resume)."""
