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
        with h5py.File(demo_file, "r") as file:
            libero_env.reset_to_initial_state(env, demo["init_state"], int(file["data/demo_0"].attrs["reset_seed"]))
        done = False
        for state, action in zip(demo["states"], demo["actions"]):
            np.testing.assert_allclose(env.get_sim_state(), state, atol=1e-6)
            _, _, done, _ = env.step(action)
        assert done
    finally:
        env.close()


def test_rerun_resumes_without_duplicates(demo_file):
    """A rerun with nothing left to collect leaves the file as it was: its modification time is part of the key of
    train.py's tokenised cache, so a rewrite would make a resumed training tokenise everything again."""
    mtime_ns = demo_file.stat().st_mtime_ns
    collect_demos.main(["--suite", "libero_spatial", "--tasks", "0", "--trials", "1", "--resolution", "128",
                        "--output-dir", str(demo_file.parent)])
    with h5py.File(demo_file, "r") as file:
        assert list(file["data"]) == ["demo_0"]
        assert file["data"].attrs["num_demos"] == 1
    assert not os.path.exists(str(demo_file) + ".parts")
    assert demo_file.stat().st_mtime_ns == mtime_ns


def test_stored_frames_are_the_observations_of_a_camera_rollout(demo_file):
    """The stored frames are those a camera env observes when it runs the same actions from the same initial
    state and reset seed: what a closed-loop evaluation sees."""
    _, demos = read_demos(demo_file)
    demo = demos["demo_0"]
    suite = libero_env.get_suite("libero_spatial")
    env = libero_env.make_env(suite.get_task_bddl_file_path(0), camera_names=(libero_env.THIRD_PERSON_CAMERA,), resolution=128)
    try:
        with h5py.File(demo_file, "r") as file:
            seed = int(file["data/demo_0"].attrs["reset_seed"])
        obs = libero_env.reset_to_initial_state(env, demo["init_state"], seed)
        for step in range(12):
            np.testing.assert_array_equal(obs["agentview_image"], demo["obs/agentview_rgb"][step])
            obs, _, _, _ = env.step(demo["actions"][step])
    finally:
        env.close()


def test_random_resets_resume_where_they_stopped(tmp_path):
    """A rerun continues after the last kept random reset, and reset i is always the same placement: the
    collection is the same whether it ran at once or in pieces."""
    common = ["--suite", "libero_spatial", "--tasks", "0", "--trials", "0", "--resolution", "64", "--cameras", "agentview",
              "--output-dir", str(tmp_path)]
    collect_demos.main([*common, "--extra-random", "1"])
    collect_demos.main([*common, "--extra-random", "2"])
    path = tmp_path / f"{TASK_NAME}_demo.hdf5"
    _, demos = read_demos(path)
    with h5py.File(path, "r") as file:
        resets = [int(file["data"][name].attrs["random_reset"]) for name in ("demo_0", "demo_1")]
    assert resets[0] < resets[1]
    assert "obs/eye_in_hand_rgb" not in demos["demo_0"] and demos["demo_0"]["obs/agentview_rgb"].shape[1:] == (64, 64, 3)
    suite = libero_env.get_suite("libero_spatial")
    env = libero_env.make_env(suite.get_task_bddl_file_path(0), camera_names=())
    try:
        for name, reset in zip(("demo_0", "demo_1"), resets):
            state = collect_demos.random_initial_state(env, 0, 0, reset)
            np.testing.assert_array_equal(state, demos[name]["init_state"])
        assert not np.array_equal(collect_demos.random_initial_state(env, 0, 0, 99), demos["demo_0"]["init_state"])
    finally:
        env.close()


def test_a_rollout_recorded_live_equals_its_replay():
    """DemoRecorder (the demos of tasks whose replays diverge) writes the columns replay_with_cameras writes:
    a short expert rollout recorded in a camera env of task 0, then replayed there, gives identical arrays."""
    from libero_sim.demos import DemoRecorder, make_camera_env, replay_with_cameras
    from libero_sim.expert import ScriptedExpert

    suite = libero_env.get_suite("libero_spatial")
    env = make_camera_env(suite.get_task_bddl_file_path(0), 64, (libero_env.THIRD_PERSON_CAMERA,))
    try:
        recorder = DemoRecorder(env)
        initial_state = suite.get_task_init_states(0)[0]
        episode = libero_env.run_episode(recorder, ScriptedExpert(env), initial_state, "x", 12, record=True, seed=3)
        live = recorder.arrays()
        replayed = replay_with_cameras(env, episode, seed=3)
    finally:
        env.close()
    assert live["actions"].shape == (10 + 12, 7) and live["obs/agentview_rgb"].shape == (22, 64, 64, 3)
    assert set(live) == set(replayed)
    for key in live:
        np.testing.assert_array_equal(live[key], replayed[key], err_msg=key)


def test_perturbed_demos_keep_the_expert_labels_and_replay_their_executed_actions(tmp_path):
    """--perturb executes perturbed actions and stores the expert's own beside them: the labels are what a fresh
    expert answers along the recorded states, the executed actions replay to the recorded success, and a folder
    refuses demos of another rate, lift height or close rise."""
    from libero_sim.expert import ScriptedExpert

    common = ["--suite", "libero_spatial", "--tasks", "0", "--trials", "0", "--extra-random", "1", "--resolution", "64",
              "--cameras", "agentview", "--output-dir", str(tmp_path)]
    collect_demos.main([*common, "--perturb", "0.2"])
    path = tmp_path / f"{TASK_NAME}_demo.hdf5"
    _, demos = read_demos(path)
    demo = demos["demo_0"]
    with h5py.File(path, "r") as file:
        seed = int(file["data/demo_0"].attrs["reset_seed"])
        assert file["data/demo_0"].attrs["perturbation_rate"] == 0.2
        assert file["data/demo_0"].attrs["lift_height"] == 0.1  # the expert's default
        assert file["data/demo_0"].attrs["close_rise"] == 0.0  # likewise
    executed, labels = demo["actions"], demo["expert_actions"]
    assert executed.shape == labels.shape
    perturbed = np.abs(executed - labels).max(axis=1) > 0
    assert not perturbed[: libero_env.NUM_WAIT_STEPS].any() and 5 < perturbed.sum() < len(executed) - libero_env.NUM_WAIT_STEPS
    np.testing.assert_array_equal(labels[: libero_env.NUM_WAIT_STEPS], np.tile(libero_env.WAIT_ACTION, (libero_env.NUM_WAIT_STEPS, 1)))

    suite = libero_env.get_suite("libero_spatial")
    env = libero_env.make_env(suite.get_task_bddl_file_path(0), camera_names=())
    try:
        expert = ScriptedExpert(env)
        obs = libero_env.reset_to_initial_state(env, demo["init_state"], seed)
        done = False
        for step, (state, action) in enumerate(zip(demo["states"], executed)):
            np.testing.assert_allclose(env.get_sim_state(), state, atol=1e-6)
            if step == libero_env.NUM_WAIT_STEPS:
                expert.reset()
            if step >= libero_env.NUM_WAIT_STEPS:
                np.testing.assert_array_equal(expert.select_action(obs), labels[step])
            obs, _, done, _ = env.step(action)
        assert done
    finally:
        env.close()

    with pytest.raises(SystemExit, match="--perturb"):
        collect_demos.main([*common, "--perturb", "0.1"])
    with pytest.raises(SystemExit, match=r"--lift-height \[0.1\], not 0.2"):
        collect_demos.main([*common, "--perturb", "0.2", "--lift-height", "0.2"])
    with pytest.raises(SystemExit, match=r"--close-rise \[0.0\], not 0.003"):
        collect_demos.main([*common, "--perturb", "0.2", "--close-rise", "0.003"])


@pytest.mark.parametrize("height", ["0", "-0.1", "2"])
def test_a_lift_height_outside_the_workspace_is_refused(height, capsys):
    with pytest.raises(SystemExit):
        collect_demos.parse_args(["--suite", "libero_spatial", "--output-dir", "x", "--lift-height", height])
    assert "a height in metres in (0, 0.5]" in capsys.readouterr().err


@pytest.mark.parametrize("rise", ["-0.001", "0.05"])
def test_a_close_rise_outside_a_few_millimetres_a_step_is_refused(rise, capsys):
    with pytest.raises(SystemExit):
        collect_demos.parse_args(["--suite", "libero_spatial", "--output-dir", "x", "--close-rise", rise])
    assert "a rise in metres per step in [0, 0.01]" in capsys.readouterr().err
