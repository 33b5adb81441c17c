"""The release-procedure baseline of bench/decode.py decodes the same tokens as the project's decoders."""

import numpy as np
import pytest
import torch

from scripts.build_small_checkpoint import build_small_worldvla

@pytest.mark.parametrize("chunk, frames", [(5, 2), (10, 1)])
def test_release_procedure_equals_parallel_decoding(bench_module, chunk, frames):
    bench = bench_module("decode")
    model, processor = build_small_worldvla(seed=chunk, action_chunk_size=chunk)
    rng = np.random.default_rng(chunk)
    images = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(frames)]
    inputs = processor(text="open the middle drawer of the cabinet", images=images)
    timings = {}
    release = bench.release_procedure_tokens(model, inputs["input_ids"], timings)
    parallel = model.generate_action_tokens(**inputs, decoding="parallel")
    assert release.shape == (1, chunk, 7)
    assert torch.equal(release, parallel)
    assert timings["mask_s"] > 0
    layout = model.config.token_layout
    assert bool(layout.is_action_bin(release).all())


def test_release_procedure_takes_one_prompt(bench_module, small_worldvla):
    bench = bench_module("decode")
    model, _ = small_worldvla
    with pytest.raises(ValueError, match="one prompt"):
        bench.release_procedure_tokens(model, torch.zeros((2, 8), dtype=torch.long))
