"""Scripted demonstrations in the official LIBERO HDF5 layout: written, read back, replayable,
and resumed without duplicates."""

import json
import os

import h5py
import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("libero")

from libero_sim import env as libero_env  # noqa: E402
from libero_sim.demos import read_demos  # noqa: E402
from scripts import collect_demos  # noqa: E402

TASK_NAME = "pick_up_the_black_bowl_between_the_plate_and_the_ramekin_and_place_it_on_the_plate"
DEMO_KEYS = {
    "actions",
    "states",
    "rewards",
    "dones",
    "obs/agentview_rgb",
    "obs/eye_in_hand_rgb",
    "obs/ee_states",
    "obs/gripper_states",
    "obs/joint_states",
}


@pytest.fixture(scope="module")
def demo_file(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("demos")
    collect_demos.main(["--suite", "libero_spatial", "--tasks", "0", "--trials", "1", "--resolution", "128",
                        "--compression", "lzf", "--output-dir", str(output_dir)])
    return output_dir / f"{TASK_NAME}_demo.hdf5"


def test_official_layout_and_attributes(demo_file):
    attributes, demos = read_demos(demo_file)
    assert list(demos) == ["demo_0"]
    demo = demos["demo_0"]
    assert DEMO_KEYS <= set(demo)
    steps = len(demo["actions"])
    assert demo["actions"].shape == (steps, 7)
    assert demo["obs/agentview_rgb"].shape == demo["obs/eye_in_hand_rgb"].shape == (steps, 128, 128, 3)
    assert demo["obs/agentview_rgb"].dtype == np.uint8
    assert demo["obs/ee_states"].shape == (steps, 6)
    assert demo["obs/gripper_states"].shape == (steps, 2)
    assert demo["obs/joint_states"].shape == (steps, 7)
    assert demo["dones"][-1] == 1 and demo["dones"][:-1].sum() == 0
    problem_info = json.loads(attributes["problem_info"])
    assert problem_info["language_instruction"] == libero_env.get_suite("libero_spatial").get_task(0).language
    assert problem_info["problem_name"] == "libero_tabletop_manipulation"
    assert attributes["num_demos"] == 1 and attributes["total"] == steps
    assert "(:goal" in attributes["bddl_file_content"]
    assert json.loads(attributes["env_args"])["env_kwargs"]["camera_heights"] == 128
    assert attributes["macros_image_convention"] == "opengl"
    # Stored raw like the official files: upside-down, so the wooden table is in the top rows.
    first = demo["obs/agentview_rgb"][0]
    assert first[:16].reshape(-1, 3).mean(axis=0)[0] > first[:16].reshape(-1, 3).mean(axis=0)[2] + 10


def test_replaying_actions_reproduces_states_and_success(demo_file):
    _, demos = read_demos(demo_file)
    demo = demos["demo_0"]
    suite = libero_env.get_suite("libero_spatial")
    env = libero_env.make_env(suite.get_task_bddl_file_path(0), camera_names=())
    try:
        libero_env.reset_to_initial_state(env, demo["init_state"])
        done = False
        for state, action in zip(demo["states"], demo["actions"]):
            np.testing.assert_allclose(env.get_sim_state(), state, atol=1e-6)
            _, _, done, _ = env.step(action)
        assert done
    finally:
        env.close()


def test_rerun_resumes_without_duplicates(demo_file):
    collect_demos.main(["--suite", "libero_spatial", "--tasks", "0", "--trials", "1", "--resolution", "128",
                        "--output-dir", str(demo_file.parent)])
    with h5py.File(demo_file, "r") as file:
        assert list(file["data"]) == ["demo_0"]
        assert file["data"].attrs["num_demos"] == 1
    assert not os.path.exists(str(demo_file) + ".parts")
