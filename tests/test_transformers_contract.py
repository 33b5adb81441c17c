"""The transformers model contract: outputs, keyword arguments, masks, caches and attention switching as
transformers documents them, checked on a small random WorldVLA."""

import copy
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers.generation import LogitsProcessorList
from transformers.modeling_outputs import BaseModelOutputWithPast
from transformers.utils import find_labels

from modeling_worldvla import (
    IGNORE_INDEX,
    ActionChunkLogitsProcessor,
    WorldVLAForConditionalGeneration,
    build_action_attention_mask,
)
from scripts.build_small_checkpoint import build_small_worldvla


@pytest.fixture(scope="module")
def model_and_processor():
    model, processor = build_small_worldvla(seed=11, residual_dropout=0.0)
    return model, processor


def action_sample(processor, frames, seed=0):
    codes = list(processor.encode_images(frames))
    actions = np.random.default_rng(seed).uniform(-1, 1, (5, 7))
    return processor.build_action_sample("pick up the black bowl", codes, actions)


def sample_ids(processor, frames):
    return torch.tensor([action_sample(processor, frames)["input_ids"]])


def mixed_batch(processor, frames):
    codes = list(processor.encode_images(frames))
    rng = np.random.default_rng(1)
    samples = [
        processor.build_action_sample("open the drawer", codes, rng.uniform(-1, 1, (5, 7))),
        processor.build_world_model_sample(codes[:1], rng.uniform(-1, 1, (1, 7)), codes[1]),
    ]
    return processor.pad(samples)


def test_base_model_returns_base_model_output_with_past(model_and_processor, frames):
    model, processor = model_and_processor
    ids = sample_ids(processor, frames)
    config = model.config
    with torch.no_grad():
        output = model.model(ids, output_hidden_states=True)
        as_tuple = model.model(ids, output_hidden_states=True, return_dict=False)
        logits = model(ids).logits
    assert isinstance(output, BaseModelOutputWithPast)
    assert output.last_hidden_state.shape == (1, ids.shape[1], config.hidden_size)
    torch.testing.assert_close(model.lm_head(output.last_hidden_state), logits, rtol=0, atol=0)
    assert output.past_key_values.get_seq_length() == ids.shape[1]
    # Embeddings, then one entry per layer, the last one normed: transformers' convention.
    assert len(output.hidden_states) == config.num_hidden_layers + 1
    torch.testing.assert_close(output.hidden_states[0], model.model.embed_tokens(ids), rtol=0, atol=0)
    torch.testing.assert_close(output.hidden_states[-1], output.last_hidden_state, rtol=0, atol=0)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 3
    torch.testing.assert_close(as_tuple[0], output.last_hidden_state, rtol=0, atol=0)
    assert as_tuple[2][1].shape == output.hidden_states[1].shape


def test_causal_lm_output_fields_and_tuples(model_and_processor, frames):
    model, processor = model_and_processor
    batch = mixed_batch(processor, frames)
    with torch.no_grad():
        output = model(**batch, output_hidden_states=True, output_attentions=True)
        as_tuple = model(**batch, return_dict=False, use_cache=False)
        no_cache = model(**batch, use_cache=False)
    for name in ("loss", "action_loss", "image_loss", "z_loss"):
        assert torch.isfinite(output[name]), name
    assert len(output.hidden_states) == model.config.num_hidden_layers + 1
    assert len(output.attentions) == model.config.num_hidden_layers
    length = batch["input_ids"].shape[1]
    assert output.attentions[0].shape == (2, model.config.num_attention_heads, length, length)
    assert no_cache.past_key_values is None
    # The tuple leaves out None entries, as transformers' ModelOutput.to_tuple does: loss, logits, the three losses.
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 5
    torch.testing.assert_close(as_tuple[0], output.loss)
    torch.testing.assert_close(as_tuple[1], output.logits)
    torch.testing.assert_close(as_tuple[4], output.z_loss)

    tuple_model = copy.deepcopy(model)
    tuple_model.config.return_dict = False
    with torch.no_grad():
        assert isinstance(tuple_model(batch["input_ids"]), tuple)


def test_unknown_keywords_raise(model_and_processor, frames):
    model, processor = model_and_processor
    ids = sample_ids(processor, frames)
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['cache_position', 'num_beams'\]"):
        model(ids, num_beams=2, cache_position=torch.arange(3))
    with pytest.raises(TypeError, match="labelz"):
        model.model(ids, labelz=ids)


def test_trainer_finds_only_labels():
    # Trainer's evaluation needs each batch to hold every forward parameter named like a label.
    assert find_labels(WorldVLAForConditionalGeneration) == ["labels"]


def test_output_attentions_are_the_masked_weights_under_both_implementations(model_and_processor, frames):
    model, processor = model_and_processor
    ids = sample_ids(processor, frames)
    blocked = build_action_attention_mask(ids, model.config)[0, 0] != 0
    future = torch.ones_like(blocked).triu(1)
    assert blocked[future].all() and blocked[~future].any()  # causal, and the action mask cuts more
    eager, sdpa = copy.deepcopy(model), copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    sdpa.set_attn_implementation("sdpa")
    with torch.no_grad():
        eager_output = eager(ids, output_attentions=True)
        sdpa_output = sdpa(ids, output_attentions=True)
        sdpa_plain = sdpa(ids)
    for weights, other in zip(eager_output.attentions, sdpa_output.attentions):
        assert weights.shape == (1, model.config.num_attention_heads, ids.shape[1], ids.shape[1])
        assert torch.equal(weights, other)
        assert (weights[0][:, blocked] == 0).all()
        assert (weights[0][:, ~blocked] > 0).all()
        torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))
    torch.testing.assert_close(sdpa_output.logits, sdpa_plain.logits, rtol=1e-5, atol=1e-5)


def test_set_attn_implementation_switches_the_kernel(model_and_processor, frames, monkeypatch):
    model, processor = model_and_processor
    model = copy.deepcopy(model)
    ids = sample_ids(processor, frames)
    calls, sdpa = [], F.scaled_dot_product_attention

    def counted_sdpa(*args, **kwargs):
        calls.append(1)
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counted_sdpa)
    with torch.no_grad():
        model.set_attn_implementation("eager")
        assert model.config._attn_implementation == "eager"
        eager_logits = model(ids).logits
        assert calls == []
        model.set_attn_implementation("sdpa")
        sdpa_logits = model(ids).logits
    assert len(calls) == model.config.num_hidden_layers
    torch.testing.assert_close(eager_logits, sdpa_logits, rtol=1e-5, atol=1e-5)
    for unsupported, message in [
        ("flash_attention_2", "does not support Flash Attention 2"),
        ("flex_attention", "does not support an attention implementation through torch's flex_attention"),
        ("paged|eager", "WorldVLA runs attn_implementation 'eager' or 'sdpa', not 'paged|eager'"),
    ]:
        with pytest.raises(ValueError, match=re.escape(message)):
            model.set_attn_implementation(unsupported)
    assert model.config._attn_implementation == "sdpa"


def test_inputs_embeds_need_the_4d_mask(model_and_processor, frames):
    model, processor = model_and_processor
    ids = sample_ids(processor, frames)
    mask = build_action_attention_mask(ids, model.config)
    with torch.no_grad():
        expected = model(ids).logits
        embeds = model.get_input_embeddings()(ids)
        got = model(inputs_embeds=embeds, attention_mask=mask).logits
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
        with pytest.raises(ValueError, match="With inputs_embeds, pass the 4-D attention mask"):
            model(inputs_embeds=embeds, attention_mask=torch.ones_like(ids))
        with pytest.raises(ValueError, match="exactly one of input_ids and inputs_embeds"):
            model(ids, inputs_embeds=embeds)


def test_generate_from_inputs_embeds_with_their_ids(model_and_processor, frames):
    model, processor = model_and_processor
    prompt = processor(text="open the drawer", images=frames)["input_ids"]
    embeds = model.get_input_embeddings()(prompt)
    settings = {"max_new_tokens": 3, "do_sample": False, "eos_token_id": None}
    with torch.no_grad():
        from_ids = model.generate(prompt, **settings)
        from_embeds = model.generate(prompt, inputs_embeds=embeds, **settings)
        with pytest.raises(ValueError, match="needs the matching input_ids"):
            model.generate(inputs_embeds=embeds, attention_mask=torch.ones_like(prompt), **settings)
    assert torch.equal(from_embeds, from_ids)


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_bool_4d_mask_follows_the_sdpa_convention(model_and_processor, frames, implementation):
    model, processor = model_and_processor
    model = copy.deepcopy(model)
    model.set_attn_implementation(implementation)
    ids = sample_ids(processor, frames)
    allowed = build_action_attention_mask(ids, model.config) == 0
    with torch.no_grad():
        expected = model(ids).logits
        got = model(ids, attention_mask=allowed).logits
        with pytest.raises(ValueError, match="must be bool .True = attend. or additive float"):
            model(ids, attention_mask=allowed.long())
        with pytest.raises(ValueError, match=r"does not fit \d+ new tokens"):
            model(ids, attention_mask=allowed[..., :-1])
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_shift_labels_are_honoured(model_and_processor, frames):
    model, processor = model_and_processor
    batch = mixed_batch(processor, frames)
    labels = batch.pop("labels")
    shift_labels = F.pad(labels, (0, 1), value=IGNORE_INDEX)[:, 1:]
    with torch.no_grad():
        from_labels = model(**batch, labels=labels)
        from_shifted = model(**batch, shift_labels=shift_labels)
        both = model(**batch, labels=torch.full_like(labels, IGNORE_INDEX), shift_labels=shift_labels)
        misread = model(**batch, labels=shift_labels)
        with pytest.raises(ValueError, match="shift_labels of shape"):
            model(**batch, shift_labels=shift_labels[:, :-1])
    for name in ("loss", "action_loss", "image_loss", "z_loss"):
        torch.testing.assert_close(from_shifted[name], from_labels[name], msg=name)
        torch.testing.assert_close(both[name], from_labels[name], msg=name)
    assert (misread.loss - from_labels.loss).abs() > 1e-3


def test_logits_to_keep_positions(model_and_processor, frames):
    model, processor = model_and_processor
    ids = sample_ids(processor, frames)
    with torch.no_grad():
        full = model(ids).logits
        last = model(ids, logits_to_keep=3).logits
        picked = model(ids, logits_to_keep=torch.tensor([0, 7])).logits
    torch.testing.assert_close(last, full[:, -3:], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(picked, full[:, [0, 7]], rtol=1e-6, atol=1e-6)


def test_generate_returns_hidden_states_and_attentions(model_and_processor, frames):
    model, processor = model_and_processor
    prompt = processor(text="open the drawer", images=frames)["input_ids"]
    config = model.config
    with torch.no_grad():
        output = model.generate(
            prompt,
            max_new_tokens=3,
            do_sample=False,
            eos_token_id=None,
            return_dict_in_generate=True,
            output_hidden_states=True,
            output_attentions=True,
            output_logits=True,
        )
    assert len(output.hidden_states) == len(output.attentions) == 3
    assert output.hidden_states[0][0].shape == (1, prompt.shape[1], config.hidden_size)
    for step, (hidden_states, attentions) in enumerate(zip(output.hidden_states, output.attentions)):
        assert len(hidden_states) == config.num_hidden_layers + 1 and len(attentions) == config.num_hidden_layers
        assert attentions[0].shape[-1] == prompt.shape[1] + step
        torch.testing.assert_close(model.lm_head(hidden_states[-1][:, -1]), output.logits[step], rtol=1e-6, atol=1e-6)


def test_static_cache_generation_equals_dynamic(model_and_processor, frames):
    model, processor = model_and_processor
    config = model.config
    sample = action_sample(processor, frames)
    # Two blocks of the chunk are already in the prompt, so the rebuilt action-mask rows matter at every step.
    prompt = torch.tensor([sample["input_ids"][: -3 * config.action_block_length - 1]])
    settings = {
        "max_new_tokens": 2 * config.action_block_length,
        "do_sample": False,
        "eos_token_id": None,
        "return_dict_in_generate": True,
        "output_logits": True,
    }
    results = {}
    for cache in ("dynamic", "static"):
        grammar = ActionChunkLogitsProcessor(config, prompt.shape[1])
        with torch.no_grad():
            results[cache] = model.generate(
                prompt, logits_processor=LogitsProcessorList([grammar]), cache_implementation=cache, **settings
            )
    assert torch.equal(results["static"].sequences, results["dynamic"].sequences)
    torch.testing.assert_close(
        torch.stack(results["static"].logits), torch.stack(results["dynamic"].logits), rtol=1e-5, atol=1e-5
    )
