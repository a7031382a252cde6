"""A run's reads are cached in an explicit, bounded cache: reused while they fit, the least
recently used dropped first."""

from __future__ import annotations

from deltapatch.runinputs import READS, ReadCache


def test_reads_are_made_once_and_the_least_recently_used_goes_first():
    cache, made = ReadCache(max_items=2), []

    def make(key):
        return lambda: made.append(key) or f"value of {key}"

    assert cache.get("a", make("a")) == "value of a"
    assert cache.get("a", make("a")) == "value of a" and made == ["a"]  # reused, not remade
    cache.get("b", make("b"))
    cache.get("a", make("a"))  # a is now the most recently used
    cache.get("c", make("c"))  # over the bound: b goes, not a
    assert len(cache) == 2 and made == ["a", "b", "c"]
    cache.get("a", make("a"))
    cache.get("b", make("b"))
    assert made == ["a", "b", "c", "b"]


def test_the_process_cache_is_bounded():
    assert 0 < READS.max_items <= 256
