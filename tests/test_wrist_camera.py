"""The wrist camera option (`wrist_camera`): one prompt order for training samples and the policy, each frame
encoded once, and clear errors for a missing or unexpected wrist frame."""

import h5py
import numpy as np
import pytest
import torch

import worldvla_data
from policy_worldvla import WorldVLAPolicy, select_actions
from processing_worldvla import history_indices, prompt_frames, uses_wrist_camera
from scripts.build_small_checkpoint import build_small_worldvla

INSTRUCTION = "put the black bowl on the plate"


@pytest.fixture(scope="module")
def wrist_worldvla():
    return build_small_worldvla(seed=0, wrist_camera=True)


@pytest.fixture
def camera_frames():
    rng = np.random.default_rng(3)
    third = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(7)]
    wrist = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(7)]
    return third, wrist


def test_prompt_frames_interleave_each_step_third_person_then_wrist():
    assert prompt_frames(["a0", "a1"]) == ["a0", "a1"]
    assert prompt_frames(["a0", "a1"], ["w0", "w1"]) == ["a0", "w0", "a1", "w1"]
    with pytest.raises(ValueError, match="2 third-person frames but 1 wrist frames"):
        prompt_frames(["a0", "a1"], ["w0"])


def test_the_longest_sample_counts_both_cameras(wrist_worldvla):
    config = wrist_worldvla[0].config
    frame, block = config.image_sequence_length, config.action_block_length
    assert config.cameras_per_step == 2
    assert config.longest_sample_length == 1 + 2 * 2 * frame + 1 + 5 * block + 1


def test_training_samples_and_policy_prompts_agree(wrist_worldvla, camera_frames, monkeypatch):
    model, processor = wrist_worldvla
    third, wrist = camera_frames
    third_codes, wrist_codes = processor.encode_images(third).numpy(), processor.encode_images(wrist).numpy()
    episode = worldvla_data.Episode("task", "demo_0", INSTRUCTION, third_codes, np.zeros((7, 7)), wrist_codes=wrist_codes)
    samples = worldvla_data.WorldVLASamples([episode], processor, "libero", 2, 5, kinds=("action",), wrist_camera=True)
    prompts, encoded = [], []
    generate, encode = model.generate_action_tokens, processor.encode_images
    monkeypatch.setattr(model, "generate_action_tokens", lambda ids, mask=None, decoding="parallel": (prompts.append(ids[0].tolist()), generate(ids, mask, decoding=decoding))[1])
    monkeypatch.setattr(processor, "encode_images", lambda images: (encoded.append(len(images)), encode(images))[1])
    policy = WorldVLAPolicy(model, processor, n_action_steps=1)
    for step in range(3):
        policy.select_action(third[step], INSTRUCTION, wrist_frame=wrist[step])
    assert encoded == [2, 2, 2]  # each step's two frames once; the previous step's codes are kept
    for step, prompt in enumerate(prompts):
        steps = list(history_indices(step, 2))
        expected = [third_codes[steps[0]], wrist_codes[steps[0]]] + ([third_codes[step], wrist_codes[step]] if step else [])
        sample = samples[step]
        answer_start = sample["labels"].index(next(label for label in sample["labels"] if label != -100))
        assert prompt == sample["input_ids"][:answer_start]
        for got, want in zip(prompt_frames(third_codes[steps], wrist_codes[steps]), expected):
            np.testing.assert_array_equal(got, want)


def test_batched_wrist_policies_act_as_each_would_alone(wrist_worldvla, camera_frames):
    model, processor = wrist_worldvla
    third, wrist = camera_frames
    alone = [WorldVLAPolicy(model, processor) for _ in range(2)]
    expected = [[policy.select_action(third[i + s], INSTRUCTION, wrist_frame=wrist[i + s]) for s in range(3)] for i, policy in enumerate(alone)]
    together = [WorldVLAPolicy(model, processor)]
    together.append(together[0].for_another_env())
    for s in range(3):
        actions = select_actions(together, [third[s], third[1 + s]], INSTRUCTION, wrist_frames=[wrist[s], wrist[1 + s]])
        for i in range(2):
            np.testing.assert_allclose(actions[i], expected[i][s], atol=1e-6)


def test_a_missing_or_unexpected_wrist_frame_is_refused(wrist_worldvla, small_worldvla, camera_frames):
    third, wrist = camera_frames
    with pytest.raises(ValueError, match="trained with the wrist camera"):
        WorldVLAPolicy(*wrist_worldvla).select_action(third[0], INSTRUCTION)
    with pytest.raises(ValueError, match=r"wrist_frame has shape \(32, 32, 3\)"):
        WorldVLAPolicy(*wrist_worldvla).select_action(third[0], INSTRUCTION, wrist_frame=np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="third-person camera only"):
        WorldVLAPolicy(*small_worldvla).select_action(third[0], INSTRUCTION, wrist_frame=wrist[0])


def test_demos_without_the_wrist_camera_are_refused_by_name(tmp_path, wrist_worldvla):
    path = tmp_path / "task_demo.hdf5"
    with h5py.File(path, "w") as file:
        data = file.create_group("data")
        data.attrs["problem_info"] = '{"language_instruction": "put the bowl on the plate"}'
        demo = data.create_group("demo_0")
        demo["actions"] = np.full((4, 7), 0.5)
        demo["obs/agentview_rgb"] = np.zeros((4, 64, 64, 3), np.uint8)
    episodes = worldvla_data.load_episodes(worldvla_data.tokenised_episodes(tmp_path, wrist_worldvla[1], tmp_path / "cache"))
    assert episodes[0].wrist_codes is None
    with pytest.raises(ValueError, match=r"not read for \['task/demo_0'\]"):
        worldvla_data.WorldVLASamples(episodes, wrist_worldvla[1], "libero", 2, 2, wrist_camera=True)
    with pytest.raises(worldvla_data.LiberoDataError, match=r"task_demo.hdf5, data/demo_0: missing \['obs/eye_in_hand_rgb'\].*--cameras agentview,eye_in_hand"):
        worldvla_data.tokenised_episodes(tmp_path, wrist_worldvla[1], tmp_path / "cache", wrist_camera=True)


def test_wrist_codes_are_read_from_the_demos(tmp_path, wrist_worldvla):
    processor = wrist_worldvla[1]
    rng = np.random.default_rng(5)
    third, wrist = rng.integers(0, 256, (2, 4, 64, 64, 3), dtype=np.uint8)
    with h5py.File(tmp_path / "task_demo.hdf5", "w") as file:
        data = file.create_group("data")
        data.attrs["problem_info"] = '{"language_instruction": "put the bowl on the plate"}'
        demo = data.create_group("demo_0")
        demo["actions"] = np.full((4, 7), 0.5)
        demo["obs/agentview_rgb"] = third
        demo["obs/eye_in_hand_rgb"] = wrist
    (episode,) = worldvla_data.load_episodes(worldvla_data.tokenised_episodes(tmp_path, processor, tmp_path / "cache", wrist_camera=True))
    # Stored upside-down (LIBERO's OpenGL convention): both cameras are turned upright before encoding.
    np.testing.assert_array_equal(episode.codes, processor.encode_images(list(third[:, ::-1, ::-1])).numpy())
    np.testing.assert_array_equal(episode.wrist_codes, processor.encode_images(list(wrist[:, ::-1, ::-1])).numpy())


def test_a_third_person_model_continues_with_the_wrist_camera_through_train_py(tmp_path):
    import train
    from configuration_worldvla import WorldVLAConfig
    from scripts import reproduce_checkpoint

    try:
        from tests.libero_hdf5_fixture import write_libero_folder
    except ImportError:
        from libero_hdf5_fixture import write_libero_folder

    write_libero_folder(tmp_path / "data", num_tasks=1, num_demos=2, num_steps=10)
    # Room for third-person prompts (96 tokens and 37 of text), not for two more frames of 24 tokens.
    model, processor = build_small_worldvla(seed=0, max_position_embeddings=140)
    model.save_pretrained(tmp_path / "base")
    processor.save_pretrained(tmp_path / "base")
    common = ["--model", str(tmp_path / "base"), "--data-dir", str(tmp_path / "data"), "--data-cache-dir", str(tmp_path / "cache"),
              "--per-device-train-batch-size", "4", "--global-batch-size", "4", "--learning-rate", "1e-3", "--max-steps", "2",
              "--save-strategy", "no", "--eval-strategy", "no", "--dataloader-num-workers", "0", "--disable-tqdm", "true",
              "--val-split", "none", "--wrist-camera"]
    with pytest.raises(ValueError, match="is shorter than the longest sample even without its text: 144 tokens"):
        train.main([*common, "--output-dir", str(tmp_path / "too-short")])

    room = reproduce_checkpoint.wrist_camera_room(tmp_path / "base")
    frame = model.config.image_sequence_length
    assert room == ["--max-position-embeddings", str(model.config.max_position_embeddings + 2 * frame)]
    _, metrics = train.main([*common, *room, "--output-dir", str(tmp_path / "wrist")])
    assert np.isfinite(metrics["train_loss"])
    config = WorldVLAConfig.from_pretrained(tmp_path / "wrist" / "model")
    assert config.wrist_camera and config.max_position_embeddings == int(room[1])
    assert reproduce_checkpoint.wrist_camera_room(tmp_path / "wrist" / "model") == []  # room made once
    card = (tmp_path / "wrist" / "model" / "README.md").read_text()
    assert "images=[previous_frame, previous_wrist_frame, current_frame, current_wrist_frame])" in card
    policy = WorldVLAPolicy.from_pretrained(tmp_path / "wrist" / "model")
    rng = np.random.default_rng(0)
    frame, wrist = rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    assert policy.select_action(frame, INSTRUCTION, wrist_frame=wrist).shape == (7,)


def test_reproduce_checkpoint_renders_and_trains_with_the_wrist_camera():
    from scripts import reproduce_checkpoint

    first = reproduce_checkpoint.stage_commands(reproduce_checkpoint.parse_args(["--work-dir", "runs/w", "--wrist-camera"]))
    assert all(command[command.index("--cameras") + 1] == "agentview,eye_in_hand" for command in first["demos"])
    assert "--wrist-camera" in first["init"][0] and "--wrist-camera" in first["train"][0]
    assert "--max-position-embeddings" not in first["train"][0]  # the init stage's config has the room
    plain = reproduce_checkpoint.stage_commands(reproduce_checkpoint.parse_args(["--work-dir", "runs/p"]))
    assert all(command[command.index("--cameras") + 1] == "agentview" for command in plain["demos"])
    assert "--wrist-camera" not in plain["init"][0] + plain["train"][0]


def test_a_sequence_longer_than_the_context_is_refused_not_trained_on(small_worldvla):
    model = small_worldvla[0]
    context = model.config.max_position_embeddings
    model(input_ids=torch.zeros((1, context), dtype=torch.long))
    with pytest.raises(ValueError, match=f"a sequence of {context + 1} tokens exceeds the context of {context}"):
        model(input_ids=torch.zeros((1, context + 1), dtype=torch.long))


def test_a_config_from_code_files_before_the_option_has_no_wrist_camera(small_worldvla):
    model, processor = small_worldvla
    config = model.config.to_dict()
    del config["wrist_camera"]
    older = type("OlderConfig", (), config)()  # what the code files of a checkpoint made before the option load
    assert not uses_wrist_camera(older)
    assert uses_wrist_camera(build_small_worldvla(seed=0, wrist_camera=True)[0].config)
