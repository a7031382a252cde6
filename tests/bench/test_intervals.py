"""The paired bootstrap interval behind every claim line (bench/intervals.py)."""

import pytest

from deltapatch.bench.intervals import hm_score, joint_hm_score, paired, top1_score


def _cell(a: float, b: float, seeds: int = 3, n: int = 1000, base: float = 0.8):
    return [(hm_score(a, n, base, n), hm_score(b, n, base, n)) for _ in range(seeds)]


def test_identical_methods_give_an_interval_around_zero():
    got = paired([_cell(0.6, 0.6)])
    assert got.diff == 0.0
    assert got.low < 0 < got.high
    assert got.verdict == "within noise"


def test_a_large_clear_gap_holds_and_its_mirror_is_reversed():
    assert paired([_cell(0.9, 0.5)]).verdict == "holds"
    assert paired([_cell(0.5, 0.9)]).verdict == "reversed"


def test_a_small_gap_on_few_images_is_within_noise_but_on_many_holds():
    assert paired([_cell(0.62, 0.60, seeds=1, n=100)]).verdict == "within noise"
    assert paired([_cell(0.62, 0.60, seeds=3, n=200_000)]).verdict == "holds"


def test_the_interval_is_deterministic_under_a_seed_and_moves_with_it():
    cells = [_cell(0.62, 0.6, n=300), _cell(0.7, 0.71, n=300)]
    assert paired(cells, seed=3) == paired(cells, seed=3)
    assert paired(cells, seed=3) != paired(cells, seed=4)


def test_seed_spread_widens_the_interval():
    steady = [(top1_score(0.7, 10**6), top1_score(0.6, 10**6)) for _ in range(3)]
    spread = [(top1_score(a, 10**6), top1_score(0.6, 10**6)) for a in (0.55, 0.7, 0.85)]
    narrow, wide = paired([steady]), paired([spread])
    assert narrow.diff == pytest.approx(wide.diff)
    assert (wide.high - wide.low) > 10 * (narrow.high - narrow.low)


def test_a_shared_untouched_base_is_drawn_once():
    """Two patches that leave the base untouched share its draws: the difference then comes
    from the patch accuracies alone, so the interval is narrower than with independent bases."""
    same = [(hm_score(0.7, 10**6, 0.8, 100), hm_score(0.6, 10**6, 0.8, 100))]
    other = [(hm_score(0.7, 10**6, 0.8, 100), hm_score(0.6, 10**6, 0.8000001, 100))]
    a, b = paired([same]), paired([other])
    assert (a.high - a.low) < (b.high - b.low) / 5


def test_a_cell_without_seeds_is_refused():
    with pytest.raises(ValueError):
        paired([[]])


def test_a_mean_score_averages_its_parts():
    from deltapatch.bench.intervals import mean_score
    a = mean_score({"base": (0.8, 1000), "mnist": (0.6, 1000)})
    assert a.value() == pytest.approx(0.7)
    assert paired([[(a, mean_score({"base": (0.8, 1000), "mnist": (0.2, 1000)}))]]).verdict == "holds"


def test_three_scattered_seeds_do_not_decide_a_claim():
    """Per-seed differences +4.2, +9.9, +18.5 (all positive): the seed mean's t interval spans
    zero, which resampling three seeds with replacement would hide."""
    cell = [(top1_score(0.6 + d, 10**6), top1_score(0.6, 10**6)) for d in (0.042, 0.099, 0.185)]
    assert paired([cell]).verdict == "within noise"


def test_a_joint_score_is_the_harmonic_mean_of_the_base_and_every_task():
    parts = {"base": (0.808, 1000), "mnist": (0.752, 1000), "gtsrb": (0.429, 1000),
             "dtd10": (0.2975, 400)}
    assert joint_hm_score(parts).value() == pytest.approx(0.484276, abs=1e-6)  # a record's own
    assert joint_hm_score({**parts, "dtd10": (0.0, 400)}).value() == 0.0
    assert joint_hm_score({"base": (0.8, 10), "a": (0.4, 10)}).value() == pytest.approx(
        hm_score(0.4, 10, 0.8, 10).value())


def test_a_joint_claim_shares_the_untouched_base_and_decides_a_clear_gap():
    def run(task: float):
        return joint_hm_score({"base": (0.8, 1000), "a": (task, 1000), "b": (task, 1000)})

    assert paired([[(run(0.7), run(0.4))] * 3]).verdict == "holds"
    assert paired([[(run(0.5), run(0.5))] * 3]).verdict == "within noise"


def test_a_record_score_takes_the_base_size_from_the_record_or_the_fallback():
    from deltapatch.bench.intervals import record_score
    single = {"patch_top1": 0.5, "n_test": 200, "base_top1": 0.8, "n_base_test": 500}
    assert record_score(single, "hm").parts == {"patch": (0.5, 200), "base": (0.8, 500)}
    seq = {"final_top1": {"base": 0.8, "a": 0.6}, "n_test": {"a": 300}}
    assert record_score(seq, "sequential", base_n=1000).parts == {"base": (0.8, 1000),
                                                                   "a": (0.6, 300)}
    with pytest.raises(ValueError, match="how many base test images"):
        record_score(seq, "sequential")
    with pytest.raises(ValueError, match="unknown metric"):
        record_score(single, "f1")
