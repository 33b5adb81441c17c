"""worldvla_data: reading LIBERO HDF5 files, no-op filtering, rotation, the tokenised cache, splits, samples."""

import h5py
import numpy as np
import pytest
import torch

import worldvla_data
from processing_worldvla import IGNORE_INDEX, upright_frames

try:
    from tests.libero_hdf5_fixture import synthetic_actions, synthetic_frames, write_libero_folder, write_libero_hdf5
except ImportError:
    from libero_hdf5_fixture import synthetic_actions, synthetic_frames, write_libero_folder, write_libero_hdf5


class CountingEncoder:
    """Wraps processor.encode_images to count frames; `fail_after` frames raises, like a crash mid-way."""

    def __init__(self, processor, monkeypatch, fail_after=None):
        self.frames, self.fail_after, self.encode = 0, fail_after, processor.encode_images
        monkeypatch.setattr(processor, "encode_images", self)

    def __call__(self, images):
        if self.fail_after is not None and self.frames >= self.fail_after:
            raise RuntimeError("simulated crash while tokenising")
        self.frames += len(images)
        return self.encode(images)


# ---------------------------------------------------------------------------------------------------------------------
# Cleaning
# ---------------------------------------------------------------------------------------------------------------------


def test_noop_filter_on_a_known_example():
    move = [0.1, 0.0, 0.0, 0.0, 0.0, 0.0]
    still = [0.0] * 6
    tiny = [5e-5, 0.0, 0.0, 0.0, 0.0, 0.0]  # norm below 1e-4
    actions = np.array(
        [
            still + [-1.0],  # first step, no motion: no-op
            move + [-1.0],  # kept
            still + [-1.0],  # same gripper as the last kept step: no-op
            still + [1.0],  # no motion but the gripper closes: kept
            tiny + [1.0],  # no-op
            still + [1.0],  # no-op
            move + [1.0],  # kept
            still + [-1.0],  # gripper opens: kept
        ]
    )
    keep = worldvla_data.keep_mask_without_noops(actions)
    assert keep.tolist() == [False, True, False, True, False, False, True, True]


def test_third_person_frames_are_rotated_180_degrees(tmp_path):
    frame = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(1, 2, 3, 3)
    rotated = upright_frames(frame)
    assert rotated[0, 0, 0].tolist() == frame[0, 1, 2].tolist()
    assert rotated[0, 1, 2].tolist() == frame[0, 0, 0].tolist()
    assert np.array_equal(rotated, np.rot90(frame, 2, axes=(1, 2)))

    # The fixture stores frames upside-down like LIBERO; reading gives the upright frames back, exactly (no resize).
    path = write_libero_hdf5(tmp_path / "task_demo.hdf5", "open the drawer", num_demos=1, num_steps=6, seed=3)
    episode = next(worldvla_data.read_libero_file(path, image_size=64))
    assert np.array_equal(episode["frames"], synthetic_frames(6, 64, 3000))


def test_opencv_convention_files_are_read_as_stored(tmp_path):
    path = write_libero_hdf5(tmp_path / "task_demo.hdf5", "open the drawer", num_demos=1, num_steps=4, seed=3)
    with h5py.File(path, "a") as file:
        stored = file["data/demo_0/obs/agentview_rgb"][()]
        file["data"].attrs["macros_image_convention"] = "opencv"
    episode = next(worldvla_data.read_libero_file(path, image_size=64))
    assert np.array_equal(episode["frames"], stored)
    with h5py.File(path, "a") as file:
        file["data"].attrs["macros_image_convention"] = "directx"
    with pytest.raises(worldvla_data.LiberoDataError, match="task_demo.hdf5.*macros_image_convention.*directx"):
        next(worldvla_data.read_libero_file(path, image_size=64))


def test_frames_are_resized_only_when_needed_with_a_warning(tmp_path, caplog):
    frames = synthetic_frames(2, 64, 0)
    assert worldvla_data.resize_frames(frames, 64) is frames
    resized = worldvla_data.resize_frames(synthetic_frames(2, 128, 0), 64)
    assert resized.shape == (2, 64, 64, 3) and resized.dtype == np.uint8
    path = write_libero_hdf5(tmp_path / "big_demo.hdf5", "open the drawer", num_demos=1, num_steps=4, image_size=128)
    assert next(worldvla_data.read_libero_file(path, image_size=64))["frames"].shape == (4, 64, 64, 3)
    assert "big_demo.hdf5: frames are stored at 128x128, the model takes 64x64" in caplog.text
    caplog.clear()
    next(worldvla_data.read_libero_file(write_libero_hdf5(tmp_path / "small_demo.hdf5", "x", num_demos=1, num_steps=4), image_size=64))
    assert "resizing" not in caplog.text


def test_noop_steps_are_dropped_with_their_frames(tmp_path):
    path = write_libero_hdf5(tmp_path / "t_demo.hdf5", "open the drawer", num_demos=1, num_steps=10, noop_steps=(0, 4))
    episode = next(worldvla_data.read_libero_file(path, image_size=64))
    keep = [t for t in range(10) if t not in (0, 4)]
    assert np.array_equal(episode["actions"], synthetic_actions(10, 0, (0, 4))[keep])
    assert np.array_equal(episode["frames"], synthetic_frames(10, 64, 0)[keep])
    assert episode["instruction"] == "open the drawer" and episode["demo"] == "demo_0" and episode["raw_length"] == 10



def add_expert_actions(path, demo, labels):
    with h5py.File(path, "r+") as file:
        file[f"data/{demo}"].create_dataset("expert_actions", data=labels)


def test_perturbed_demos_label_action_samples_with_the_expert_and_world_samples_with_what_ran(tmp_path, small_worldvla):
    """In a perturbed demo (collect_demos.py --perturb) an action sample's targets are the expert's labels and a
    world-model sample's action is the executed one; a step is dropped only when both are no-ops."""
    model, processor = small_worldvla
    path = write_libero_hdf5(tmp_path / "t_demo.hdf5", "open the drawer", num_demos=1, num_steps=12, noop_steps=(0, 4))
    executed = synthetic_actions(12, 0, (0, 4))
    labels = executed.copy()
    labels[:, :3] = -0.25 * executed[:, :3]
    labels[4, :3] = 0.3  # both are no-ops at step 0: dropped; step 4 moves in the labels only: kept
    add_expert_actions(path, "demo_0", labels)
    episode = next(worldvla_data.read_libero_file(path, image_size=64))
    keep = np.arange(1, 12)
    assert np.array_equal(episode["actions"], executed[keep]) and np.array_equal(episode["expert_actions"], labels[keep])

    rows = worldvla_data.tokenised_episodes(tmp_path, processor, cache_dir=tmp_path / "cache")
    (loaded,) = worldvla_data.load_episodes(rows)
    assert np.array_equal(loaded.actions, executed[keep]) and np.array_equal(loaded.expert_actions, labels[keep])
    samples = worldvla_data.WorldVLASamples([loaded], processor, "libero", history_frames=2, chunk_size=5)
    answer = [token for token in samples[2]["labels"] if token != IGNORE_INDEX][:-1]
    assert answer == sum((processor.action_to_token_ids(a, "libero") for a in labels[keep][2:7]), [])
    world = samples[samples.count("action") + 2]
    image_tokens = model.config.image_sequence_length
    prompt = world["input_ids"][: -(image_tokens + 1)]
    assert prompt[-1 - 9 : -1] == processor.action_to_token_ids(executed[keep][2], "libero")

    labels[3, 1] = np.nan
    with h5py.File(path, "r+") as file:
        file["data/demo_0/expert_actions"][...] = labels
    with pytest.raises(worldvla_data.LiberoDataError, match=r"data/demo_0: expert_actions contain NaN .* step 3, dim 1"):
        next(worldvla_data.read_libero_file(path, image_size=64))
    with h5py.File(path, "r+") as file:
        del file["data/demo_0/expert_actions"]
    add_expert_actions(path, "demo_0", executed[:-1])
    with pytest.raises(worldvla_data.LiberoDataError, match="12 actions but 11 expert_actions"):
        next(worldvla_data.read_libero_file(path, image_size=64))


# ---------------------------------------------------------------------------------------------------------------------
# Bad data
# ---------------------------------------------------------------------------------------------------------------------


def corrupt_demo_1(path, how):
    with h5py.File(path, "r+") as file:
        demo = file["data/demo_1"]
        if how == "missing_frames":
            del demo["obs/agentview_rgb"]
        elif how == "missing_actions":
            del demo["actions"]
        elif how == "nan":
            actions = demo["actions"][()]
            actions[3, 2] = np.nan
            demo["actions"][...] = actions
        elif how == "inf":
            actions = demo["actions"][()]
            actions[5, 0] = np.inf
            demo["actions"][...] = actions
        elif how == "empty":
            del demo["actions"], demo["obs/agentview_rgb"]
            demo.create_dataset("actions", data=np.zeros((0, 7)))
            demo.create_dataset("obs/agentview_rgb", data=np.zeros((0, 64, 64, 3), np.uint8))
        elif how == "mismatched":
            frames = demo["obs/agentview_rgb"][()]
            del demo["obs/agentview_rgb"]
            demo.create_dataset("obs/agentview_rgb", data=frames[:-2])


@pytest.mark.parametrize(
    "how, message",
    [
        ("missing_frames", "missing ['obs/agentview_rgb']"),
        ("missing_actions", "missing ['actions']"),
        ("nan", "NaN or inf"),
        ("inf", "NaN or inf"),
        ("empty", "empty episode"),
        ("mismatched", "12 actions but 10"),
    ],
)
def test_bad_data_error_names_the_file_and_demo(tmp_path, small_worldvla, how, message):
    path = write_libero_hdf5(tmp_path / "data" / "broken_task_demo.hdf5", "open the drawer", num_demos=3, num_steps=12)
    corrupt_demo_1(path, how)
    with pytest.raises(worldvla_data.LiberoDataError) as error:
        list(worldvla_data.read_libero_file(path, 64))
    assert str(path) in str(error.value) and "data/demo_1" in str(error.value) and message in str(error.value)
    # The same error comes through the cached pipeline, and nothing is cached for the broken file.
    with pytest.raises(worldvla_data.LiberoDataError, match="demo_1"):
        worldvla_data.tokenised_episodes(tmp_path / "data", small_worldvla[1], tmp_path / "cache")


def test_truncated_hdf5_names_the_file(tmp_path, small_worldvla):
    path = write_libero_hdf5(tmp_path / "data" / "cut_task_demo.hdf5", "open the drawer", num_demos=3, num_steps=12)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])  # a copy killed a third of the way
    with pytest.raises(worldvla_data.LiberoDataError, match=f"{path}: not a readable HDF5 file, truncated or damaged"):
        list(worldvla_data.read_libero_file(path, 64))
    with pytest.raises(worldvla_data.LiberoDataError, match="cut_task_demo.hdf5"):
        worldvla_data.tokenised_episodes(tmp_path / "data", small_worldvla[1], tmp_path / "cache")


def test_missing_instruction_and_empty_folder(tmp_path):
    path = write_libero_hdf5(tmp_path / "t_demo.hdf5", "open the drawer", num_demos=1, num_steps=4)
    with h5py.File(path, "r+") as file:
        file["data"].attrs["problem_info"] = "{}"
    with pytest.raises(worldvla_data.LiberoDataError, match="language_instruction"):
        list(worldvla_data.read_libero_file(path, 64))
    with pytest.raises(worldvla_data.LiberoDataError, match="nothing: no such folder"):
        worldvla_data.list_task_files(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(worldvla_data.LiberoDataError, match="no .hdf5 files in"):
        worldvla_data.list_task_files(tmp_path / "empty")


# ---------------------------------------------------------------------------------------------------------------------
# Tokenising and the cache
# ---------------------------------------------------------------------------------------------------------------------


def test_cache_is_reused_and_invalidated_by_a_changed_file(tmp_path, small_worldvla, monkeypatch):
    _, processor = small_worldvla
    files = write_libero_folder(tmp_path / "data", num_tasks=2, num_demos=2, num_steps=8)
    counter = CountingEncoder(processor, monkeypatch)
    first = worldvla_data.tokenised_episodes(tmp_path / "data", processor, tmp_path / "cache")
    assert counter.frames == 2 * 2 * 8 and len(first) == 4

    counter.frames = 0
    second = worldvla_data.tokenised_episodes(tmp_path / "data", processor, tmp_path / "cache")
    assert counter.frames == 0, "a second run with the same inputs must tokenise nothing"
    assert [row["codes"] for row in second] == [row["codes"] for row in first]

    # The codes are the VQ's codes of the upright frames, in order.
    expected = processor.encode_images(list(synthetic_frames(8, 64, 1000 * 1 + 0)))
    assert np.array_equal(np.asarray(second[2]["codes"]), expected.numpy())

    write_libero_hdf5(files[1], "a new instruction", num_demos=2, num_steps=8, seed=7)  # rewritten: new mtime
    counter.frames = 0
    third = worldvla_data.tokenised_episodes(tmp_path / "data", processor, tmp_path / "cache")
    assert counter.frames == 2 * 8, "only the rewritten file is tokenised again"
    assert third[3]["instruction"] == "a new instruction"


def test_interrupted_tokenisation_leaves_no_finished_cache(tmp_path, small_worldvla, monkeypatch):
    _, processor = small_worldvla
    write_libero_folder(tmp_path / "data", num_tasks=1, num_demos=3, num_steps=8)
    CountingEncoder(processor, monkeypatch, fail_after=8)  # crashes on the second episode
    with pytest.raises(RuntimeError, match="simulated crash"):
        worldvla_data.tokenised_episodes(tmp_path / "data", processor, tmp_path / "cache")
    assert not list((tmp_path / "cache").rglob("dataset_info.json"))

    monkeypatch.undo()
    counter = CountingEncoder(processor, monkeypatch)
    rows = worldvla_data.tokenised_episodes(tmp_path / "data", processor, tmp_path / "cache")
    assert counter.frames == 3 * 8 and len(rows) == 3


# ---------------------------------------------------------------------------------------------------------------------
# Splits, statistics, samples
# ---------------------------------------------------------------------------------------------------------------------


def test_split_follows_the_release_rule():
    tasks = [f"task_{t}" for t in range(10) for _ in range(10)]
    splits = worldvla_data.split_episodes(tasks)
    # ceil(0.9 * 10) = 9: task 9 is out of distribution; in each other task, episode 9 is in-distribution validation.
    assert splits[90:] == ["val_ood"] * 10
    for task in range(9):
        assert splits[task * 10 : task * 10 + 10] == ["train"] * 9 + ["val_ind"]
    # ceil(0.9 * 3) = 3 tasks and ceil(0.9 * 5) = 5 episodes: nothing is held out.
    assert set(worldvla_data.split_episodes([f"t{t}" for t in range(3) for _ in range(5)])) == {"train"}
    # 20 episodes: ceil(18) = 18, the last two are held out.
    assert worldvla_data.split_episodes(["a"] * 20)[-3:] == ["train", "val_ind", "val_ind"]
    assert set(worldvla_data.split_episodes(tasks, "none")) == {"train"}
    # "episodes": the in-distribution rule in every task, none held out whole.
    by_episodes = worldvla_data.split_episodes(tasks, "episodes")
    assert by_episodes == (["train"] * 9 + ["val_ind"]) * 10
    with pytest.raises(ValueError, match="validation must be one of"):
        worldvla_data.split_episodes(tasks, True)


def test_demos_are_read_in_numeric_order(tmp_path):
    path = write_libero_hdf5(tmp_path / "t_demo.hdf5", "open the drawer", num_demos=11, num_steps=3)
    assert [e["demo"] for e in worldvla_data.read_libero_file(path, 64)] == [f"demo_{i}" for i in range(11)]


def test_action_statistics():
    actions = np.stack([np.linspace(-1, 1, 101)] * 7, axis=1) * np.arange(1, 8)
    stats = worldvla_data.compute_action_statistics(actions)
    assert np.allclose(stats["min"], -np.arange(1, 8)) and np.allclose(stats["max"], np.arange(1, 8))
    assert np.allclose(stats["q01"], -0.98 * np.arange(1, 8)) and np.allclose(stats["mean"], 0)
    assert np.allclose(stats["std"], actions.std(0))


def make_episode(length, grid=4, seed=0):
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 256, (length, grid, grid))
    actions = rng.uniform(-0.9, 0.9, (length, 7))
    return worldvla_data.Episode("task", "demo_0", "open the drawer", codes, actions)


def test_sample_counts_and_layouts(small_worldvla):
    model, processor = small_worldvla
    config = model.config
    episodes = [make_episode(12), make_episode(7, seed=1)]
    samples = worldvla_data.WorldVLASamples(episodes, processor, "libero", history_frames=2, chunk_size=5)
    # Action samples: t = 0 .. T - K; world-model samples: t = 0 .. T - 2.
    assert samples.count("action") == (12 - 5 + 1) + (7 - 5 + 1)
    assert samples.count("world_model") == 11 + 6
    assert len(samples) == samples.count("action") + samples.count("world_model")

    image_tokens = config.image_sequence_length
    first, second = samples[0], samples[1]
    # The episode's first sample has one history frame (the release cuts the history at the start), the next two.
    assert first["input_ids"].count(config.image_start_token_id) == 1
    assert second["input_ids"].count(config.image_start_token_id) == 2
    assert len(second["input_ids"]) - len(first["input_ids"]) == image_tokens
    expected_answer = []
    for action in episodes[0].actions[1:6]:
        expected_answer += processor.action_to_token_ids(action, "libero")
    expected_answer.append(config.separator_token_id)
    labelled = [token for token in second["labels"] if token != IGNORE_INDEX]
    assert labelled == expected_answer == second["input_ids"][-len(expected_answer) :]
    history = second["input_ids"][: -len(expected_answer)]
    assert history[-1 - image_tokens : -1] == processor.image_codes_to_token_ids(episodes[0].codes[1])

    world = samples[samples.count("action") + 3]  # episode 0, t = 3
    labelled = [token for token in world["labels"] if token != IGNORE_INDEX]
    assert labelled == processor.image_codes_to_token_ids(episodes[0].codes[4]) + [config.separator_token_id]
    prompt = world["input_ids"][: -len(labelled)]
    assert prompt[-1 - 9 : -1] == processor.action_to_token_ids(episodes[0].actions[3], "libero")
    assert prompt[-1 - 9 - image_tokens : -1 - 9] == processor.image_codes_to_token_ids(episodes[0].codes[3])

    only_action = worldvla_data.WorldVLASamples(episodes, processor, "libero", 2, 5, kinds=("action",))
    assert len(only_action) == only_action.count("action") == 11
    with pytest.raises(ValueError, match="unknown sample kinds"):
        worldvla_data.WorldVLASamples(episodes, processor, "libero", 2, 5, kinds=("video",))


def test_episodes_round_trip_through_the_cache(tmp_path, small_worldvla):
    _, processor = small_worldvla
    write_libero_folder(tmp_path / "data", num_tasks=2, num_demos=2, num_steps=9, noop_steps=(2,))
    episodes = worldvla_data.load_episodes(worldvla_data.tokenised_episodes(tmp_path / "data", processor, tmp_path / "c"))
    assert [(e.task, e.demo) for e in episodes] == [("task_00", "demo_0"), ("task_00", "demo_1"), ("task_01", "demo_0"), ("task_01", "demo_1")]
    assert all(e.codes.shape == (8, 4, 4) and e.actions.shape == (8, 7) for e in episodes)
    assert np.array_equal(episodes[1].actions, np.delete(synthetic_actions(9, 1, (2,)), 2, axis=0))
    sample = worldvla_data.WorldVLASamples(episodes, processor, "libero", 2, 5)[0]
    assert isinstance(sample["input_ids"], list) and torch.tensor(sample["input_ids"]).dtype == torch.long
