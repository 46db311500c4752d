"""align.limits: `--limit NAME=VALUE` parsed against DataLimits' fields, overrides layered on a recipe's limits, and a
limit's message naming the command's option instead of the recipe key."""
import pytest

from align.errors import ConfigError
from align.limits import (DEFAULT_LIMITS, DataLimits, LimitExceeded, changed_limits, check_audio_header,
                          check_image_size, override_limits, parse_limit_options)


def test_limit_options_take_each_fields_type():
    got = parse_limit_options(["max_audio_seconds=120", "max_image_pixels=2e8", " max_text_bytes = 100 "])
    assert got == {"max_audio_seconds": 120.0, "max_image_pixels": 200_000_000, "max_text_bytes": 100}
    assert isinstance(got["max_image_pixels"], int) and isinstance(got["max_audio_seconds"], float)
    assert parse_limit_options(None) == {} and parse_limit_options([]) == {}


@pytest.mark.parametrize("item,message", [
    ("max_audio_secs=120", "unknown limit 'max_audio_secs'"),
    ("max_audio_seconds=abc", "'abc' is not a finite number"),
    ("max_audio_seconds=nan", "'nan' is not a finite number"),
    ("max_audio_channels=1.5", "'1.5' is not a whole number"),
    ("max_audio_seconds=0", "max_audio_seconds must be > 0"),
    ("max_member_bytes=-1", "max_member_bytes must be >= 1"),
    ("max_audio_seconds", "expected NAME=VALUE"),
    ("=5", "expected NAME=VALUE"),
])
def test_a_bad_limit_option_is_one_line_listing_the_valid_names(item, message):
    with pytest.raises(ConfigError) as e:
        parse_limit_options(["max_text_bytes=10", item])
    line = str(e.value)
    assert line.startswith("--limit ") and message in line and "\n" not in line
    assert "valid names: max_member_bytes, max_image_pixels, max_audio_seconds" in line


def test_overrides_replace_single_fields_of_the_recipes_limits():
    recipe = DataLimits(max_audio_seconds=120.0, max_text_bytes=10)
    got = override_limits(recipe, {"max_text_bytes": 99})
    assert (got.max_audio_seconds, got.max_text_bytes) == (120.0, 99)
    assert override_limits(None, None) is DEFAULT_LIMITS and override_limits(recipe, {}) is recipe
    assert changed_limits(got) == {"max_audio_seconds": 120.0, "max_text_bytes": 99}
    assert changed_limits(None) == {}


def test_a_limits_message_names_the_option_where_a_command_sets_it():
    cases = [(lambda: check_audio_header(16000 * 700, 16000, 1, DEFAULT_LIMITS), "max_audio_seconds"),
             (lambda: check_audio_header(100, 500, 1, DEFAULT_LIMITS), "min_sample_rate"),
             (lambda: check_audio_header(100, 500_000, 1, DEFAULT_LIMITS), "max_sample_rate"),
             (lambda: check_audio_header(100, 16000, 9, DEFAULT_LIMITS), "max_audio_channels"),
             (lambda: check_image_size(10_000, 10_000, DataLimits(max_image_pixels=100)), "max_image_pixels")]
    for call, name in cases:
        with pytest.raises(LimitExceeded) as e:
            call()
        assert e.value.limit == name and "data.limits." in str(e.value)      # training's wording, unchanged
        line = e.value.with_option()
        assert "data.limits" not in line and line.endswith(f"(--limit {name}=VALUE accepts it)"), line
