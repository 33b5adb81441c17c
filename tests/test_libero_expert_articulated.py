"""The scripted expert opens a drawer and turns on the stove (libero_goal) within the step limit."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("libero")

from libero_sim import env as libero_env  # noqa: E402
from libero_sim.expert import ScriptedExpert, turn_about  # noqa: E402

OPEN_MIDDLE_DRAWER = 0  # libero_goal: "open the middle drawer of the cabinet"
TURN_ON_STOVE = 7  # libero_goal: "turn on the stove"


def test_turn_about_is_a_rotation_by_the_angle():
    import numpy as np

    quarter = turn_about(np.array([1.0, 0.0, 0.0]), np.pi / 2)
    np.testing.assert_allclose(quarter @ [0.0, 0.0, -1.0], [0.0, 1.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(quarter @ quarter.T, np.eye(3), atol=1e-12)


@pytest.mark.parametrize("task_id", [OPEN_MIDDLE_DRAWER, TURN_ON_STOVE])
def test_expert_solves_articulated_goal_task_within_the_step_limit(task_id):
    suite = libero_env.get_suite("libero_goal")
    env = libero_env.make_env(suite.get_task_bddl_file_path(task_id), camera_names=())
    try:
        result = libero_env.run_episode(
            env,
            ScriptedExpert(env),
            suite.get_task_init_states(task_id)[0],
            suite.get_task(task_id).language,
            libero_env.MAX_POLICY_STEPS["libero_goal"],
        )
    finally:
        env.close()
    assert result.success
    assert result.policy_steps <= libero_env.MAX_POLICY_STEPS["libero_goal"]
