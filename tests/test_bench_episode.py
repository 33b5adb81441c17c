"""bench/episode.py's clock: the parts of an episode add up without counting a nested call twice."""

import types


def test_nested_calls_count_for_the_outer_part_only(bench_module):
    bench = bench_module("episode")
    calls = []
    owner = types.SimpleNamespace()
    owner.physics = lambda: calls.append("physics")

    def reset():
        owner.physics()
        owner.physics()
        return "reset done"

    owner.reset = reset
    original_physics = owner.physics
    clock = bench.EpisodeClock()
    clock.wrap(owner, "reset", "reset")
    clock.wrap(owner, "physics", "physics")
    assert owner.reset() == "reset done"
    owner.physics()
    assert calls == ["physics"] * 3
    assert clock.calls == {"reset": 1, "physics": 1, "render": 0, "vq_encode": 0, "model": 0, "rest": 0}
    assert clock.seconds["reset"] > 0 and clock.seconds["physics"] > 0
    clock.remove()
    assert owner.physics is original_physics and owner.reset is reset


def test_a_raising_call_is_timed_and_leaves_the_clock_usable(bench_module):
    bench = bench_module("episode")
    owner = types.SimpleNamespace(render=lambda: 1 / 0, physics=lambda: "stepped")
    clock = bench.EpisodeClock()
    clock.wrap(owner, "render", "render")
    clock.wrap(owner, "physics", "physics")
    try:
        owner.render()
    except ZeroDivisionError:
        pass
    assert owner.physics() == "stepped"
    assert clock.calls["render"] == 1 and clock.calls["physics"] == 1
