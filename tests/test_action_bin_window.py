"""`action_bin_window`: an action bin decoded from the likeliest window of neighbouring bins, so that a saturated
action holding all of a small mode's probability in one bin no longer beats a likelier mode spread over many."""

import json
import os

import numpy as np
import pytest
import torch

from configuration_worldvla import WorldVLAConfig
from modeling_worldvla import WorldVLAForConditionalGeneration, windowed_bin_argmax
from scripts.build_small_checkpoint import build_small_worldvla

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def bimodal_logits():
    """10% on the last bin (a saturated action), 90% spread over bins 100-119 with its peak at 110."""
    probabilities = np.zeros(256)
    probabilities[255] = 0.10
    probabilities[100:120] = 0.04
    probabilities[110] = 0.14
    return torch.tensor(np.log(probabilities + 1e-12), dtype=torch.float32)


def test_a_likelier_broad_mode_beats_a_saturated_bin():
    logits = bimodal_logits()
    assert int(windowed_bin_argmax(logits, 1)) == 110  # 0.14 > 0.10: the argmax is right here
    flattened = logits.clone()
    flattened[110] = flattened[100]  # the broad mode without its peak: 4% per bin, 80% in all
    assert int(windowed_bin_argmax(flattened, 1)) == 255
    assert int(windowed_bin_argmax(flattened, 3)) in range(100, 120)
    assert int(windowed_bin_argmax(logits, 9)) == 110  # the likeliest bin of the winning window


def test_a_saturated_mode_that_holds_the_probability_stays_saturated():
    probabilities = np.full(256, 0.05 / 255)
    probabilities[255] = 0.95
    logits = torch.tensor(np.log(probabilities), dtype=torch.float32)
    assert int(windowed_bin_argmax(logits, 9)) == 255  # the window's best bin, not its centre (251)
    assert int(windowed_bin_argmax(logits.flip(0), 9)) == 0


def test_window_1_is_the_argmax_and_shapes_are_kept():
    logits = torch.randn(3, 5, 256, generator=torch.Generator().manual_seed(0))
    assert torch.equal(windowed_bin_argmax(logits, 1), logits.argmax(-1))
    chosen = windowed_bin_argmax(logits, 9)
    assert chosen.shape == (3, 5)
    mass = torch.nn.functional.avg_pool1d(logits.softmax(-1).reshape(15, 1, 256), 9, 1, 4).reshape(3, 5, 256)
    # The chosen bin lies within 4 bins of the window centre that holds the most probability.
    assert ((chosen - mass.argmax(-1)).abs() <= 4).all()


@pytest.mark.parametrize("window", [0, 4, 257, True, 3.0])
def test_invalid_windows_are_refused_by_name(window):
    with pytest.raises(ValueError, match="`action_bin_window` must be an odd integer from 1"):
        WorldVLAConfig(**WorldVLAConfig.compact_token_layout(512, 256), action_bin_window=window,
                       hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       image_size=64, image_patch_size=16, max_position_embeddings=512)


def test_windowed_parallel_decoding_equals_sequential_and_differs_from_argmax():
    model, processor = build_small_worldvla(seed=3)
    rng = np.random.default_rng(3)
    instructions = ["pick up the black bowl and place it on the plate", "open the middle drawer"]
    frames = [[rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(2)] for _ in instructions]
    inputs = processor(text=instructions, images=frames)
    argmax = model.generate_action_tokens(**inputs)
    model.config.action_bin_window = 9
    parallel = model.generate_action_tokens(**inputs, decoding="parallel")
    sequential = model.generate_action_tokens(**inputs, decoding="sequential")
    assert torch.equal(parallel, sequential)
    assert not torch.equal(parallel, argmax)  # a random model's bin distributions are flat: the window matters


def test_the_window_is_a_from_pretrained_override_and_is_saved(tmp_path):
    model, processor = build_small_worldvla(seed=1)
    model.save_pretrained(tmp_path)
    assert WorldVLAForConditionalGeneration.from_pretrained(tmp_path).config.action_bin_window == 1
    loaded = WorldVLAForConditionalGeneration.from_pretrained(tmp_path, action_bin_window=9)
    assert loaded.config.action_bin_window == 9
    loaded.save_pretrained(tmp_path / "windowed")
    assert json.loads((tmp_path / "windowed" / "config.json").read_text())["action_bin_window"] == 9
    with pytest.raises(ValueError, match="action_bin_window"):
        WorldVLAForConditionalGeneration.from_pretrained(tmp_path, action_bin_window=8)


def test_eval_results_record_the_window_and_older_results_count_as_argmax(tmp_path):
    pytest.importorskip("libero")
    import eval_libero

    settings = {"policy": "worldvla", "model": "m", "action_bin_window": 1}
    older = {key: value for key, value in settings.items() if key != "action_bin_window"}
    (tmp_path / eval_libero.SETTINGS_FILE).write_text(json.dumps(older))
    eval_libero.check_settings(tmp_path, settings)  # written before the option existed: decoded with the argmax
    with pytest.raises(SystemExit, match=r"'action_bin_window': \(1, 9\)"):
        eval_libero.check_settings(tmp_path, {**settings, "action_bin_window": 9})
    expert = {"policy": "scripted", "model": None}
    (tmp_path / eval_libero.SETTINGS_FILE).write_text(json.dumps(expert))
    eval_libero.check_settings(tmp_path, {**expert, "action_bin_window": None})
