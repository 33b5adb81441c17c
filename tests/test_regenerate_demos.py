"""scripts/regenerate_demos.py in the real simulator: a demo collected here, and a file in the official layout."""
import json

import h5py
import numpy as np
import pytest

from libero_sim.demos import check_replay_matches
from libero_sim.env import NUM_WAIT_STEPS
from scripts import collect_demos, regenerate_demos
from tests.libero_hdf5_fixture import write_libero_hdf5
from worldvla_data import kept_steps, read_libero_file

TASK_NAME = "pick_up_the_black_bowl_between_the_plate_and_the_ramekin_and_place_it_on_the_plate"


@pytest.fixture(scope="module")
def collected_dir(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("collected")
    collect_demos.main(["--suite", "libero_spatial", "--tasks", "0", "--trials", "1", "--resolution", "64",
                        "--cameras", "agentview", "--compression", "lzf", "--output-dir", str(output_dir)])
    return output_dir


def read_demo(path, name="demo_0"):
    with h5py.File(path, "r") as file:
        group = file["data"][name]
        demo = {key: group[key][()] for key in ("actions", "states", "dones", "obs/agentview_rgb")}
        if "obs/eye_in_hand_rgb" in group:
            demo["obs/eye_in_hand_rgb"] = group["obs/eye_in_hand_rgb"][()]
        return demo, dict(group.attrs), file["data"].attrs["num_demos"]


def test_a_demo_collected_here_is_reproduced_state_for_state_and_frame_for_frame(collected_dir, tmp_path):
    source_file = collected_dir / f"{TASK_NAME}_demo.hdf5"
    argv = ["--suite", "libero_spatial", "--input-dir", str(collected_dir), "--output-dir", str(tmp_path),
            "--resolution", "64", "--cameras", "agentview"]
    regenerate_demos.main(argv)

    source, source_attributes, _ = read_demo(source_file)
    regenerated, attributes, num_demos = read_demo(tmp_path / f"{TASK_NAME}_demo.hdf5")
    # The expert never pauses: only the collected settling steps are no-ops, and the replay's own replace them.
    assert np.array_equal(np.flatnonzero(kept_steps(source["actions"], source["actions"])),
                          np.arange(NUM_WAIT_STEPS, len(source["actions"])))
    check_replay_matches(source["states"][NUM_WAIT_STEPS:], regenerated["states"])
    assert np.array_equal(source["obs/agentview_rgb"][NUM_WAIT_STEPS:], regenerated["obs/agentview_rgb"])
    assert np.array_equal(source["actions"][NUM_WAIT_STEPS:], regenerated["actions"])
    assert regenerated["dones"][-1] == 1 and regenerated["dones"][:-1].sum() == 0
    assert attributes["source_demo"] == "demo_0" and attributes["settling_steps"] == NUM_WAIT_STEPS
    assert attributes["reset_seed"] == source_attributes["reset_seed"]

    regenerate_demos.main(argv)  # a rerun keeps what is there
    assert read_demo(tmp_path / f"{TASK_NAME}_demo.hdf5")[2] == num_demos == 1
    summary = json.loads((tmp_path / "regeneration.json").read_text())
    assert summary["tasks"] == [{"task_id": 0, "task": TASK_NAME, "source_demos": 1, "kept": 1, "failed": 0}]
    with pytest.raises(SystemExit, match=r"cameras \['agentview'\] at 64 px"):  # not mixed with other renders
        regenerate_demos.main([*argv[:-4], "--resolution", "128", "--cameras", "agentview"])


def write_official_layout(source_file, path):
    """The collected demo as the official files hold one (no settling rows, no reset seed, 3 pauses of the
    operator's inserted at step 5), and a copy cut after 20 steps, which cannot succeed."""
    source, _, _ = read_demo(source_file)
    actions = source["actions"][NUM_WAIT_STEPS:]
    pause = np.tile(np.r_[np.zeros(6), actions[4, 6]], (3, 1))
    actions = np.concatenate([actions[:5], pause, actions[5:]])
    states = source["states"][NUM_WAIT_STEPS:]
    states = np.concatenate([states[:5], np.repeat(states[5:6], 3, axis=0), states[5:]])
    frames = source["obs/agentview_rgb"][NUM_WAIT_STEPS:]
    frames = np.concatenate([frames[:5], np.repeat(frames[5:6], 3, axis=0), frames[5:]])
    with h5py.File(source_file, "r") as source_handle, h5py.File(path, "w") as file:
        data = file.create_group("data")
        for key in ("problem_info", "bddl_file_name", "env_args", "env_name"):
            data.attrs[key] = source_handle["data"].attrs[key]
        for name, length in (("demo_0", len(actions)), ("demo_1", 20)):
            group = data.create_group(name)
            group.attrs["num_samples"] = length
            group.attrs["init_state"] = states[0]
            group["actions"] = actions[:length]
            group["states"] = states[:length]
            group["obs/agentview_rgb"] = frames[:length]
            group["dones"] = np.zeros(length, dtype=np.uint8)
    return actions


def test_an_official_layout_file_is_rendered_natively_with_both_cameras_and_its_failures_listed(collected_dir, tmp_path):
    official_dir = tmp_path / "official"
    official_dir.mkdir()
    actions = write_official_layout(collected_dir / f"{TASK_NAME}_demo.hdf5", official_dir / f"{TASK_NAME}_demo.hdf5")
    output_dir = tmp_path / "regenerated"
    argv = ["--suite", "libero_spatial", "--input-dir", str(official_dir), "--output-dir", str(output_dir), "--resolution", "128"]
    regenerate_demos.main(argv)

    regenerated, attributes, num_demos = read_demo(output_dir / f"{TASK_NAME}_demo.hdf5")
    assert num_demos == 1 and attributes["source_demo"] == "demo_0" and "reset_seed" not in attributes
    steps = len(regenerated["actions"])
    assert regenerated["obs/agentview_rgb"].shape == regenerated["obs/eye_in_hand_rgb"].shape == (steps, 128, 128, 3)
    keep = kept_steps(actions, actions)
    assert not keep[5:8].any()
    assert np.array_equal(regenerated["actions"], actions[keep][:steps])
    assert regenerated["dones"][-1] == 1
    (episode,) = read_libero_file(output_dir / f"{TASK_NAME}_demo.hdf5", 128)  # training input, nothing dropped
    assert np.array_equal(episode["actions"], regenerated["actions"])
    assert np.array_equal(episode["frames"], regenerated["obs/agentview_rgb"][:, ::-1, ::-1])
    failures_file = output_dir / f"{TASK_NAME}_demo.regeneration.json"
    assert json.loads(failures_file.read_text()) == {"demo_1": "the replay did not reach the task's success"}
    summary = json.loads((output_dir / "regeneration.json").read_text())
    assert summary["tasks"][0]["kept"] == 1 and summary["tasks"][0]["failed"] == 1


def test_the_output_folder_must_differ_from_the_input(tmp_path):
    with pytest.raises(SystemExit):
        regenerate_demos.parse_args(["--suite", "libero_spatial", "--input-dir", str(tmp_path), "--output-dir", str(tmp_path)])


def test_a_nan_action_stops_the_run_before_anything_is_rendered_and_names_where_it_is(tmp_path):
    input_dir = tmp_path / "official"
    write_libero_hdf5(input_dir / f"{TASK_NAME}_demo.hdf5", "pick up the black bowl", num_demos=2, num_steps=12)
    with h5py.File(input_dir / f"{TASK_NAME}_demo.hdf5", "r+") as file:
        file["data/demo_1/actions"][7, 2] = np.nan
    argv = ["--suite", "libero_spatial", "--input-dir", str(input_dir), "--output-dir", str(tmp_path / "out")]
    with pytest.raises(SystemExit, match=r"data/demo_1: actions contain NaN or inf \(1 values, first at step 7, dim 2\)"):
        regenerate_demos.main(argv)
    assert not (tmp_path / "out" / f"{TASK_NAME}_demo.hdf5").exists()
