"""Input size limits: every size a shard claims is checked here before anything that size is allocated.

Sizes in a shard come from the input (a tar header's member size, an image header's width and height,
an audio header's frames, sample rate and channels, a caption's or JSON's length), and web-scale dumps
hold every kind of damage: a flipped bit in a size field, a 48 KB PNG that claims 20000 x 20000
pixels, a WAV that claims 2,147,483,647 Hz.  The limits (`align.limits.DataLimits`, `data.limits` in a
recipe, `--max-*` options of `align data shards` / `inspect`) bound what one sample may cost.

Past a limit, `LimitExceeded` is raised with one of the reasons below; every reader (training, inspect,
`align bench` datasets, `align data shards`) counts the sample under that same reason and goes on.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

from align.errors import ConfigError, DataError


def _limit(default, help: str, **bounds):
    """A limit field; its bounds are checked when a recipe is loaded (align.config reads this metadata), and
    its help is what `align train --help-keys` and the `--max-*` options of `align data` print."""
    return field(default=default, metadata={"bounds": bounds, "help": help})


@dataclass
class DataLimits:
    """Sizes a shard may claim (recipe key `data.limits`); past one, the sample is skipped and counted."""
    max_member_bytes: int = _limit(256 << 20, "bytes any tar member may hold (image, audio, anything)", ge=1)
    max_image_pixels: int = _limit(89_478_485, "width x height from the image header (PIL's bomb bound)", ge=1)
    max_audio_seconds: float = _limit(600.0, "audio length from the file header (frames / sample rate)", gt=0)
    max_audio_samples: int = _limit(57_600_000, "frames x channels decoded (float32: 230 MB)", ge=1)
    max_audio_channels: int = _limit(8, "audio channels", ge=1)
    min_sample_rate: int = _limit(1000, "lowest audio sample rate accepted, Hz", ge=1)
    max_sample_rate: int = _limit(384_000, "highest audio sample rate accepted, Hz", ge=1)
    max_text_bytes: int = _limit(65536, "bytes of a txt member (one caption per line)", ge=1)
    max_json_bytes: int = _limit(1 << 20, "bytes of a json member", ge=1)

# Skip reasons (user-facing; align.data.stream.faults re-exports them with the other reasons).
MEMBER_TOO_LARGE = "member too large"
IMAGE_TOO_LARGE = "image too large"
AUDIO_TOO_LONG = "audio too long"
AUDIO_BAD_RATE = "audio sample rate out of range"
AUDIO_TOO_MANY_CHANNELS = "audio has too many channels"
TEXT_TOO_LONG = "caption too long"
JSON_TOO_LARGE = "json too large"

LIMIT_REASONS = (MEMBER_TOO_LARGE, IMAGE_TOO_LARGE, AUDIO_TOO_LONG, AUDIO_BAD_RATE, AUDIO_TOO_MANY_CHANNELS,
                 TEXT_TOO_LONG, JSON_TOO_LARGE)

DEFAULT_LIMITS = DataLimits()
RECIPE_KEY = "data.limits."   # how the messages below name a limit; commands with --limit name it their way
LIMIT_OPTION = "--limit"      # the option of align bench / embed / search / serve / data filter (NAME=VALUE)


class LimitExceeded(DataError):
    """A size claimed by the input is past its limit; `reason` is one of the constants above, `limit` the
    DataLimits field it is past (the detail names it as the recipe key, `data.limits.NAME`)."""

    def __init__(self, reason: str, detail: str, limit: Optional[str] = None):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail, self.limit = reason, detail, limit

    def with_option(self, option: str = LIMIT_OPTION) -> str:
        """The line for a command whose limits are set by `option NAME=VALUE` (align bench, embed, search), not
        by a recipe key: `audio too long: 700.0 s, over max_audio_seconds=600 (--limit max_audio_seconds=VALUE
        accepts it)`."""
        detail = self.detail.replace(RECIPE_KEY, "")
        return f"{self.reason}: {detail}" + (f" ({option_hint(self.limit, option)})" if self.limit else "")


def option_hint(name: str, option: str = LIMIT_OPTION) -> str:
    return f"{option} {name}=VALUE accepts it"


def parse_limit_options(items: Optional[Iterable[str]], option: str = LIMIT_OPTION) -> dict:
    """`--limit NAME=VALUE` (repeatable) -> {NAME: value}, each value of its field's type and within its bounds;
    a bad one is one ConfigError line naming it and the valid names. None or [] -> {}."""
    fields = {f.name: f for f in dataclasses.fields(DataLimits)}
    valid = f"valid names: {', '.join(fields)}"
    out = {}
    for item in items or ():
        name, sep, text = str(item).partition("=")
        name, text = name.strip(), text.strip()
        if not sep or not name or not text:
            raise ConfigError(f"{option} {item!r}: expected NAME=VALUE, e.g. {option} max_audio_seconds=120; {valid}")
        f = fields.get(name)
        if f is None:
            raise ConfigError(f"{option} {item}: unknown limit {name!r}; {valid}")
        kind = int if f.type in (int, "int") else float
        value = _number(text, kind)
        if value is None:
            what = "a whole number" if kind is int else "a finite number"
            raise ConfigError(f"{option} {item}: {text!r} is not {what}; {valid}")
        problem = _out_of_bounds(f, value)
        if problem:
            raise ConfigError(f"{option} {item}: {name} must be {problem}; {valid}")
        out[name] = value
    return out


def _number(text: str, kind):
    """text -> kind (int or float), None when it is not one (nan and inf are none); an int field takes 2e8."""
    try:
        x = float(text)
    except ValueError:
        return None
    if not math.isfinite(x):
        return None
    if kind is float:
        return x
    try:
        return int(text)            # exact, also past 2**53
    except ValueError:
        return int(x) if x.is_integer() else None


def _out_of_bounds(f, v) -> Optional[str]:
    """None when v is within the field's bounds, else what it must be (">= 1", "> 0")."""
    bounds = f.metadata["bounds"]
    if v != v or not (v >= bounds.get("ge", v) and ("gt" not in bounds or v > bounds["gt"])):   # NaN: never
        return " and ".join(f"{'>=' if k == 'ge' else '>'} {b}" for k, b in bounds.items())
    return None


def override_limits(base: Any, overrides: Optional[dict]) -> DataLimits:
    """`base` (None, a DataLimits or a mapping: as_limits) with some fields replaced (a checked mapping)."""
    base = as_limits(base)
    return dataclasses.replace(base, **overrides) if overrides else base


def changed_limits(limits: Any) -> dict:
    """{name: value} of the fields that differ from the defaults (empty for the defaults): what a result or a
    cache key records, so that results and caches made under the defaults keep their form."""
    limits = as_limits(limits)
    return {f.name: getattr(limits, f.name) for f in dataclasses.fields(DataLimits)
            if getattr(limits, f.name) != getattr(DEFAULT_LIMITS, f.name)}


def as_limits(limits: Any = None) -> DataLimits:
    """None (the defaults), a DataLimits, or a mapping of some of its fields -> DataLimits."""
    if limits is None:
        return DEFAULT_LIMITS
    if isinstance(limits, DataLimits):
        return limits
    if isinstance(limits, dict):
        names = {f.name for f in dataclasses.fields(DataLimits)}
        bad = sorted(set(limits) - names)
        if bad:
            raise ConfigError(f"data.limits.{bad[0]}: unknown limit; valid: {', '.join(sorted(names))}")
        given = {k: v for k, v in limits.items() if v is not None}
        for f in dataclasses.fields(DataLimits):     # the bounds a recipe is checked against (align.config)
            v = given.get(f.name)
            if v is None:
                continue
            want = "a number" if isinstance(v, bool) or not isinstance(v, (int, float)) else _out_of_bounds(f, v)
            if want:
                raise ConfigError(f"data.limits.{f.name}: must be {want}, got {v!r}")
        return dataclasses.replace(DEFAULT_LIMITS, **given)
    raise ConfigError(f"data.limits: expected a mapping, got {limits!r}")


def member_limit(ext: Optional[str], limits: DataLimits) -> tuple[int, str]:
    """(bytes, reason): how large a tar member with this (lower-cased) extension may be."""
    if ext == "txt":
        return min(limits.max_text_bytes, limits.max_member_bytes), TEXT_TOO_LONG
    if ext == "json":
        return min(limits.max_json_bytes, limits.max_member_bytes), JSON_TOO_LARGE
    return limits.max_member_bytes, MEMBER_TOO_LARGE


def member_limiter(limits: Any = None):
    """name -> (bytes, reason), by the member's last extension (`x.seg.txt` is text): what the tar reader
    (align.wds.reader, which imports nothing of align) is given."""
    limits = as_limits(limits)

    def limit(name: str) -> tuple[int, str]:
        base = name.rsplit("/", 1)[-1]
        return member_limit(base.rpartition(".")[2].lower() if "." in base else None, limits)

    return limit


def check_image_size(width: int, height: int, limits: DataLimits) -> None:
    if width * height > limits.max_image_pixels:
        raise LimitExceeded(IMAGE_TOO_LARGE, f"{width}x{height} = {width * height} pixels, over "
                                             f"data.limits.max_image_pixels={limits.max_image_pixels}",
                            "max_image_pixels")


def check_audio_header(frames: int, sample_rate: int, channels: int, limits: DataLimits) -> None:
    """What an audio file's header claims, before a single sample is decoded."""
    if not limits.min_sample_rate <= sample_rate <= limits.max_sample_rate:
        raise LimitExceeded(AUDIO_BAD_RATE, f"{sample_rate} Hz, outside data.limits.min_sample_rate.."
                                            f"max_sample_rate ({limits.min_sample_rate}..{limits.max_sample_rate})",
                            "min_sample_rate" if sample_rate < limits.min_sample_rate else "max_sample_rate")
    if channels > limits.max_audio_channels:
        raise LimitExceeded(AUDIO_TOO_MANY_CHANNELS, f"{channels} channels, over data.limits.max_audio_channels="
                                                     f"{limits.max_audio_channels}", "max_audio_channels")
    if frames / sample_rate > limits.max_audio_seconds:
        seconds = f"{frames / sample_rate:.3f}".rstrip("0").rstrip(".")    # 0.05 s is not "0.1 s" over 0.06
        raise LimitExceeded(AUDIO_TOO_LONG, f"{seconds} s, over data.limits.max_audio_seconds="
                                            f"{limits.max_audio_seconds:g}", "max_audio_seconds")
    if frames * channels > limits.max_audio_samples:
        raise LimitExceeded(AUDIO_TOO_LONG, f"{frames} frames x {channels} channels, over "
                                            f"data.limits.max_audio_samples={limits.max_audio_samples}",
                            "max_audio_samples")
