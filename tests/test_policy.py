"""WorldVLAPolicy: the action queue, the history rule shared with training, one encoding per frame, and clear
errors instead of actions for bad inputs."""

import copy

import numpy as np
import pytest
import torch

import worldvla_data
from policy_worldvla import WorldVLAPolicy, select_actions
from processing_worldvla import history_indices

INSTRUCTION = "put the black bowl on the plate"


@pytest.fixture
def episode_frames():
    rng = np.random.default_rng(1)
    return [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(12)]


@pytest.fixture
def recorded_prompts(small_worldvla, monkeypatch):
    """The prompts the model is queried with, and the number of frames each VQ call encodes."""
    model, processor = small_worldvla
    prompts, encoded = [], []
    generate, encode = model.generate_action_tokens, processor.encode_images

    def recording_generate(input_ids, attention_mask=None, decoding="parallel"):
        prompts.append(input_ids[0].tolist())
        return generate(input_ids, attention_mask, decoding=decoding)

    def counting_encode(images):
        encoded.append(len(images))
        return encode(images)

    monkeypatch.setattr(model, "generate_action_tokens", recording_generate)
    monkeypatch.setattr(processor, "encode_images", counting_encode)
    return prompts, encoded


def test_queue_executes_whole_chunks_and_prompts_follow_the_training_rule(small_worldvla, episode_frames, recorded_prompts):
    model, processor = small_worldvla
    prompts, encoded = recorded_prompts
    policy = WorldVLAPolicy(model, processor)
    actions = [policy.select_action(frame, INSTRUCTION) for frame in episode_frames]
    assert len(prompts) == 3  # K = 5: queries at steps 0, 5 and 10
    assert encoded == [1, 2, 2]  # steps 0; 4 and 5; 9 and 10: each frame a query sees, encoded once
    codes = processor.encode_images(episode_frames)
    for query, step in zip(prompts, (0, 5, 10)):
        # The sample a training episode would give at this step, by worldvla_data's rule.
        history = codes[list(history_indices(step, model.config.history_frames))]
        assert query == processor.build_action_sample(INSTRUCTION, list(history))["input_ids"]
    # The queued actions are the chunk predicted at the query, in order.
    fresh = WorldVLAPolicy(model, processor)
    chunk = fresh.predict_action_chunk(episode_frames[0], INSTRUCTION)
    np.testing.assert_array_equal(np.stack(actions[:5]), chunk)
    assert chunk.shape == (5, 7) and np.isfinite(chunk).all()


def test_receding_horizon_reuses_the_previous_frame_codes(small_worldvla, episode_frames, recorded_prompts):
    model, processor = small_worldvla
    prompts, encoded = recorded_prompts
    policy = WorldVLAPolicy(model, processor, n_action_steps=1)
    for frame in episode_frames[:4]:
        policy.select_action(frame, INSTRUCTION)
    assert len(prompts) == 4 and encoded == [1, 1, 1, 1]


def test_reset_starts_a_new_history_and_queue(small_worldvla, episode_frames, recorded_prompts):
    model, processor = small_worldvla
    prompts, _ = recorded_prompts
    policy = WorldVLAPolicy(model, processor)
    first = policy.select_action(episode_frames[0], INSTRUCTION)
    policy.select_action(episode_frames[1], INSTRUCTION)
    policy.reset()
    again = policy.select_action(episode_frames[0], INSTRUCTION)
    assert len(prompts) == 2 and prompts[0] == prompts[1]  # one frame again after the reset
    np.testing.assert_array_equal(first, again)


def test_a_new_instruction_drops_the_queued_actions(small_worldvla, episode_frames, recorded_prompts):
    model, processor = small_worldvla
    prompts, _ = recorded_prompts
    policy = WorldVLAPolicy(model, processor)
    policy.select_action(episode_frames[0], INSTRUCTION)
    policy.select_action(episode_frames[1], "open the top drawer")
    assert len(prompts) == 2


def test_training_samples_use_the_same_history_rule(small_worldvla):
    model, processor = small_worldvla
    codes = np.arange(6 * 16).reshape(6, 4, 4).astype(np.int16) % 256
    episode = worldvla_data.Episode("task", "demo_0", INSTRUCTION, codes, np.zeros((6, 7)))
    samples = worldvla_data.WorldVLASamples([episode], processor, "libero", history_frames=2, chunk_size=5, kinds=("action",))
    for index, (_, _, step) in enumerate(samples.index):
        expected = processor.build_action_sample(INSTRUCTION, list(codes[list(history_indices(step, 2))]), np.zeros((5, 7)), "libero")
        assert samples[index] == expected
    assert list(history_indices(0, 2)) == [0] and list(history_indices(4, 2)) == [3, 4]


@pytest.mark.parametrize(
    "frame, message",
    [
        (np.zeros((32, 32, 3), np.uint8), r"shape \(32, 32, 3\).*uint8 \(64, 64, 3\)"),
        (np.zeros((64, 64, 3), np.float32), "dtype float32"),
        (np.zeros((64, 64), np.uint8), r"shape \(64, 64\)"),
    ],
)
def test_bad_frames_are_refused(small_worldvla, frame, message):
    policy = WorldVLAPolicy(*small_worldvla)
    with pytest.raises(ValueError, match=message):
        policy.select_action(frame, INSTRUCTION)


def test_bad_arguments_are_refused(small_worldvla, episode_frames):
    model, processor = small_worldvla
    with pytest.raises(ValueError, match="unnorm_key 'bridge' has no action statistics.*libero"):
        WorldVLAPolicy(model, processor, unnorm_key="bridge")
    for steps in (0, 6, True):
        with pytest.raises(ValueError, match="n_action_steps"):
            WorldVLAPolicy(model, processor, n_action_steps=steps)
    with pytest.raises(ValueError, match="instruction must be a non-empty string"):
        WorldVLAPolicy(model, processor).select_action(episode_frames[0], "")


def test_gripper_hold_lets_a_reversal_through_only_after_consecutive_actions_give_it(small_worldvla, episode_frames, monkeypatch):
    """gripper_hold=3: a stray open command inside a closed grasp is replaced by the executed close (the other six
    numbers of the action as decoded); three opens in a row open it. gripper_hold=1 executes the chunks as decoded,
    select_actions holds the gripper the same way, and gripper_hold_direction="release" holds the opens only."""
    import policy_worldvla

    grippers = [[0.9, 0.9, 0.8, 0.9, -0.7], [0.9, 0.9, -0.6, -0.7, -0.8], [-0.9, 0.5, -0.9, -0.9, -0.9]]
    chunks = []
    for chunk_grippers in grippers:
        chunk = np.arange(35, dtype=np.float64).reshape(5, 7) / 100 + len(chunks)
        chunk[:, -1] = chunk_grippers
        chunks.append(chunk)
    queries = iter(())
    monkeypatch.setattr(policy_worldvla, "_query_chunks", lambda policies, instruction: [next(queries) for _ in policies])
    decoded = np.concatenate(chunks)
    frames = episode_frames + episode_frames[:3]  # 15 steps: three chunks

    executed = {}
    for hold in (1, 3):
        queries = iter(chunks)
        policy = WorldVLAPolicy(*small_worldvla, gripper_hold=hold)
        executed[hold] = np.stack([policy.select_action(frame, INSTRUCTION) for frame in frames])
    np.testing.assert_array_equal(executed[1], decoded)
    np.testing.assert_array_equal(executed[3][:, :6], decoded[:, :6])
    held = [0.9, 0.9, 0.8, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, -0.8, -0.9, -0.9, -0.9, -0.9, -0.9]
    np.testing.assert_array_equal(executed[3][:, -1], held)  # steps 4, 7, 8 held; the close at step 11 held too

    queries = iter(chunks)
    release_only = WorldVLAPolicy(*small_worldvla, gripper_hold=3, gripper_hold_direction="release")
    got = np.stack([release_only.select_action(frame, INSTRUCTION) for frame in frames])
    released = [0.9, 0.9, 0.8, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, -0.8, -0.9, 0.5, 0.5, 0.5, -0.9]
    np.testing.assert_array_equal(got[:, -1], released)  # the close at step 11 as decoded; 3 opens then open it
    np.testing.assert_array_equal(got[:, :6], decoded[:, :6])

    queries = iter(chunks)
    batched = WorldVLAPolicy(*small_worldvla, gripper_hold=3)
    got = [select_actions([batched], [frame], INSTRUCTION)[0] for frame in frames]
    np.testing.assert_array_equal(np.stack(got), executed[3])
    for hold in (0, True, 2.0):
        with pytest.raises(ValueError, match="gripper_hold"):
            WorldVLAPolicy(*small_worldvla, gripper_hold=hold)
    with pytest.raises(ValueError, match="gripper_hold_direction must be one of"):
        WorldVLAPolicy(*small_worldvla, gripper_hold=3, gripper_hold_direction="close")


def test_a_processor_of_another_model_is_refused(small_worldvla):
    from scripts.build_small_checkpoint import build_small_worldvla

    model, processor = small_worldvla
    _, other_size = build_small_worldvla(image_size=128, seed=0)
    with pytest.raises(ValueError, match="image_size"):
        WorldVLAPolicy(model, other_size)
    # Same layout, other VQ weights: its codes would mean nothing to the model.
    _, other_weights = build_small_worldvla(seed=1)
    model.config.vq_fingerprint = processing_fingerprint(processor)
    try:
        WorldVLAPolicy(model, processor)
        with pytest.raises(ValueError, match="VQ image tokenizer is not the one"):
            WorldVLAPolicy(model, other_weights)
        model.config.action_statistics_keys = ["my_robot"]
        with pytest.raises(ValueError, match=r"trained with action statistics \['my_robot'\]"):
            WorldVLAPolicy(model, processor)
    finally:
        del model.config.vq_fingerprint
        model.config.action_statistics_keys = None


def processing_fingerprint(processor):
    from processing_worldvla import vq_fingerprint

    return vq_fingerprint(processor.vq_model)


def test_non_finite_model_output_never_becomes_an_action(small_worldvla, episode_frames):
    model, processor = small_worldvla
    policy = WorldVLAPolicy(model, processor)
    weight = model.lm_head.weight
    saved = weight.detach().clone()
    try:
        with torch.no_grad():
            weight.fill_(float("nan"))
        with pytest.raises((FloatingPointError, RuntimeError), match="(?i)non-finite"):
            policy.select_action(episode_frames[0], INSTRUCTION)
    finally:
        with torch.no_grad():
            weight.copy_(saved)


def test_batched_environments_act_as_each_would_alone(small_worldvla, episode_frames, monkeypatch):
    """select_actions over policies of one model: the actions each policy takes alone, the queries due at a step in
    one forward, prompts of different lengths (two history frames and one) right-padded in one batch."""
    model, processor = small_worldvla
    rng = np.random.default_rng(2)
    later_frames = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(7)]
    alone = WorldVLAPolicy(model, processor)
    expected_first = [alone.select_action(frame, INSTRUCTION) for frame in episode_frames]
    alone.reset()
    expected_later = [alone.select_action(frame, INSTRUCTION) for frame in later_frames]
    codes = processor.encode_images(episode_frames[:1])[0]
    one_frame, two_frames = (len(processor.build_action_sample(INSTRUCTION, [codes] * n)["input_ids"]) for n in (1, 2))

    batches, encoded = [], []
    generate, encode = model.generate_action_tokens, processor.encode_images
    monkeypatch.setattr(model, "generate_action_tokens", lambda ids, mask, decoding: batches.append(mask.sum(-1).tolist()) or generate(ids, mask, decoding=decoding))
    monkeypatch.setattr(processor, "encode_images", lambda images: encoded.append(len(images)) or encode(images))
    first = WorldVLAPolicy(model, processor)
    later = first.for_another_env()  # this environment starts 5 steps after the first
    assert later.model is first.model and later._history is not first._history
    got_first = [first.select_action(frame, INSTRUCTION) for frame in episode_frames[:5]]
    got_later = []
    for frame, later_frame in zip(episode_frames[5:], later_frames):
        action, later_action = select_actions([first, later], [frame, later_frame], INSTRUCTION)
        got_first.append(action)
        got_later.append(later_action)
    np.testing.assert_array_equal(np.stack(got_first), np.stack(expected_first))
    np.testing.assert_array_equal(np.stack(got_later), np.stack(expected_later))
    # Queries at steps 0 (the first alone), 5 and 10 (both, one forward each; at 5 the later one has one frame).
    assert batches == [[one_frame], [two_frames, one_frame], [two_frames, two_frames]]
    assert encoded == [1, 3, 4]  # every frame a query sees encoded once, the batch's new frames in one VQ call


def test_batched_policies_must_share_one_model(small_worldvla, episode_frames):
    model, processor = small_worldvla
    first = WorldVLAPolicy(model, processor)
    other_model = WorldVLAPolicy(copy.deepcopy(model), processor)
    with pytest.raises(ValueError, match="share one model"):
        select_actions([first, other_model], episode_frames[:2], INSTRUCTION)
    with pytest.raises(ValueError, match="2 policies but 1 frames"):
        select_actions([first, first.for_another_env()], episode_frames[:1], INSTRUCTION)


def test_a_lora_adapter_loads_merged_on_the_base_it_records(small_worldvla, episode_frames, tmp_path):
    """An adapter folder (adapter_config.json, adapter weights, processor) as `train.py --lora-rank` writes it: the
    policy is its recorded base with the adapter merged, weight for weight, and acts as that merged model does."""
    from peft import LoraConfig, get_peft_model

    model, processor = small_worldvla
    model.save_pretrained(tmp_path / "base")
    processor.save_pretrained(tmp_path / "base")
    torch.manual_seed(0)  # init_lora_weights=False: a non-zero adapter, so merging it moves the weights
    adapted = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, target_modules=["q_proj", "down_proj"], init_lora_weights=False))
    adapted.peft_config["default"].base_model_name_or_path = str(tmp_path / "base")
    adapted.save_pretrained(tmp_path / "adapter")
    processor.save_pretrained(tmp_path / "adapter")
    merged = adapted.merge_and_unload().eval()

    policy = WorldVLAPolicy.from_pretrained(tmp_path / "adapter", device="cpu")
    loaded, expected, base = policy.model.state_dict(), merged.state_dict(), model.state_dict()
    assert loaded.keys() == expected.keys() and not any("lora" in name for name in loaded)
    for name in loaded:
        torch.testing.assert_close(loaded[name], expected[name], rtol=0, atol=0, msg=name)
    assert not torch.equal(loaded["model.layers.0.self_attn.q_proj.weight"], base["model.layers.0.self_attn.q_proj.weight"])
    np.testing.assert_array_equal(
        policy.predict_action_chunk(episode_frames[0], INSTRUCTION),
        WorldVLAPolicy(merged, processor).predict_action_chunk(episode_frames[0], INSTRUCTION),
    )


def test_a_lora_adapter_whose_base_is_missing_says_so(small_worldvla, tmp_path):
    from peft import LoraConfig, get_peft_model

    model, processor = small_worldvla
    adapted = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, target_modules=["q_proj"]))
    adapted.peft_config["default"].base_model_name_or_path = str(tmp_path / "moved-away")
    adapted.save_pretrained(tmp_path / "adapter")
    processor.save_pretrained(tmp_path / "adapter")
    with pytest.raises(FileNotFoundError, match=f"names its base '{tmp_path / 'moved-away'}'.*no such folder"):
        WorldVLAPolicy.from_pretrained(tmp_path / "adapter", device="cpu")
