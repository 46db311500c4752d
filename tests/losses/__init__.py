"""Tests for align.losses (mirrors align/losses/)."""
