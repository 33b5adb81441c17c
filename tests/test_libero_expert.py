"""The scripted expert solves a libero_spatial task within the protocol's step limit, with either lift height."""

import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("libero")

from libero_sim import env as libero_env  # noqa: E402
from libero_sim.expert import CLOSE_STEPS, ScriptedExpert, closing_yaw, goal_predicates  # noqa: E402


@pytest.fixture(scope="module")
def spatial_task():
    suite = libero_env.get_suite("libero_spatial")
    env = libero_env.make_env(suite.get_task_bddl_file_path(0), camera_names=())
    yield suite, env
    env.close()


def test_closing_yaw_turns_fingers_onto_the_direction():
    assert closing_yaw(np.array([0.0, 1.0])) == pytest.approx(0.0)
    assert abs(closing_yaw(np.array([1.0, 0.0]))) == pytest.approx(np.pi / 2)
    assert closing_yaw(np.array([0.0, -1.0])) == pytest.approx(0.0)


def test_goal_is_parsed_from_the_bddl_problem(spatial_task):
    _, env = spatial_task
    assert goal_predicates(env) == [("on", "akita_black_bowl_1", "plate_1")]


@pytest.mark.parametrize("trial", [0, 7])
def test_expert_solves_spatial_task_within_the_step_limit(spatial_task, trial):
    suite, env = spatial_task
    result = libero_env.run_episode(
        env,
        ScriptedExpert(env),
        suite.get_task_init_states(0)[trial],
        suite.get_task(0).language,
        libero_env.MAX_POLICY_STEPS["libero_spatial"],
    )
    assert result.success
    assert result.policy_steps <= libero_env.MAX_POLICY_STEPS["libero_spatial"]


class HandHeights:
    """The expert, recording the hand's height and the gripper command at every step."""

    def __init__(self, expert):
        self.expert, self.heights, self.closed = expert, [], []

    def reset(self):
        self.expert.reset()

    def select_action(self, observation, instruction):
        action = self.expert.select_action(observation, instruction)
        self.heights.append(observation["robot0_eef_pos"][2])
        self.closed.append(action[-1] > 0)
        return action


def successful_hand_heights(spatial_task, expert):
    """Runs `expert` on task 0's first initial state, asserts it succeeds, and returns its `HandHeights`."""
    suite, env = spatial_task
    policy = HandHeights(expert)
    result = libero_env.run_episode(env, policy, suite.get_task_init_states(0)[0], suite.get_task(0).language,
                                    libero_env.MAX_POLICY_STEPS["libero_spatial"])
    assert result.success
    return policy


def test_lift_height_raises_the_carried_hand_by_the_difference(spatial_task):
    """The hand rises above where it closed by about `lift_height` (the carry keeps that height over the flat
    plate) with the default and with 0.2, and both lifts succeed."""
    _, env = spatial_task
    rises = {}
    for lift_height in (0.1, 0.2):
        policy = successful_hand_heights(spatial_task, ScriptedExpert(env, lift_height=lift_height))
        closed = np.flatnonzero(policy.closed)
        rises[lift_height] = max(policy.heights[closed[0] : closed[-1]]) - policy.heights[closed[0]]
    assert rises[0.1] == pytest.approx(0.1, abs=0.02) and rises[0.2] == pytest.approx(0.2, abs=0.02)


def test_close_rise_lifts_the_hand_while_the_fingers_close(spatial_task):
    """Over the close phase the hand holds its height by default and rises by about `close_rise` a step
    otherwise (the controller lags by a few steps: measured 0.6 of the full rise), and the episode still succeeds."""
    _, env = spatial_task
    rises = {}
    for close_rise in (0.0, 0.003):
        policy = successful_hand_heights(spatial_task, ScriptedExpert(env, close_rise=close_rise))
        first_closed = np.flatnonzero(policy.closed)[0]
        rises[close_rise] = policy.heights[first_closed + CLOSE_STEPS] - policy.heights[first_closed]
    assert abs(rises[0.0]) < 0.005
    assert 0.5 * 0.003 * CLOSE_STEPS < rises[0.003] < 0.003 * CLOSE_STEPS


def test_expert_rejects_goals_it_cannot_solve(spatial_task):
    _, env = spatial_task
    expert = ScriptedExpert(env)
    # Turning a stove off is not scripted (and this scene's cabinet has no stove knob anyway).
    env.env.parsed_problem["goal_state"].append(["turnoff", "wooden_cabinet_1"])
    try:
        with pytest.raises(NotImplementedError, match="turnoff"):
            expert.reset("turn off the stove")
    finally:
        env.env.parsed_problem["goal_state"].pop()
