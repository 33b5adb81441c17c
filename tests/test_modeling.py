"""WorldVLA model: loss, cached generation, parallel decoding, world model, errors, an adapter on lm_head, and
non-finite weights or values."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, DynamicCache
from transformers.generation import LogitsProcessorList

from modeling_worldvla import (
    IGNORE_INDEX,
    ActionChunkLogitsProcessor,
    ImageTokensLogitsProcessor,
    WorldVLAForConditionalGeneration,
    build_action_attention_mask,
)
from scripts.build_small_checkpoint import build_small_worldvla


def mixed_batch(processor, frames):
    codes = list(processor.encode_images(frames))
    rng = np.random.default_rng(0)
    samples = [
        processor.build_action_sample("pick up the black bowl", codes, rng.uniform(-1, 1, (5, 7))),
        processor.build_world_model_sample(codes[:1], rng.uniform(-1, 1, (1, 7)), codes[1]),
    ]
    return processor.pad(samples)


def reference_loss(logits, labels, config):
    logits, targets = logits[:, :-1].float(), labels[:, 1:]
    selected = targets != IGNORE_INDEX
    logits, targets = logits[selected], targets[selected]
    cross_entropy = F.cross_entropy(logits, targets, reduction="none")
    # Written out, not `config.token_layout.is_image_code`: the reference must not share the code it checks.
    is_image = (targets >= config.image_token_offset) & (targets < config.image_token_offset + config.image_codebook_size)
    weights = torch.where(is_image, config.image_loss_weight, 1.0)
    z_loss = logits.logsumexp(-1).pow(2).mean()
    return (weights * cross_entropy).sum() / weights.sum() + config.z_loss_weight * z_loss, cross_entropy, is_image


def test_loss_matches_reference_and_chunking(small_worldvla, frames):
    model, processor = small_worldvla
    batch = mixed_batch(processor, frames)
    output = model(**batch)
    expected, cross_entropy, is_image = reference_loss(output.logits, batch["labels"], model.config)
    torch.testing.assert_close(output.loss, expected)
    torch.testing.assert_close(output.image_loss, cross_entropy[is_image].mean())
    assert output.image_loss is not None and torch.isfinite(output.image_loss)
    assert output.action_loss is not None and torch.isfinite(output.action_loss)

    chunked = copy.deepcopy(model)
    chunked.config.loss_chunk_size = 7
    chunked_output = chunked(**batch)
    torch.testing.assert_close(chunked_output.loss, output.loss)
    output.loss.backward()
    chunked_output.loss.backward()
    for (name, parameter), other in zip(model.named_parameters(), chunked.parameters()):
        torch.testing.assert_close(parameter.grad, other.grad, msg=name)
    model.zero_grad()


def test_image_logits_are_not_masked(small_worldvla, frames):
    model, processor = small_worldvla
    config = model.config
    with torch.no_grad():
        logits = model(**mixed_batch(processor, frames)).logits
    image_logits = logits[..., config.image_token_offset : config.image_token_offset + config.image_codebook_size]
    assert torch.isfinite(image_logits).all() and image_logits.abs().max() < 1e3


def test_gradient_checkpointing_gives_the_same_gradients(frames):
    model, processor = build_small_worldvla(seed=1, residual_dropout=0.0)
    batch = mixed_batch(processor, frames)
    model.train()
    model(**batch).loss.backward()
    expected = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model(**batch).loss.backward()
    for reference, parameter in zip(expected, model.parameters()):
        torch.testing.assert_close(parameter.grad, reference)


@pytest.mark.parametrize("task", ["action", "world"])
def test_cached_generation_equals_full_forward(small_worldvla, frames, task):
    """Logits of every cached `generate` step equal a full forward of the final sequence."""
    model, processor = small_worldvla
    config = model.config
    codes = list(processor.encode_images(frames))
    if task == "action":
        # The prompt already holds two blocks of the chunk, so the rebuilt mask rows matter at every step.
        sample = processor.build_action_sample("open the top drawer", codes, np.full((5, 7), 0.3))
        prompt = torch.tensor([sample["input_ids"][: -3 * config.action_block_length - 1]])
        grammar = ActionChunkLogitsProcessor(config, prompt.shape[1])
        new_tokens = 2 * config.action_block_length
    else:
        prompt = processor.build_world_model_inputs(frames[0], np.full(7, 0.2))["input_ids"]
        grammar = ImageTokensLogitsProcessor(config, prompt.shape[1])
        new_tokens = config.image_sequence_length
    output = model.generate(
        prompt,
        max_new_tokens=new_tokens,
        do_sample=False,
        eos_token_id=None,
        logits_processor=LogitsProcessorList([grammar]),
        output_logits=True,
        return_dict_in_generate=True,
    )
    assert output.sequences.shape[1] == prompt.shape[1] + new_tokens
    with torch.no_grad():
        full = model(output.sequences).logits
    step_logits = torch.stack(output.logits, dim=1)
    torch.testing.assert_close(step_logits, full[:, prompt.shape[1] - 1 : -1], rtol=1e-5, atol=1e-5)


def test_cache_only_prefill_writes_the_cache_of_a_full_forward(frames):
    model, processor = build_small_worldvla(seed=3)
    inputs = processor(text="open the drawer", images=frames)
    full_cache, cache = DynamicCache(config=model.config), DynamicCache(config=model.config)
    with torch.no_grad():
        model.model(**inputs, past_key_values=full_cache, use_cache=True)
        output = model.model(**inputs, past_key_values=cache, use_cache=True, cache_only=True)
    assert output.last_hidden_state is None
    assert cache.get_seq_length() == full_cache.get_seq_length() == inputs["input_ids"].shape[1]
    for layer, full_layer in zip(cache.layers, full_cache.layers, strict=True):
        assert torch.equal(layer.keys, full_layer.keys) and torch.equal(layer.values, full_layer.values)
    with pytest.raises(ValueError, match="cache_only fills the KV cache: pass use_cache=True"):
        model.model(**inputs, use_cache=False, cache_only=True)


def test_action_bin_logits_are_the_heads_bin_columns():
    model, _ = build_small_worldvla(seed=2)
    hidden = torch.randn(3, 5, model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    bins = model.config.token_layout.action_bin_slice
    with torch.no_grad():
        logits = model.action_bin_logits(hidden)
        assert logits.shape == (3, 5, bins.stop - bins.start)
        torch.testing.assert_close(logits, model.lm_head(hidden)[..., bins], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("chunk", [5, 10])
def test_parallel_equals_sequential_decoding(chunk):
    model, processor = build_small_worldvla(seed=chunk, action_chunk_size=chunk)
    rng = np.random.default_rng(chunk)
    instructions = ["pick up the alphabet soup and place it in the basket", "open the middle drawer", "turn on the stove"]
    frames = [[rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(2)] for _ in instructions]
    inputs = processor(text=instructions, images=frames)
    assert inputs["attention_mask"].min() == 0  # instructions of different lengths: right padding is exercised
    parallel = model.generate_action_tokens(**inputs, decoding="parallel")
    sequential = model.generate_action_tokens(**inputs, decoding="sequential")
    assert parallel.shape == (3, chunk, 7)
    assert torch.equal(parallel, sequential)
    for row, instruction in enumerate(instructions):
        single = processor(text=instruction, images=frames[row])
        assert torch.equal(model.generate_action_tokens(**single)[0], parallel[row])


def test_right_padded_batches_decode_without_the_left_padding_advice():
    """`generate` advises left padding for a right-padded batch; the model's own decoders, exact on such batches
    (above), drop that one line, and a plain `generate` call still logs it."""
    import logging

    model, processor = build_small_worldvla(seed=3)
    rng = np.random.default_rng(3)
    instructions = ["pick up the alphabet soup and place it in the basket", "open the middle drawer"]
    inputs = processor(text=instructions, images=[[rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)] for _ in instructions])
    assert inputs["attention_mask"][:, -1].min() == 0
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    generation_logger = logging.getLogger("transformers.generation.utils")
    generation_logger.addHandler(handler)
    try:
        model.generate_action_tokens(**inputs, decoding="sequential")
        assert not [r for r in records if "right-padding" in r.getMessage()]
        model.generate(**inputs, max_new_tokens=1, pad_token_id=model.config.pad_token_id)
        assert [r for r in records if "right-padding" in r.getMessage()]
    finally:
        generation_logger.removeHandler(handler)


def test_predict_action_shapes_and_statistics(small_worldvla, frames):
    model, processor = small_worldvla
    inputs = processor(text="pick up the black bowl", images=frames)
    actions = model.predict_action(**inputs, processor=processor)
    assert actions.shape == (1, 5, 7) and np.isfinite(actions).all()  # (B, K, action_dim), B = 1 included
    low, high = processor.action_tokenizer.bounds()
    assert (actions >= low).all() and (actions <= high).all()
    tokens = model.generate_action_tokens(**inputs).numpy()
    np.testing.assert_array_equal(actions, processor.decode_actions(tokens))

    batch = processor(text=["a", "b"], images=[frames, frames[::-1]])
    assert model.predict_action(**batch, processor=processor).shape == (2, 5, 7)

    with pytest.raises(KeyError, match=r"unknown unnorm_key 'bridge'.*\['libero'\]"):
        model.predict_action(**inputs, processor=processor, unnorm_key="bridge")
    with pytest.raises(ValueError, match="needs the checkpoint's processor"):
        model.predict_action(**inputs)


def test_prompt_longer_than_context(small_worldvla, frames):
    model, processor = small_worldvla
    inputs = processor(text="pick up the black bowl " * 40, images=frames)
    with pytest.raises(ValueError, match="exceeds the context"):
        model.predict_action(**inputs, processor=processor)


def test_more_frames_than_the_history_is_refused(small_worldvla, frames):
    model, processor = small_worldvla
    assert model.config.history_frames == 2 == len(frames)
    inputs = processor(text="pick up the black bowl", images=[*frames, frames[0]])
    for decoding in ("parallel", "sequential"):
        with pytest.raises(ValueError, match=r"holds 3 frames; .* history_frames=2 \(pass the last 2\)"):
            model.predict_action(**inputs, processor=processor, decoding=decoding)
    # Padding does not count: a batch of a one-frame and a two-frame prompt is fine.
    batch = processor(text=["a", "b"], images=[frames[:1], frames])
    assert model.predict_action(**batch, processor=processor).shape == (2, 5, 7)


def test_parallel_decoding_refused_without_action_mask(frames):
    model, processor = build_small_worldvla(use_action_attention_mask=False)
    inputs = processor(text="open the drawer", images=frames)
    with pytest.raises(ValueError, match="use decoding='sequential'"):
        model.predict_action(**inputs, processor=processor)
    assert model.predict_action(**inputs, processor=processor, decoding="sequential").shape == (1, 5, 7)


def test_processor_model_mismatch_is_reported(frames):
    model, _ = build_small_worldvla(action_chunk_size=5)
    _, other_processor = build_small_worldvla(codebook_size=128)
    inputs = other_processor(text="open the drawer", images=frames)
    with pytest.raises(ValueError, match="processor and model disagree on"):
        model.predict_action(**inputs, processor=other_processor)


def test_world_model_generates_well_formed_frames(small_worldvla, frames):
    model, processor = small_worldvla
    config = model.config
    inputs = processor.build_world_model_inputs(frames[0], np.zeros(7))
    tokens = model.generate_image_tokens(**inputs)
    assert tokens.shape == (1, config.image_sequence_length)
    codes = processor.image_tokens_to_codes(tokens[0])
    assert codes.shape == (config.image_grid_size, config.image_grid_size)
    assert torch.equal(torch.tensor(processor.image_codes_to_token_ids(codes)), tokens[0])

    frame = model.predict_next_frame(frames[0], np.zeros(7), processor)
    assert frame.shape == (1, 64, 64, 3) and frame.dtype == np.uint8  # (B, H, W, 3), B = 1 included
    np.testing.assert_array_equal(frame, processor.decode_image_codes(codes[None]))
    batch = model.predict_next_frame(frames, np.zeros((2, 7)), processor)
    assert batch.shape == (2, 64, 64, 3)
    np.testing.assert_array_equal(batch[:1], frame)

    imagined = model.rollout(frames[0], np.zeros((3, 7)), processor)
    assert imagined.shape == (3, 64, 64, 3)
    np.testing.assert_array_equal(imagined[:1], frame)


def test_sampled_frames_are_reproducible_with_a_seed(small_worldvla, frames):
    model, processor = small_worldvla
    torch.manual_seed(0)
    first = model.predict_next_frame(frames[0], np.zeros(7), processor, do_sample=True, top_k=8)
    torch.manual_seed(0)
    second = model.predict_next_frame(frames[0], np.zeros(7), processor, do_sample=True, top_k=8)
    np.testing.assert_array_equal(first, second)


def test_cache_requires_a_full_mask(small_worldvla, frames):
    model, processor = small_worldvla
    ids = processor(text="open the drawer", images=frames)["input_ids"]
    with torch.no_grad():
        full = model(ids).logits
        cache = model(ids[:, :-1], use_cache=True).past_key_values
        with pytest.raises(ValueError, match="additive 4-D attention mask"):
            model(ids[:, -1:], past_key_values=cache)
        mask = build_action_attention_mask(ids, model.config)[:, :, -1:]
        last = model(ids[:, -1:], mask, past_key_values=cache).logits
    torch.testing.assert_close(last[:, 0], full[:, -1], rtol=1e-5, atol=1e-5)


def three_prompts(processor, seed):
    rng = np.random.default_rng(seed)
    instructions = ["put the bowl on the plate", "open the top drawer", "turn on the stove"]
    frames = [[rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(2)] for _ in instructions]
    return processor(text=instructions, images=frames)


def test_lora_on_lm_head_reaches_the_loss_and_both_decoders(frames):
    model, processor = build_small_worldvla(seed=4, residual_dropout=0.0)
    lora = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["lm_head"], lora_dropout=0.0))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in lora.named_parameters():
            if "lora_B" in name:  # B starts at zero: give the adapter an effect
                parameter.copy_(torch.randn(parameter.shape, generator=generator))
    batch = mixed_batch(processor, frames)
    output = lora(**batch)
    expected, _, _ = reference_loss(output.logits, batch["labels"], model.config)
    torch.testing.assert_close(output.loss, expected)
    output.loss.backward()
    adapter_grads = {name: p.grad for name, p in lora.named_parameters() if "lm_head.lora" in name}
    assert len(adapter_grads) == 2
    assert all(grad is not None and grad.abs().sum() > 0 for grad in adapter_grads.values())

    lora.eval()
    inputs = three_prompts(processor, seed=4)
    parallel = model.generate_action_tokens(**inputs, decoding="parallel")
    assert torch.equal(parallel, model.generate_action_tokens(**inputs, decoding="sequential"))
    with lora.disable_adapter():
        assert not torch.equal(model.generate_action_tokens(**inputs), parallel)  # the adapter does act


@pytest.mark.parametrize("decoding", ["parallel", "sequential"])
@pytest.mark.parametrize("where", ["layer", "bin_row"])
def test_non_finite_values_never_become_actions(frames, decoding, where):
    model, processor = build_small_worldvla(seed=5)
    layout = model.config.token_layout
    with torch.no_grad():
        if where == "layer":  # every hidden state and logit turns NaN
            model.model.layers[1].mlp.down_proj.weight[0, 0] = float("nan")
        else:  # hidden states stay finite; one bin's logit is NaN, which argmax would pick
            model.lm_head.weight[layout.first_action_bin_id + 3, 0] = float("nan")
    inputs = processor(text="open the drawer", images=frames)
    with pytest.raises(FloatingPointError, match="non-finite .*no action or frame is decoded"):
        model.predict_action(**inputs, processor=processor, decoding=decoding)


def test_truncated_weights_files_are_named(tmp_path):
    from processing_worldvla import WorldVLAProcessor

    model, processor = build_small_worldvla(seed=0)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    for weights, load in (
        (tmp_path / "model.safetensors", lambda: AutoModelForCausalLM.from_pretrained(tmp_path, trust_remote_code=True)),
        (tmp_path / "vqgan" / "model.safetensors", lambda: WorldVLAProcessor.from_pretrained(tmp_path)),
    ):
        intact = weights.read_bytes()
        weights.write_bytes(intact[: len(intact) // 2])
        with pytest.raises(OSError, match=f"cannot load .*{weights}: .*truncated"):
            load()
        weights.write_bytes(intact)
        load()


def test_loading_non_finite_weights_names_the_tensor(tmp_path):
    model, _ = build_small_worldvla(seed=6)
    model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    weights["model.layers.1.self_attn.k_proj.weight"][2, 3] = float("inf")
    weights["lm_head.weight"][7, 0] = float("nan")
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    names = r"non-finite weights \(NaN or inf\) in model\.layers\.1\.self_attn\.k_proj\.weight, lm_head\.weight: "
    with pytest.raises(ValueError, match=names):
        WorldVLAForConditionalGeneration.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match=names):
        AutoModelForCausalLM.from_pretrained(tmp_path, trust_remote_code=True)
