"""WorldVLA processor: action tokenizer, image layout, prompts, save/load."""

import numpy as np
import pytest
import torch

from configuration_worldvla import WorldVLAConfig, WorldVLAVQConfig
from modeling_worldvla import WorldVLAVQModel
from processing_worldvla import (
    ACTION_PROMPT,
    LIBERO_ACTION_STATISTICS,
    WORLD_MODEL_PROMPT,
    ActionTokenizer,
    WorldVLAProcessor,
    build_text_tokenizer,
)

RELEASED = WorldVLAConfig()


def released_action_tokenizer():
    layout = RELEASED.processor_layout()
    return ActionTokenizer(layout["action_token_offset"], 256, 7, {"libero": LIBERO_ACTION_STATISTICS}, "libero")


def test_action_round_trip_within_half_a_bin():
    tokenizer = released_action_tokenizer()
    low, high = tokenizer.bounds()
    rng = np.random.default_rng(0)
    actions = rng.uniform(low, high, (1000, 7))
    actions[0], actions[1] = low, high  # the edges themselves
    tokens = tokenizer.encode(actions)
    assert tokens.min() >= 10006 and tokens.max() <= 10261  # the released bin ids
    decoded = tokenizer.decode(tokens)
    half_bin = (high - low) / 255 / 2
    assert (np.abs(decoded - actions) <= half_bin + 1e-9).all()


def test_action_binning_matches_the_release_rule():
    """bin = digitize(normalised, linspace(-1, 1, 256)); token = bin + 10005; decode = centre of the bin."""
    tokenizer = released_action_tokenizer()
    normalised = np.array([-1.0, -0.999, 0.0, 0.5, 0.999, 1.0])
    actions = np.repeat(((normalised + 1) / 2)[:, None], 7, axis=1) * (tokenizer.bounds()[1] - tokenizer.bounds()[0])
    actions += tokenizer.bounds()[0]
    tokens = tokenizer.encode(actions)[:, 0]
    edges = np.linspace(-1, 1, 256)
    low, high = tokenizer.bounds()
    release_normalised = 2 * (actions[:, 0] - low[0]) / (high[0] - low[0] + 1e-8) - 1
    np.testing.assert_array_equal(tokens, np.digitize(release_normalised, edges) + 10005)
    assert tokens[0] == 10006 and tokens[-1] == 10260  # the upper bound lands in bin 255, as in the release
    centres = (edges[:-1] + edges[1:]) / 2
    decoded = tokenizer.decode(np.full((1, 7), 10261))[0, -1]  # bin 256 decodes to the last centre
    assert decoded == pytest.approx(centres[-1])


def test_out_of_range_actions_are_clipped_and_bad_input_named():
    tokenizer = released_action_tokenizer()
    tokens = tokenizer.encode(np.array([[5.0, -5.0, 0, 0, 0, 0, 2.0]]))
    assert tokens[0, 0] == 10261 and tokens[0, 1] == 10006 and tokens[0, 6] == 10261
    with pytest.raises(ValueError, match="NaN or inf"):
        tokenizer.encode(np.array([[np.nan, 0, 0, 0, 0, 0, 0]]))
    with pytest.raises(ValueError, match="last dimension of 7"):
        tokenizer.encode(np.zeros((2, 6)))
    with pytest.raises(ValueError, match="malformed action tokens"):
        tokenizer.decode(np.full((1, 7), 42))
    with pytest.raises(KeyError, match=r"unknown unnorm_key 'bridge'.*\['libero'\]"):
        tokenizer.encode(np.zeros((1, 7)), key="bridge")


def test_constant_dimension_never_gives_nan():
    stats = {"min": [0.0] * 6 + [1.0], "max": [1.0] * 6 + [1.0]}
    tokenizer = ActionTokenizer(0, 256, 7, {"flat": stats}, "flat")
    decoded = tokenizer.decode(tokenizer.encode(np.full((3, 7), 1.0)))
    assert np.isfinite(decoded).all()
    np.testing.assert_allclose(decoded[:, 6], 1.0, atol=1e-8)


def test_gripper_is_decoded_not_binarised():
    tokenizer = released_action_tokenizer()
    decoded = tokenizer.decode(tokenizer.encode(np.array([[0, 0, 0, 0, 0, 0, 1.0], [0, 0, 0, 0, 0, 0, -1.0]])))
    assert decoded[0, 6] == pytest.approx(1 - 1 / 255) and decoded[1, 6] == pytest.approx(-1 + 1 / 255)


@pytest.fixture(scope="module")
def released_layout_processor():
    """The released token layout with a tiny VQ of the real depth: 256-px frames become 16 x 16 codes."""
    vq = WorldVLAVQModel(
        WorldVLAVQConfig(num_embeddings=8192, embed_dim=4, latent_channels=4, base_channels=8, num_res_blocks=1, norm_num_groups=4)
    )
    tokenizer = build_text_tokenizer(["pick up the black bowl"], vocab_size=300)
    return WorldVLAProcessor.from_config(RELEASED, tokenizer, vq)


def test_image_layout_of_the_release(released_layout_processor):
    processor = released_layout_processor
    codes = torch.arange(256).view(16, 16) * 31 % 8192
    ids = processor.image_codes_to_token_ids(codes)
    assert len(ids) == 276 == RELEASED.image_sequence_length
    assert ids[:3] == [8197, 8812, 8812] and ids[-1] == 8196
    rows = np.array(ids[3:-1]).reshape(16, 17)
    assert (rows[:, -1] == 8803).all()
    np.testing.assert_array_equal(rows[:, :-1], codes.numpy() + 4)
    assert torch.equal(processor.image_tokens_to_codes(ids), codes)

    broken = list(ids)
    broken[20] = 8803
    with pytest.raises(ValueError, match="malformed image tokens"):
        processor.image_tokens_to_codes(broken)
    with pytest.raises(ValueError, match="malformed image tokens: 275 tokens"):
        processor.image_tokens_to_codes(ids[:-1])


def test_released_action_ids(released_layout_processor):
    processor = released_layout_processor
    ids = processor.action_to_token_ids(np.array([-0.9375, 0.9375, 0.0, 0.0, 0.0, 0.0, -1.0]))
    assert ids[0] == 10004 and ids[-1] == 15004 and len(ids) == 9
    assert ids[1] == 10006 and ids[2] == 10260 and ids[7] == 10006


def test_action_prompt_is_byte_exact(small_worldvla, frames):
    model, processor = small_worldvla
    config = model.config
    codes = list(processor.encode_images(frames))
    instruction = "pick up the black bowl between the plate and the ramekin and place it on the plate"
    actions = np.random.default_rng(0).uniform(-1, 1, (5, 7))
    sample = processor.build_action_sample(instruction, codes, actions)
    ids, labels = sample["input_ids"], sample["labels"]
    text = processor.encode_text(ACTION_PROMPT.format(instruction=instruction))
    assert ids[0] == config.bos_token_id
    assert processor.tokenizer.decode(ids[1 : 1 + len(text)]) == (
        "What action should the robot take to pick up the black bowl between the plate and the ramekin and place it "
        "on the plate?"
    )
    at, frame = 1 + len(text), config.image_sequence_length
    assert ids[at : at + 2 * frame] == processor.image_codes_to_token_ids(codes[0]) + processor.image_codes_to_token_ids(codes[1])
    prompt_length = at + 2 * frame + 1
    assert ids[prompt_length - 1] == config.separator_token_id
    answer = ids[prompt_length:]
    expected = sum((processor.action_to_token_ids(action) for action in actions), []) + [config.separator_token_id]
    assert answer == expected
    assert labels == [-100] * prompt_length + answer
    assert processor(text=instruction, images=frames)["input_ids"][0].tolist() == ids[:prompt_length]


def test_world_model_prompt_is_byte_exact(small_worldvla, frames):
    model, processor = small_worldvla
    config = model.config
    codes = list(processor.encode_images(frames))
    action = np.array([[0.1, -0.2, 0.3, 0.0, 0.05, -0.05, -1.0]])
    sample = processor.build_world_model_sample(codes[:1], action, codes[1])
    ids, labels = sample["input_ids"], sample["labels"]
    text = processor.encode_text(WORLD_MODEL_PROMPT)
    assert ids[0] == config.bos_token_id
    assert processor.tokenizer.decode(ids[1 : 1 + len(text)]) == (
        "Generate the next image based on the provided sequence of historical images and corresponding actions."
    )
    at, frame = 1 + len(text), config.image_sequence_length
    assert ids[at : at + frame] == processor.image_codes_to_token_ids(codes[0])
    assert ids[at + frame : at + frame + 9] == processor.action_to_token_ids(action[0])
    prompt_length = at + frame + 10
    assert ids[prompt_length - 1] == config.separator_token_id
    assert ids[prompt_length:] == processor.image_codes_to_token_ids(codes[1]) + [config.separator_token_id]
    assert labels == [-100] * prompt_length + ids[prompt_length:]
    inputs = processor.build_world_model_inputs(frames[0], action[0])
    assert inputs["input_ids"][0].tolist() == ids[:prompt_length]


def test_bad_images_are_named(small_worldvla, frames):
    _, processor = small_worldvla
    with pytest.raises(ValueError, match="frames are 32x32, the model takes 64x64"):
        processor(text="open the drawer", images=[np.zeros((32, 32, 3), np.uint8)] * 2)
    with pytest.raises(ValueError, match="must be uint8 arrays, got dtype float32"):
        processor(text="open the drawer", images=[np.zeros((64, 64, 3), np.float32)] * 2)
    with pytest.raises(ValueError, match=r"must be RGB with channels last.*got shape \(2, 64, 64, 4\)"):
        processor(text="open the drawer", images=[np.zeros((64, 64, 4), np.uint8)] * 2)
    with pytest.raises(ValueError, match="a list of history frames"):
        processor(text="open the drawer", images=frames[0])


def test_vq_encode_decode_shapes_and_determinism(small_worldvla, frames):
    _, processor = small_worldvla
    codes = processor.encode_images(frames)
    assert codes.shape == (2, 4, 4) and codes.dtype == torch.long
    assert torch.equal(codes, processor.encode_images(frames))
    assert codes.min() >= 0 and codes.max() < processor.layout["image_codebook_size"]
    decoded = processor.decode_image_codes(codes)
    assert decoded.shape == (2, 64, 64, 3) and decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, processor.decode_image_codes(codes))


def test_text_tokenizer_is_deterministic():
    texts = ["open the top drawer and put the bowl inside", "turn on the stove"]
    first, second = build_text_tokenizer(texts, 300), build_text_tokenizer(texts, 300)
    assert first.get_vocab() == second.get_vocab()
    assert first.convert_ids_to_tokens(0) == "<s>"
    text = "put both the cream cheese box and the butter in the basket"
    assert first.decode(first.encode(text, add_special_tokens=False)) == text


def test_processor_save_load_round_trip(small_worldvla, frames, tmp_path):
    _, processor = small_worldvla
    processor.add_action_statistics("my_robot", {"min": [-1] * 7, "max": [2] * 7, "q01": [-0.5] * 7, "q99": [1.5] * 7})
    try:
        processor.save_pretrained(tmp_path)
        assert (tmp_path / "vqgan" / "model.safetensors").exists()
        loaded = WorldVLAProcessor.from_pretrained(tmp_path)
    finally:
        del processor.action_statistics["my_robot"]
    assert loaded.layout == processor.layout
    loaded.save_pretrained(tmp_path / "again")  # a loaded processor saves again, unchanged
    again = WorldVLAProcessor.from_pretrained(tmp_path / "again").to_dict()
    assert again == {key: value for key, value in loaded.to_dict().items() if key != "auto_map"}
    assert loaded.action_statistics["my_robot"]["q99"] == [1.5] * 7
    assert loaded.default_unnorm_key == "libero"
    for name, tensor in processor.vq_model.state_dict().items():
        assert torch.equal(tensor, loaded.vq_model.state_dict()[name]), name
    assert torch.equal(loaded(text="open the drawer", images=frames)["input_ids"], processor(text="open the drawer", images=frames)["input_ids"])


def test_bad_statistics_are_refused(small_worldvla):
    _, processor = small_worldvla
    with pytest.raises(ValueError, match="'min' must be 7 finite numbers"):
        processor.add_action_statistics("broken", {"min": [0.0] * 6 + [float("nan")], "max": [1.0] * 7})
    with pytest.raises(ValueError, match="max < min"):
        processor.add_action_statistics("broken", {"min": [1.0] * 7, "max": [0.0] * 7})
    assert "broken" not in processor.action_statistics
