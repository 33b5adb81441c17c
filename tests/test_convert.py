"""Conversion of the authors' released WorldVLA checkpoints (convert_worldvla_checkpoint.py).

The 7B weights are not available here, so parity with the release is shown on tiny synthetic checkpoints written in
the release's layout (tests/released_format.py): the converted model must give, for the same tokens, the logits
of a reference forward written below from the release's rules (transformers-4.48 Chameleon as modified by the
authors: unmasked image logits, one (1, head_dim) QK-norm row shared by all heads, their attention-mask rule with
its Python loops), the same greedy action chunk, and the processor the same prompt ids and image codes as the
authors' data pipeline.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
torch.set_num_threads(1)

from hub_server import hub_env, local_hub  # noqa: E402
from released_format import (  # noqa: E402
    TINY_DDCONFIG,
    TINY_EMBED_DIM,
    image_code_token_name,
    write_release,
    write_released_model,
)

import convert_worldvla_checkpoint as converter  # noqa: E402
from modeling_worldvla import WorldVLAForConditionalGeneration  # noqa: E402
from processing_worldvla import WorldVLAProcessor  # noqa: E402

IMAGE_SIZE = 64  # the synthetic VQGAN is fast at 64 px (4 x 4 codes); the layout is the release's
INSTRUCTION = "pick up the black bowl between the plate and the ramekin and place it on the plate"
# Release ids (worldvla/data/item_processor.py: FlexARItemProcessor_Action tokens; Conversation.sep_token).
SEPARATOR, IMAGE_START, IMAGE_END = 8710, 8197, 8196
ACTION_START, ACTION_END, FIRST_BIN, N_BINS = 10004, 15004, 10006, 256
RELEASE_MIN = np.array([-0.9375, -0.9375, -0.9375, -0.32571429, -0.375, -0.375, -1.0])
RELEASE_MAX = np.array([0.9375, 0.9375, 0.9375, 0.375, 0.375, 0.375, 1.0])


# ---------------------------------------------------------------------------------------------------------------------
# The release's rules, written from the authors' code
# ---------------------------------------------------------------------------------------------------------------------


def release_attention_mask(ids):
    """generate_att_mask_3 of worldvla/model/modeling_xllmx_chameleon_ck.py for one sequence, with its loops:
    causal, and an action block starting after the end of the last image does not see earlier action blocks.
    An unfinished block or image ends at the last position. Returns bool (L, L), True = attended."""
    length = len(ids)
    mask = torch.tril(torch.ones(length, length, dtype=torch.bool))

    def blocks(start_id, end_id):
        starts = [i for i, token in enumerate(ids) if token == start_id]
        ends = [i for i, token in enumerate(ids) if token == end_id]
        if len(starts) > len(ends):
            ends.append(length - 1)
        elif len(starts) < len(ends):
            ends = ends[:-1]
        return list(zip(starts, ends))

    image_blocks, action_blocks = blocks(IMAGE_START, IMAGE_END), blocks(ACTION_START, ACTION_END)
    last_image_end = image_blocks[-1][1] if image_blocks else -1
    for block_start, block_end in action_blocks:
        if block_start > last_image_end:
            for previous_start, previous_end in action_blocks:
                if previous_end < block_start:
                    mask[block_start : block_end + 1, previous_start : previous_end + 1] = False
    return mask


def rms_norm(hidden, weight, eps):
    return weight * (hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + eps))


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def release_hidden_states(weights, config, ids):
    """Final normed hidden states (L, hidden) of transformers-4.48 Chameleon with the authors' changes
    (worldvla/model/chameleon/modeling_chameleon.py), in float32, for one sequence with the release's mask."""
    heads = config["num_attention_heads"]
    head_dim = config["hidden_size"] // heads
    eps = config["rms_norm_eps"]
    ids_tensor = torch.tensor(ids)
    length = len(ids)
    positions = torch.arange(length).float()
    inv_freq = 1.0 / (config["rope_theta"] ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    freqs = positions[:, None] * inv_freq[None, :]
    cos, sin = torch.cat((freqs, freqs), -1).cos(), torch.cat((freqs, freqs), -1).sin()  # (L, head_dim)
    additive_mask = torch.zeros(length, length).masked_fill(
        ~release_attention_mask(ids), torch.finfo(torch.float32).min
    )

    def qk_layer_norm(states, weight, bias):  # ChameleonLayerNorm: stats over head_dim, row h // (heads / rows)
        normed = F.layer_norm(states, (head_dim,), eps=1e-5)
        repeats = heads // weight.shape[0]
        return normed * weight.repeat_interleave(repeats, 0) + bias.repeat_interleave(repeats, 0)

    hidden = weights["model.embed_tokens.weight"][ids_tensor]
    for layer in range(config["num_hidden_layers"]):
        w = {
            name[len(f"model.layers.{layer}.") :]: t
            for name, t in weights.items()
            if name.startswith(f"model.layers.{layer}.")
        }
        normed = rms_norm(hidden, w["input_layernorm.weight"], eps)
        query = qk_layer_norm(
            (normed @ w["self_attn.q_proj.weight"].T).view(length, heads, head_dim),
            w["self_attn.q_norm.weight"],
            w["self_attn.q_norm.bias"],
        )
        key = qk_layer_norm(
            (normed @ w["self_attn.k_proj.weight"].T).view(length, heads, head_dim),
            w["self_attn.k_norm.weight"],
            w["self_attn.k_norm.bias"],
        )
        value = (normed @ w["self_attn.v_proj.weight"].T).view(length, heads, head_dim)
        query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)  # (heads, L, head_dim)
        query, key = query * cos + rotate_half(query) * sin, key * cos + rotate_half(key) * sin
        scores = query @ key.transpose(1, 2) / head_dim**0.5 + additive_mask
        attended = (scores.softmax(-1) @ value).transpose(0, 1).reshape(length, -1)
        hidden = hidden + attended @ w["self_attn.o_proj.weight"].T
        normed = rms_norm(hidden, w["post_attention_layernorm.weight"], eps)
        gated = F.silu(normed @ w["mlp.gate_proj.weight"].T) * (normed @ w["mlp.up_proj.weight"].T)
        hidden = hidden + gated @ w["mlp.down_proj.weight"].T
    return rms_norm(hidden, weights["model.norm.weight"], eps)


def release_logits(weights, config, ids):
    """(L, vocab) logits; no image logit is masked (the release runs with --unmask_image_logits)."""
    return release_hidden_states(weights, config, ids) @ weights["lm_head.weight"].T


def release_greedy_chunk(weights, config, prompt, chunk_size):
    """Greedy bins (K, 7) decoded token by token as the release does (generate_dis_ma: the mask rebuilt over the
    whole sequence at every step), kept to the chunk's grammar: start, 7 bins, end."""
    sequence, bins = list(prompt), []
    for _ in range(chunk_size):
        sequence.append(ACTION_START)
        for _ in range(7):
            logits = (
                release_hidden_states(weights, config, sequence)[-1]
                @ weights["lm_head.weight"][FIRST_BIN : FIRST_BIN + N_BINS].T
            )
            sequence.append(FIRST_BIN + int(logits.argmax()))
            bins.append(sequence[-1])
        sequence.append(ACTION_END)
    return torch.tensor(bins).view(chunk_size, 7)


def release_decode_actions(bin_tokens):
    """decode_token_ids_to_actions then Solver.unnorm_min_max (worldvla/eval_solver_libero_256.py)."""
    edges = np.linspace(-1, 1, N_BINS)
    centres = (edges[:-1] + edges[1:]) / 2.0
    normalised = centres[np.clip(np.asarray(bin_tokens) - 1 - 10004 - 1, 0, len(centres) - 1)]
    return (normalised + 1) / 2 * (RELEASE_MAX - RELEASE_MIN + 1e-8) + RELEASE_MIN


def release_action_tokens(action):
    """FlexARItemProcessor_Action.process_action: min/max normalisation with the release's 1e-8, 256 bins."""
    normalised = np.clip(2 * (np.asarray(action) - RELEASE_MIN) / (RELEASE_MAX - RELEASE_MIN + 1e-8) - 1, -1, 1)
    return [
        ACTION_START,
        *(np.digitize(normalised, np.linspace(-1, 1, N_BINS)) + ACTION_START + 1).tolist(),
        ACTION_END,
    ]


def release_image_tokens(codes, vocab):
    """FlexARItemProcessor_Action.process_image for VQ codes (h, w): grid tokens count 32-px units, rows of codes
    (mapped through the IMGIMG names, img2bpe) each closed by <reserved08799>."""
    height, width = codes.shape
    tokens = [
        vocab["<racm3:break>"],
        vocab[f"<reserved{8800 + height * 16 // 32:05d}>"],
        vocab[f"<reserved{8800 + width * 16 // 32:05d}>"],
    ]
    for row in codes.tolist():
        tokens += [vocab[image_code_token_name(code)] for code in row] + [vocab["<reserved08799>"]]
    return tokens + [vocab["<eoss>"]]


def release_prompt_ids(tokenizer_file, human_turn, image_codes, vocab, actions=()):
    """The authors' pipeline (xllmx/data/item_processor.py MMConvItemProcessor + worldvla/data/convertsation.py):
    the human turn with <|image|> / <|action|> markers and the separator encoded as one string by the base_model
    tokenizer with the markers added as tokens, BOS prepended, markers replaced by the media tokens."""
    from tokenizers import Tokenizer

    backend = Tokenizer.from_file(str(tokenizer_file))
    backend.add_tokens(["<|image|>", "<|action|>"])
    ids = [vocab["<s>"]] + backend.encode(human_turn + "<reserved08706>", add_special_tokens=False).ids
    images, actions = iter(image_codes), iter(actions)
    expanded = []
    for token in ids:
        if token == backend.token_to_id("<|image|>"):
            expanded += release_image_tokens(next(images), vocab)
        elif token == backend.token_to_id("<|action|>"):
            expanded += release_action_tokens(next(actions))
        else:
            expanded.append(token)
    return expanded


def reference_vq_codes(vq_state_dict, frames):
    """Codes of transformers' ChameleonVQVAE encoder loaded from the raw vqgan.ckpt state dict, with the
    release's pixel scaling (worldvla/model/chameleon_vae_ori/image_tokenizer.py img_tokens_from_pil)."""
    from transformers.models.chameleon.configuration_chameleon import ChameleonVQVAEConfig
    from transformers.models.chameleon.modeling_chameleon import ChameleonVQVAE

    vqvae = ChameleonVQVAE(
        ChameleonVQVAEConfig(
            embed_dim=TINY_EMBED_DIM,
            num_embeddings=8192,
            latent_channels=TINY_DDCONFIG["z_channels"],
            resolution=TINY_DDCONFIG["resolution"],
            base_channels=TINY_DDCONFIG["ch"],
            channel_multiplier=TINY_DDCONFIG["ch_mult"],
            num_res_blocks=TINY_DDCONFIG["num_res_blocks"],
            attn_resolutions=[],
        )
    ).eval()
    encoder_weights = {k: v for k, v in vq_state_dict.items() if not k.startswith(("decoder.", "loss."))}
    vqvae.load_state_dict(encoder_weights, strict=True)
    codes = []
    with torch.no_grad():
        for frame in frames:
            pixels = torch.from_numpy(frame / 255.0 * 2 - 1).permute(2, 0, 1)[None].float()
            codes.append(vqvae.encode(pixels).image_tokens.view(frame.shape[0] // 16, frame.shape[1] // 16))
    return codes


# ---------------------------------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return write_release(tmp_path_factory.mktemp("release"), suite="libero_spatial", image_size=256)


@pytest.fixture(scope="module")
def converted(release, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("converted") / "worldvla-libero-spatial"
    converter.convert(
        release["model_dir"],
        release["tokenizer_dir"],
        output_dir,
        base_model_dir=release["base_model_dir"],
        image_size=IMAGE_SIZE,
        max_shard_size=converter.parse_size("3MB"),
    )
    return output_dir


@pytest.fixture(scope="module")
def model(converted):
    return WorldVLAForConditionalGeneration.from_pretrained(converted, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def processor(converted):
    return WorldVLAProcessor.from_pretrained(converted)


@pytest.fixture(scope="module")
def weights(release):
    return {name: tensor.float() for name, tensor in release["weights"].items()}


@pytest.fixture(scope="module")
def frames():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8) for _ in range(3)]


@pytest.fixture(scope="module")
def vocab(release):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(release["base_model_dir"] / "tokenizer.json")).get_vocab(with_added_tokens=True)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    for server in local_hub(tmp_path, monkeypatch):
        yield server
        assert server.unrouted == [], f"the client called endpoints the local hub lacks: {server.unrouted}"


def convert_variant(release, tmp_path, **model_kwargs):
    """Convert a released model folder written with `write_released_model(**model_kwargs)` next to the release's
    tokenizers."""
    model_dir = tmp_path / "model_256" / "libero_goal"
    write_released_model(model_dir, release["config"]["vocabulary_map"], **model_kwargs)
    output_dir = tmp_path / "out"
    converter.convert(
        model_dir, release["tokenizer_dir"], output_dir, base_model_dir=release["base_model_dir"], image_size=IMAGE_SIZE
    )
    return output_dir


# ---------------------------------------------------------------------------------------------------------------------
# Parity with the release
# ---------------------------------------------------------------------------------------------------------------------


def test_action_prompt_matches_the_authors_pipeline(release, processor, frames, vocab):
    codes = reference_vq_codes(release["vq_state_dict"], frames[:2])
    human_turn = f"What action should the robot take to {INSTRUCTION}?" + "<|image|><|image|>"
    expected = release_prompt_ids(release["base_model_dir"] / "tokenizer.json", human_turn, codes, vocab)
    assert processor(text=INSTRUCTION, images=frames[:2])["input_ids"][0].tolist() == expected


def test_world_model_sample_matches_the_authors_pipeline(release, processor, frames, vocab):
    codes = reference_vq_codes(release["vq_state_dict"], frames[:2])
    action = np.array([0.31, -0.42, 0.05, 0.12, -0.2, 0.33, -1.0])
    human_turn = (
        "Generate the next image based on the provided sequence of historical images and corresponding actions."
        "<|image|><|action|>"
    )
    expected_prompt = release_prompt_ids(
        release["base_model_dir"] / "tokenizer.json", human_turn, codes[:1], vocab, [action]
    )
    expected = expected_prompt + release_image_tokens(codes[1], vocab) + [SEPARATOR]
    sample = processor.build_world_model_sample(codes[:1], action[None], next_image_codes=codes[1])
    assert sample["input_ids"] == expected


def test_action_tokens_at_the_upper_bound_match_the_release(processor):
    action = RELEASE_MAX.copy()
    assert processor.action_to_token_ids(action) == release_action_tokens(action)


def test_vq_codes_match_a_reference_encoder_from_the_raw_checkpoint(release, processor, frames):
    expected = torch.stack(reference_vq_codes(release["vq_state_dict"], frames))
    codes = processor.encode_images(frames)
    assert torch.equal(codes, expected)
    assert len(torch.unique(codes)) > 8  # the codes spread over the codebook: the comparison means something


def test_vq_decoder_weights_are_the_checkpoint_ones(release, converted):
    with safe_open(converted / "vqgan" / "model.safetensors", framework="pt") as saved:
        names = set(saved.keys())
        raw = {k: v for k, v in release["vq_state_dict"].items() if not k.startswith("loss.")}
        assert names == set(raw)
        for name in raw:
            assert torch.equal(saved.get_tensor(name), raw[name]), name


def test_logits_match_the_release_forward(model, processor, weights, release, frames):
    prompt = processor(text=INSTRUCTION, images=frames[:2])["input_ids"][0].tolist()
    # Two decoded action blocks after the prompt: the action mask decides what the second one sees.
    sequence = prompt + [
        ACTION_START,
        *range(FIRST_BIN, FIRST_BIN + 7),
        ACTION_END,
        ACTION_START,
        FIRST_BIN + 100,
        FIRST_BIN + 3,
    ]
    with torch.no_grad():
        logits = model(torch.tensor([sequence])).logits[0]
    expected = release_logits(weights, release["config"], sequence)
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)
    # Image-code logits are live (the release never masks them).
    assert logits[:, 4:8196].max() > torch.finfo(torch.float32).min / 2


def test_world_model_logits_match_the_release_forward(model, processor, weights, release, frames):
    codes = processor.encode_images(frames[:2])
    sample = processor.build_world_model_sample(
        codes[:1], np.array([[0.1, 0.2, -0.3, 0.0, 0.1, -0.1, 1.0]]), next_image_codes=codes[1]
    )
    with torch.no_grad():
        logits = model(torch.tensor([sample["input_ids"]])).logits[0]
    torch.testing.assert_close(
        logits, release_logits(weights, release["config"], sample["input_ids"]), rtol=1e-4, atol=1e-4
    )


def test_greedy_action_chunk_matches_the_release(model, processor, weights, release, frames):
    inputs = processor(text=INSTRUCTION, images=frames[:2])
    expected = release_greedy_chunk(
        weights, release["config"], inputs["input_ids"][0].tolist(), model.config.action_chunk_size
    )
    assert len(torch.unique(expected)) > 5  # not a degenerate chunk
    for decoding in ("parallel", "sequential"):
        assert torch.equal(model.generate_action_tokens(**inputs, decoding=decoding)[0], expected), decoding
    actions = model.predict_action(**inputs, processor=processor)
    assert actions.shape == (1, model.config.action_chunk_size, 7)
    np.testing.assert_allclose(actions[0], release_decode_actions(expected.numpy()), atol=1e-7)


def test_text_encoding_matches_the_base_model_tokenizer(release, processor):
    from tokenizers import Tokenizer

    backend = Tokenizer.from_file(str(release["base_model_dir"] / "tokenizer.json"))
    for text in (f"What action should the robot take to {INSTRUCTION}?", "open the top drawer and put the bowl inside"):
        assert processor.encode_text(text) == backend.encode(text, add_special_tokens=False).ids


# ---------------------------------------------------------------------------------------------------------------------
# The converted folder
# ---------------------------------------------------------------------------------------------------------------------


def test_config_carries_the_release_numerics_and_layout(converted, release):
    config = json.loads((converted / "config.json").read_text())
    released = release["config"]
    for name in (
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "rms_norm_eps",
        "rope_theta",
        "max_position_embeddings",
        "vocab_size",
    ):
        assert config[name] == released[name], name
    assert config["residual_dropout"] == released["dropout"] == 0.05
    assert (config["bos_token_id"], config["eos_token_id"], config["separator_token_id"]) == (0, 8710, 8710)
    assert (config["action_chunk_size"], config["history_frames"], config["image_size"]) == (5, 2, IMAGE_SIZE)
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_worldvla.WorldVLAForConditionalGeneration"
    assert config["dtype"] == "bfloat16"
    processor_config = json.loads((converted / "processor_config.json").read_text())
    assert processor_config["default_unnorm_key"] == "libero_spatial"
    assert processor_config["action_statistics"]["libero_spatial"]["min"] == RELEASE_MIN.tolist()
    assert "Alibaba-DAMO-Academy/WorldVLA/model_256/libero_spatial" in (converted / "README.md").read_text()


def test_shards_keep_bf16_and_respect_the_shard_size(converted, release):
    index = json.loads((converted / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2
    largest_tensor = max(t.numel() * t.element_size() for t in release["weights"].values())
    total = 0
    for shard in shards:
        path = converted / shard
        with safe_open(path, framework="pt") as source:
            tensors = {name: source.get_tensor(name) for name in source.keys()}
        assert all(index["weight_map"][name] == shard for name in tensors)
        assert {t.dtype for t in tensors.values()} == {torch.bfloat16}
        size = sum(t.numel() * t.element_size() for t in tensors.values())
        assert size <= max(converter.parse_size("3MB"), largest_tensor)
        total += size
    assert total == index["metadata"]["total_size"]
    # the shared (1, head_dim) QK-norm rows were repeated to (heads, head_dim)
    with safe_open(converted / index["weight_map"]["model.layers.1.self_attn.k_norm.bias"], framework="pt") as source:
        k_norm_bias = source.get_tensor("model.layers.1.self_attn.k_norm.bias")
    assert torch.equal(k_norm_bias, release["weights"]["model.layers.1.self_attn.k_norm.bias"].expand(2, -1))


def test_dtype_flag_and_single_shard(release, tmp_path):
    output_dir = tmp_path / "fp32"
    converter.convert(
        release["model_dir"], release["tokenizer_dir"], output_dir, image_size=IMAGE_SIZE, dtype=torch.float32
    )
    assert not (output_dir / "model.safetensors.index.json").exists()
    with safe_open(output_dir / "model.safetensors", framework="pt") as source:
        assert source.get_tensor("lm_head.weight").dtype == torch.float32
        assert torch.equal(source.get_tensor("lm_head.weight"), release["weights"]["lm_head.weight"].float())
    assert json.loads((output_dir / "config.json").read_text())["dtype"] == "float32"


def test_a_crash_leaves_no_half_written_checkpoint(release, tmp_path, monkeypatch):
    output_dir = tmp_path / "converted"

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(converter, "write_code_and_config", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        converter.convert(release["model_dir"], release["tokenizer_dir"], output_dir, image_size=IMAGE_SIZE)
    assert not output_dir.exists()
    monkeypatch.undo()
    converter.convert(release["model_dir"], release["tokenizer_dir"], output_dir, image_size=IMAGE_SIZE)
    assert (output_dir / "config.json").exists() and not list(tmp_path.glob(".converted.*"))
    with pytest.raises(converter.ConversionError, match="is not empty; pass --overwrite"):
        converter.convert(release["model_dir"], release["tokenizer_dir"], output_dir, image_size=IMAGE_SIZE)


def test_converted_folder_loads_in_a_fresh_process_with_the_auto_classes(converted, model, processor, frames, tmp_path):
    np.save(tmp_path / "frames.npy", np.stack(frames[:2]))
    script = f"""
import json, numpy as np, torch
from transformers import AutoModelForCausalLM, AutoProcessor
model = AutoModelForCausalLM.from_pretrained({str(converted)!r}, trust_remote_code=True, dtype=torch.float32)
processor = AutoProcessor.from_pretrained({str(converted)!r}, trust_remote_code=True)
inputs = processor(text={INSTRUCTION!r}, images=list(np.load({str(tmp_path / "frames.npy")!r})))
print(json.dumps({{"class": type(model).__name__, "ids": inputs["input_ids"][0].tolist(),
                  "bins": model.generate_action_tokens(**inputs)[0].tolist()}}))
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    inputs = processor(text=INSTRUCTION, images=frames[:2])
    assert loaded["class"] == "WorldVLAForConditionalGeneration"
    assert loaded["ids"] == inputs["input_ids"][0].tolist()
    assert loaded["bins"] == model.generate_action_tokens(**inputs)[0].tolist()


def test_push_to_hub_publishes_a_loadable_checkpoint(release, hub, tmp_path, model, processor, frames):
    output_dir = tmp_path / "pushed"
    converter.main([
        "--model-dir", str(release["model_dir"]), "--tokenizer-dir", str(release["tokenizer_dir"]),
        "--base-model-dir", str(release["base_model_dir"]), "--output-dir", str(output_dir),
        "--image-size", str(IMAGE_SIZE), "--push-to-hub", "org/worldvla-libero-spatial",
    ])  # fmt: skip
    np.save(tmp_path / "frames.npy", np.stack(frames[:2]))
    script = f"""
import json, numpy as np, torch
from transformers import AutoModelForCausalLM, AutoProcessor
model = AutoModelForCausalLM.from_pretrained("org/worldvla-libero-spatial", trust_remote_code=True, dtype=torch.float32)
processor = AutoProcessor.from_pretrained("org/worldvla-libero-spatial", trust_remote_code=True)
inputs = processor(text={INSTRUCTION!r}, images=list(np.load({str(tmp_path / "frames.npy")!r})))
print(json.dumps(model.generate_action_tokens(**inputs)[0].tolist()))
"""
    env = {**os.environ, **hub_env(hub.endpoint, tmp_path / "client-home")}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    inputs = processor(text=INSTRUCTION, images=frames[:2])
    assert json.loads(result.stdout.strip().splitlines()[-1]) == model.generate_action_tokens(**inputs)[0].tolist()
    head = (hub.repo_dir("org/worldvla-libero-spatial") / "refs" / "main").read_text()
    card = (hub.repo_dir("org/worldvla-libero-spatial") / "commits" / head / "tree" / "README.md").read_text()
    assert "Alibaba-DAMO-Academy/WorldVLA" in card and "org/worldvla-libero-spatial" in card


# ---------------------------------------------------------------------------------------------------------------------
# Refusals and errors
# ---------------------------------------------------------------------------------------------------------------------


def test_a_missing_tensor_is_an_error_naming_it(release, tmp_path):
    with pytest.raises(
        converter.ConversionError, match=r"missing tensors \(1\): \['model.layers.1.mlp.up_proj.weight'\]"
    ):
        convert_variant(release, tmp_path, drop_keys=["model.layers.1.mlp.up_proj.weight"])
    assert not (tmp_path / "out").exists()  # everything is checked before anything is written


def test_an_unexpected_tensor_is_an_error_naming_it(release, tmp_path):
    extra = {"model.layers.0.self_attn.rotary_emb.inv_freq": torch.ones(8, dtype=torch.bfloat16)}
    with pytest.raises(
        converter.ConversionError, match=r"unexpected tensors \(1\): \['model.layers.0.self_attn.rotary_emb.inv_freq'\]"
    ):
        convert_variant(release, tmp_path, extra_tensors=extra)


def test_a_released_vq_encoder_copy_is_dropped_explicitly(release, tmp_path, caplog):
    extra = {"model.vqmodel.encoder.conv_in.weight": torch.ones(32, 3, 3, 3, dtype=torch.bfloat16)}
    with caplog.at_level("INFO", logger="convert_worldvla_checkpoint"):
        output_dir = convert_variant(release, tmp_path, extra_tensors=extra)
    assert "dropping 1 released tensors model.vqmodel.*" in caplog.text
    index = (
        json.loads((output_dir / "model.safetensors.index.json").read_text())
        if (output_dir / "model.safetensors.index.json").exists()
        else None
    )
    names = (
        set(index["weight_map"]) if index else set(safe_open(output_dir / "model.safetensors", framework="pt").keys())
    )
    assert not any(name.startswith("model.vqmodel.") for name in names)


def test_a_vqgan_pickle_with_code_is_refused(tmp_path):
    class RunsCode:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    path = tmp_path / "vqgan.ckpt"
    torch.save({"state_dict": {"quant_conv.weight": torch.zeros(1)}, "hparams": RunsCode()}, path)
    with pytest.raises(converter.ConversionError, match=r"Refusing to unpickle .*system"):
        converter.load_vqgan_state_dict(path)
    assert not (tmp_path / "pwned").exists()


def test_a_vqgan_state_dict_with_non_tensors_is_refused(tmp_path):
    path = tmp_path / "vqgan.ckpt"
    torch.save({"state_dict": {"quant_conv.weight": torch.zeros(1), "quant_conv.note": "text"}}, path)
    with pytest.raises(converter.ConversionError, match="not named tensors: \\['quant_conv.note'\\]"):
        converter.load_vqgan_state_dict(path)


def test_lightning_bookkeeping_objects_load_as_inert_stand_ins(release):
    path = release["tokenizer_dir"] / "vqgan.ckpt"
    referenced = set(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    assert {
        "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
        "argparse.Namespace",
        "pathlib.PosixPath",
        "omegaconf.dictconfig.DictConfig",
    } <= referenced
    state_dict = converter.load_vqgan_state_dict(path)
    assert all(torch.equal(state_dict[name], tensor) for name, tensor in release["vq_state_dict"].items())
    assert "pytorch_lightning" not in sys.modules and "omegaconf" not in sys.modules  # nothing was imported


def test_a_tokenizer_without_the_released_layout_is_refused(model):
    from released_format import chameleon_layout_vocab

    vocab = chameleon_layout_vocab()
    vocab["<reserved08706>"], vocab["<reserved08707>"] = vocab["<reserved08707>"], vocab["<reserved08706>"]
    with pytest.raises(converter.ConversionError, match="<reserved08706>: id 8711, expected 8710"):
        converter.check_released_token_layout(vocab, model.config, "test vocabulary")


@pytest.mark.parametrize(
    "path, suite, size",
    [
        ("WorldVLA/model_256/libero_spatial", "libero_spatial", 256),
        ("WorldVLA/model_512/libero_10", "libero_10", 512),
        ("jcenaa/WorldVLA-ActionModel-LIBERO-Goal-512", "libero_goal", 512),
        ("hub/models--jcenaa--WorldVLA-ActionModel-LIBERO-10-256/snapshots/abc", "libero_10", 256),
        ("my/checkpoint", None, None),
    ],
)
def test_suite_and_resolution_are_read_from_the_path(path, suite, size):
    assert converter.detect_suite_and_image_size(path) == (suite, size)
    if suite:
        assert converter.SUITE_CHUNK_SIZES[suite] == (10 if suite == "libero_10" else 5)


def test_help_describes_the_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        converter.main(["--help"])
    assert exit_info.value.code == 0
    assert "--push-to-hub" in capsys.readouterr().out
