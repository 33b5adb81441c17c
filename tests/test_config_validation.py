"""WorldVLAConfig validation, the token layout object, and what a saved config publishes."""

import json
from dataclasses import FrozenInstanceError

import numpy as np
import pytest
import torch
from transformers import AutoConfig

from configuration_worldvla import (
    IGNORE_INDEX,
    PROCESSOR_LAYOUT_FIELDS,
    RELEASED_TOKEN_LAYOUT,
    WorldVLAConfig,
    WorldVLATokenLayout,
)
from modeling_worldvla import WorldVLAForConditionalGeneration
from scripts.build_small_checkpoint import build_small_worldvla

SMALL = {
    **WorldVLAConfig.compact_token_layout(512, 256),
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "image_size": 64,
    "image_patch_size": 16,
    "max_position_embeddings": 512,
}


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("action_chunk_size", True, r"`action_chunk_size` must be an integer >= 1 \(not a bool\), got True"),
        ("action_chunk_size", 0, r"`action_chunk_size` must be an integer >= 1"),
        ("action_chunk_size", 2.0, r"`action_chunk_size` must be an integer >= 1 \(not a bool\), got 2.0"),
        ("history_frames", "2", r"`history_frames` must be an integer >= 1"),
        ("loss_chunk_size", 0, r"`loss_chunk_size` must be an integer >= 1"),
        ("num_hidden_layers", False, r"`num_hidden_layers` must be an integer >= 1 \(not a bool\)"),
        ("residual_dropout", 1.0, r"`residual_dropout` must be a probability in \[0, 1\), got 1.0"),
        ("attention_dropout", -0.1, r"`attention_dropout` must be a probability in \[0, 1\)"),
        ("residual_dropout", True, r"`residual_dropout` must be a probability"),
        ("image_loss_weight", float("nan"), r"`image_loss_weight` must be a finite number >= 0"),
        ("z_loss_weight", -1e-5, r"`z_loss_weight` must be a finite number >= 0"),
        ("rms_norm_eps", 0, r"`rms_norm_eps` must be a number > 0"),
        ("use_action_attention_mask", 1, r"`use_action_attention_mask` must be True or False, got 1"),
        ("tie_word_embeddings", "no", r"`tie_word_embeddings` must be True or False, got 'no'"),
        ("hidden_act", "swish-ish", r"`hidden_act` must be one of transformers' activations"),
        ("n_action_bins", 1, r"`n_action_bins` must be >= 2"),
        ("n_action_bins", True, r"`n_action_bins` must be an integer \(not a bool\)"),
        ("image_patch_size", 24, r"`image_size` \(64\) must be divisible by `image_patch_size` \(24\)"),
        ("image_size", 80, r"`image_size` must be a multiple of 32 up to 512"),
        ("num_attention_heads", 3, r"`hidden_size` \(64\) must be divisible by `num_attention_heads` \(3\)"),
        ("num_attention_heads", 64, r"head size .* \(1\) must be even"),
        ("num_key_value_heads", 3, r"`num_attention_heads` \(4\) must be a multiple of `num_key_value_heads` \(3\)"),
    ],
)
def test_invalid_fields_are_named(field, value, message):
    with pytest.raises(ValueError, match=message):
        WorldVLAConfig(**{**SMALL, field: value})


def test_context_must_hold_the_longest_sample():
    config = WorldVLAConfig(**SMALL)
    # 64 px frames: 4 x 4 codes, 24 tokens; action sample 1 + 2 * 24 + 1 + 5 * 9 + 1 = 96; world model 1+24+9+1+24+1.
    assert config.longest_sample_length == 96
    assert WorldVLAConfig(**{**SMALL, "max_position_embeddings": 96}).max_position_embeddings == 96
    with pytest.raises(ValueError, match=r"`max_position_embeddings` \(95\) is shorter than the longest .* 96 tokens"):
        WorldVLAConfig(**{**SMALL, "max_position_embeddings": 95})
    with pytest.raises(ValueError, match=r"is shorter than the longest sample even without its text: 141 tokens"):
        WorldVLAConfig(**{**SMALL, "max_position_embeddings": 128, "action_chunk_size": 10})
    # The world-model sample is the longer one with one history frame and one action per chunk.
    assert WorldVLAConfig(**{**SMALL, "history_frames": 1, "action_chunk_size": 1}).longest_sample_length == 60
    released = WorldVLAConfig()
    assert released.longest_sample_length == 1 + 2 * 276 + 1 + 5 * 9 + 1


def test_token_ids_must_fit_the_vocabulary_and_not_collide():
    too_small = r"uses ids up to 1046, outside the vocabulary: raise `vocab_size` \(1000\) to at least 1047"
    with pytest.raises(ValueError, match=too_small):
        WorldVLAConfig(**{**SMALL, "vocab_size": 1000})
    with pytest.raises(ValueError, match=r"`separator_token_id` \(600\) falls inside the image codes"):
        WorldVLAConfig(**{**SMALL, "separator_token_id": 600})
    with pytest.raises(ValueError, match="special token ids must be distinct"):
        WorldVLAConfig(**{**SMALL, "image_end_token_id": SMALL["image_start_token_id"]})
    with pytest.raises(ValueError, match=r"`pad_token_id` \(\d+\) must not be an image, action or separator token"):
        WorldVLAConfig(**{**SMALL, "pad_token_id": SMALL["action_start_token_id"]})


def test_from_pretrained_overrides_are_validated(tmp_path):
    WorldVLAConfig(**SMALL).save_pretrained(tmp_path)
    assert AutoConfig.from_pretrained(tmp_path, trust_remote_code=True, residual_dropout=0.1).residual_dropout == 0.1
    with pytest.raises(ValueError, match=r"`residual_dropout` must be a probability in \[0, 1\), got 1.5"):
        AutoConfig.from_pretrained(tmp_path, trust_remote_code=True, residual_dropout=1.5)
    config = WorldVLAConfig(**SMALL)
    config.action_chunk_size = True
    with pytest.raises(ValueError, match="`action_chunk_size` must be an integer"):
        WorldVLAForConditionalGeneration(config)


def test_training_use_cache_is_not_published(tmp_path):
    """train.py loads with use_cache=False; the saved config must still generate with the cache."""
    model, _ = build_small_worldvla(seed=0)
    model.save_pretrained(tmp_path / "base")
    trained = WorldVLAForConditionalGeneration.from_pretrained(tmp_path / "base", use_cache=False)
    assert trained.config.use_cache is False
    trained.save_pretrained(tmp_path / "trained")
    assert json.loads((tmp_path / "trained" / "config.json").read_text())["use_cache"] is True
    assert WorldVLAForConditionalGeneration.from_pretrained(tmp_path / "trained").config.use_cache is True

    scratch, _ = build_small_worldvla(seed=0, use_cache=False)
    scratch.config.save_pretrained(tmp_path / "scratch")
    assert json.loads((tmp_path / "scratch" / "config.json").read_text())["use_cache"] is True


def test_token_layout_of_the_released_checkpoints():
    layout = WorldVLAConfig().token_layout
    assert isinstance(layout, WorldVLATokenLayout)
    assert layout.to_dict() == WorldVLAConfig().processor_layout()
    assert tuple(layout.to_dict()) == PROCESSOR_LAYOUT_FIELDS
    assert {name: layout.to_dict()[name] for name in RELEASED_TOKEN_LAYOUT} == RELEASED_TOKEN_LAYOUT
    assert WorldVLATokenLayout(**layout.to_dict()) == layout
    assert IGNORE_INDEX == -100
    assert layout.image_grid_size == 16 and layout.image_sequence_length == 276 and layout.action_block_length == 9
    assert layout.first_action_bin_id == 10006
    assert layout.action_bin_slice == slice(10006, 10262) and layout.image_code_slice == slice(4, 8196)
    assert layout.image_grid_token_id(256) == 8812 and layout.image_grid_token_id(512) == 8820
    ids = torch.tensor([3, 4, 8195, 8196, 10005, 10006, 10261, 10262])
    assert layout.is_image_code(ids).tolist() == [False, True, True, False, False, False, False, False]
    assert layout.is_action_bin(ids).tolist() == [False, False, False, False, False, True, True, False]
    assert layout.is_action_bin(np.array([10006, 15004])).tolist() == [True, False]
    assert layout.is_image_code(4) and not layout.is_action_bin(10005)
    with pytest.raises(FrozenInstanceError):
        layout.image_size = 512


def test_frame_token_ids_and_template(small_worldvla):
    model, processor = small_worldvla
    layout = model.config.token_layout
    codes = torch.arange(16).view(4, 4) * 7
    ids = layout.frame_token_ids(codes)
    assert ids == processor.image_codes_to_token_ids(codes)
    assert len(ids) == layout.image_sequence_length == len(layout.frame_template)
    for token_id, template_id in zip(ids, layout.frame_template):
        assert token_id == template_id if template_id is not None else layout.is_image_code(token_id)
    assert ids[:3] == [layout.image_start_token_id, layout.image_grid_token_id(64), layout.image_grid_token_id(64)]
    assert ids[3:8] == [layout.image_token_offset + c for c in (0, 7, 14, 21)] + [layout.image_row_end_token_id]
    assert layout.frame_token_ids(np.zeros((2, 4), dtype=np.int64))[1:3] == [
        layout.image_grid_token_id(32),
        layout.image_grid_token_id(64),
    ]


def test_invalid_layouts_are_refused_on_their_own():
    fields = WorldVLAConfig(**SMALL).processor_layout()
    with pytest.raises(ValueError, match=r"the image codes \[\d+, \d+\) and the action bins \[\d+, \d+\) overlap"):
        WorldVLATokenLayout(**{**fields, "action_token_offset": fields["image_token_offset"]})
    with pytest.raises(ValueError, match=r"`action_dim` must be an integer \(not a bool\), got True"):
        WorldVLATokenLayout(**{**fields, "action_dim": True})
