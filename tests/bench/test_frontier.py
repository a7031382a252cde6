"""The accuracy–parameter frontier and the per-task statement (bench/frontier.py)."""

from deltapatch.bench.frontier import (Point, dominates, frontier, points_from, statement,
                                       style)

FC = Point("FC only", 700, 0.50, False)
D1 = Point("Δ(1)", 7000, 0.60, True)
AD = Point("adapters", 30000, 0.80, False)
BIG = Point("LoRA ×4", 40000, 0.55, False)


def test_dominance_needs_no_more_parameters_and_no_lower_score():
    assert dominates(AD, BIG) and not dominates(BIG, AD)
    assert not dominates(FC, D1) and not dominates(D1, FC)
    assert not dominates(D1, D1)  # equal is not better


def test_frontier_keeps_the_undominated_points_in_parameter_order():
    assert frontier([BIG, AD, D1, FC]) == [FC, D1, AD]


def test_statement_says_on_when_a_delta_point_is_undominated():
    assert "**on the frontier**: Δ(1) (7.0k, 60.0)" in statement("gtsrb", [FC, D1, AD, BIG])


def test_a_frontier_place_that_rests_on_a_few_parameters_is_flagged():
    close = Point("LoRA", 7300, 0.65, False)
    got = statement("gtsrb", [FC, D1, close])
    assert "**on the frontier**: Δ(1) (7.0k, 60.0), but LoRA (7.3k, 65.0) scores higher" in got
    assert "compared with: FC only, LoRA" in got


def test_a_slightly_bigger_delta_point_scoring_higher_is_not_a_flag():
    wider = Point("Δ(1), r=8", 7300, 0.65, True)
    got = statement("gtsrb", [FC, D1, wider])
    assert "Δ(1) (7.0k, 60.0); Δ(1), r=8 (7.3k, 65.0)" in got and "but" not in got


def test_statement_names_what_beats_each_delta_point_when_off():
    cheap_better = Point("BN adaptation", 3000, 0.70, False)
    got = statement("gtsrb", [FC, D1, AD, cheap_better])
    assert "**not on the frontier**" in got and "Δ(1) (7.0k, 60.0) by BN adaptation" in got


def test_points_take_seed_0_single_task_runs_of_the_task():
    def rec(variant, seed=0, task="t", hm=0.5, name="delta"):
        return {"status": "ok", "scenario": "single", "task": task, "seed": seed,
                "variant": variant, "label": variant, "method": {"name": name},
                "result": {"harmonic_mean": hm, "trainable_params": 10}}
    got = points_from([rec("a"), rec("a", seed=1, hm=0.9), rec("b", task="u"),
                       rec("c", name="lora")], "t", lambda m: m.get("name") == "delta")
    assert got == [Point("a", 10, 0.5, True), Point("c", 10, 0.5, False)]


def test_no_two_points_of_a_figure_share_colour_and_marker():
    """Thirteen or more points per task: a repeated colour must come with another shape."""
    looks = [style(i, delta) for i in range(30) for delta in (True, False)]
    assert len(set(looks)) == len(looks)
