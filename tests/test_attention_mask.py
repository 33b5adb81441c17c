"""The action attention mask against a plain loop implementation of the rule, and its effect on logits."""

import copy
import random

import numpy as np
import pytest
import torch

from modeling_worldvla import build_action_attention_mask


def reference_allowed(ids, real, config, rows=None):
    """The rule of the paper, written token by token: causal, padding hidden, and a token of an action block
    that starts after the start of the last image sees no other action block. Every token sees itself.
    `rows`: only these query rows (the others stay False)."""
    length = len(ids)
    block_of, block_start, block, inside = [0] * length, {}, 0, False
    for i, token in enumerate(ids):
        if token == config.action_start_token_id:
            block, inside = block + 1, True
            block_start[block] = i
        if inside:
            block_of[i] = block
        if token == config.action_end_token_id:
            inside = False
    image_starts = [i for i, token in enumerate(ids) if token == config.image_start_token_id]
    last_image = image_starts[-1] if image_starts else -1
    allowed = np.zeros((length, length), dtype=bool)
    for query in range(length) if rows is None else rows:
        for key in range(query + 1):
            visible = bool(real[key])
            cut_off = block_of[query] and block_start[block_of[query]] > last_image
            if config.use_action_attention_mask and cut_off and block_of[key] and block_of[key] != block_of[query]:
                visible = False
            allowed[query, key] = visible
        allowed[query, query] = True
    return allowed


def random_image(config, rng):
    grid = 2
    tokens = [config.image_start_token_id, config.image_grid_token_offset + 2, config.image_grid_token_offset + 2]
    for _ in range(grid):
        tokens += [config.image_token_offset + rng.randrange(config.image_codebook_size) for _ in range(grid)]
        tokens.append(config.image_row_end_token_id)
    return tokens + [config.image_end_token_id]


def random_action(config, rng):
    bins = [config.action_token_offset + 1 + rng.randrange(config.n_action_bins) for _ in range(config.action_dim)]
    return [config.action_start_token_id, *bins, config.action_end_token_id]


def random_sequence(config, rng):
    """An action-model sample, a world-model sample, or a random interleaving of text, images and actions."""
    kind = rng.choice(["action", "world", "mixed", "open_block"])
    ids = [config.bos_token_id] + [rng.randrange(1, 50) for _ in range(rng.randrange(1, 6))]
    if kind == "action":
        ids += random_image(config, rng) + random_image(config, rng) + [config.separator_token_id]
        for _ in range(rng.randrange(1, 5)):
            ids += random_action(config, rng)
        ids.append(config.separator_token_id)
    elif kind == "world":
        ids += random_image(config, rng) + random_action(config, rng) + [config.separator_token_id]
        ids += random_image(config, rng) + [config.separator_token_id]
    elif kind == "mixed":
        for _ in range(rng.randrange(2, 7)):
            part = rng.choice(["image", "action", "text", "sep"])
            if part == "image":
                ids += random_image(config, rng)
            elif part == "action":
                ids += random_action(config, rng)
            elif part == "text":
                ids += [rng.randrange(1, 50) for _ in range(rng.randrange(1, 4))]
            else:
                ids.append(config.separator_token_id)
    else:  # a chunk being generated: the last block has no end token yet
        ids += random_image(config, rng) + [config.separator_token_id] + random_action(config, rng)
        ids += random_action(config, rng)[: rng.randrange(1, 8)]
    return ids


@pytest.mark.parametrize("use_mask", [True, False])
@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_mask_matches_loop_reference(small_worldvla, use_mask, padding_side):
    config = copy.deepcopy(small_worldvla[0].config)
    config.use_action_attention_mask = use_mask
    rng = random.Random(1234)
    for _ in range(10):
        sequences = [random_sequence(config, rng) for _ in range(4)]
        longest = max(map(len, sequences))
        ids, real = [], []
        for sequence in sequences:
            pad = [config.pad_token_id] * (longest - len(sequence))
            ids.append(sequence + pad if padding_side == "right" else pad + sequence)
            mask = [1] * len(sequence)
            real.append(mask + [0] * len(pad) if padding_side == "right" else [0] * len(pad) + mask)
        input_ids, attention_mask = torch.tensor(ids), torch.tensor(real)
        mask = build_action_attention_mask(input_ids, config, attention_mask)
        assert mask.shape == (4, 1, longest, longest) and mask.dtype == torch.float32
        assert set(mask.unique().tolist()) <= {0.0, torch.finfo(torch.float32).min}
        for row in range(4):
            expected = reference_allowed(ids[row], real[row], config)
            np.testing.assert_array_equal((mask[row, 0] == 0).numpy(), expected)
        last_rows = build_action_attention_mask(input_ids, config, attention_mask, last_rows=3)
        assert torch.equal(last_rows, mask[:, :, -3:])


def test_mask_cuts_only_chunk_blocks(small_worldvla):
    """Two blocks after the last image: the second does not see the first; a world-model action stays causal."""
    config = small_worldvla[0].config
    rng = random.Random(0)
    image, first, second = random_image(config, rng), random_action(config, rng), random_action(config, rng)
    ids = [config.bos_token_id, 7] + image + [config.separator_token_id] + first + second
    mask = build_action_attention_mask(torch.tensor([ids]), config)[0, 0] == 0
    first_at, second_at = ids.index(config.action_start_token_id), len(ids) - len(second)
    assert not mask[second_at:, first_at:second_at].any()
    assert mask[second_at:, :first_at].all()
    assert mask[second_at:, second_at:].tril().diagonal().all()

    world = [config.bos_token_id, 7] + image + first + [config.separator_token_id] + random_image(config, rng)
    world_mask = build_action_attention_mask(torch.tensor([world]), config)[0, 0] == 0
    assert torch.equal(world_mask, torch.ones_like(world_mask).tril())


def action_sample(processor, frames, actions):
    sample = processor.build_action_sample("put the bowl on the plate", list(processor.encode_images(frames)), actions)
    return torch.tensor([sample["input_ids"]])


def test_earlier_block_does_not_change_later_logits(small_worldvla, frames):
    model, processor = small_worldvla
    config = model.config
    rng = np.random.default_rng(3)
    actions = rng.uniform(-0.9, 0.9, (config.action_chunk_size, 7))
    changed = actions.copy()
    changed[1] = -actions[1]
    input_ids, changed_ids = action_sample(processor, frames, actions), action_sample(processor, frames, changed)
    block = config.action_block_length
    second_block_end = int((input_ids[0] == config.action_start_token_id).nonzero()[1]) + block
    assert not torch.equal(input_ids, changed_ids)
    assert torch.equal(input_ids[0, second_block_end:], changed_ids[0, second_block_end:])

    with torch.no_grad():
        logits = model(input_ids).logits
        changed_logits = model(changed_ids).logits
        torch.testing.assert_close(logits[0, second_block_end:-1], changed_logits[0, second_block_end:-1], rtol=0, atol=1e-6)

        causal_model = copy.deepcopy(model)
        causal_model.config.use_action_attention_mask = False
        causal = causal_model(input_ids).logits
        changed_causal = causal_model(changed_ids).logits
    assert (causal[0, second_block_end:-1] - changed_causal[0, second_block_end:-1]).abs().max() > 1e-3


def test_eager_and_sdpa_agree(small_worldvla, frames):
    model, processor = small_worldvla
    samples = [
        processor.build_action_sample("open the drawer", list(processor.encode_images(frames)), np.zeros((5, 7))),
        processor.build_world_model_sample(list(processor.encode_images(frames[:1])), np.zeros((1, 7))),
    ]
    batch = processor.pad(samples)
    eager = copy.deepcopy(model)
    eager.config._attn_implementation = "eager"
    sdpa = copy.deepcopy(model)
    sdpa.config._attn_implementation = "sdpa"
    with torch.no_grad():
        eager_logits = eager(batch["input_ids"], batch["attention_mask"]).logits
        sdpa_logits = sdpa(batch["input_ids"], batch["attention_mask"]).logits
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(eager_logits[real], sdpa_logits[real], rtol=1e-5, atol=1e-5)


def test_mask_of_a_long_padded_batch_follows_the_rule(small_worldvla):
    """4 sequences of up to 2,000 tokens (images, text, actions, right padding of different lengths): sampled rows
    of every sequence, the last rows included, equal the token-by-token rule."""
    config = small_worldvla[0].config
    rng = random.Random(5)
    ids, real = [], []
    for length in (2000, 1700, 1990, 1200):
        sequence = random_image(config, rng) + [config.separator_token_id]
        while len(sequence) < length:
            sequence += random_action(config, rng) if rng.random() < 0.8 else random_image(config, rng)
        sequence = sequence[:length] + [config.pad_token_id] * (2000 - length)
        ids.append(sequence)
        real.append([1] * length + [0] * (2000 - length))
    mask = build_action_attention_mask(torch.tensor(ids), config, attention_mask=torch.tensor(real))
    assert mask.shape == (4, 1, 2000, 2000)
    for row in range(4):
        rows = sorted(set(rng.sample(range(2000), 40)) | {0, 1999})
        expected = reference_allowed(ids[row], real[row], config, rows)
        np.testing.assert_array_equal((mask[row, 0, rows] == 0).numpy(), expected[rows])