"""Benchmark: world-model frame generation (image + action -> next frame's tokens), and where its time goes.

On a small WorldVLA (default: 4 layers, hidden 256, 256-px frames = 276 image tokens, an 8,192-code VQ vocabulary;
`scripts/build_small_checkpoint.py`'s builder) with world-model prompts of one frame and one action, measures:
  * frames/s of `model.generate_image_tokens` (greedy, what `eval_world_model.py` calls) at batch 1 and batch N;
  * the share of each step's overheads: the grammar logits processor (`ImageTokensLogitsProcessor`, a full-vocabulary
    -inf tensor per step), rebuilding the new token's action-mask row from the full sequence
    (`build_action_attention_mask(last_rows=1)`), measured alone over a frame's 276 steps;
  * a hand-written greedy loop over the same modules (the KV cache, an additive causal mask row, the language-model
    head on the code rows only, structure tokens written without a forward's argmax): what `generate` costs on top;
  * `generate` with a static KV cache (`cache_implementation="static"`, passed through `generate_image_tokens`): no
    per-step concatenation of the cache (the form torch.compile / CUDA graphs need on a GPU);
  * the same loop with the forced structure tokens fed together with the next token (the frame header in the
    prefill, each row end with the next row's first code): one forward pass per code, 256 instead of 276.
The hand-written loops are checked to produce the same tokens as `generate_image_tokens`. Nothing in the model file
is changed: the loops are suggestions, measured.

    python bench/world_model.py                      # a table
    python bench/world_model.py --json               # one JSON line
    python bench/world_model.py --batch-sizes 1,8 --threads 1
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from transformers import DynamicCache

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from modeling_worldvla import ImageTokensLogitsProcessor, additive_mask, build_action_attention_mask  # noqa: E402
from scripts.build_small_checkpoint import build_small_worldvla  # noqa: E402
from worldvla_cli import HelpFormatter  # noqa: E402


def min_seconds(function, repeats, warmup=1):
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def world_model_prompts(processor, batch, seed):
    rng = np.random.default_rng(seed)
    grid = processor.layout["image_size"] // processor.layout["image_patch_size"]
    codes = [torch.from_numpy(rng.integers(0, processor.layout["image_codebook_size"], (grid, grid))) for _ in range(batch)]
    actions = rng.uniform(-0.5, 0.5, (batch, 7))
    return processor.build_world_model_inputs_from_codes(codes, actions)


def frame_template(config):
    """Token ids of one frame, None where a VQ code goes: [start][grid][grid] (codes, row end) x rows [end]."""
    grid, grid_token = config.image_grid_size, config.image_grid_token_id(config.image_size)
    row = [None] * grid + [config.image_row_end_token_id]
    return [config.image_start_token_id, grid_token, grid_token] + row * grid + [config.image_end_token_id]


def decoder_hidden_states(model, tokens, mask, positions, cache):
    """The decoder's last hidden states for new tokens over a DynamicCache (filled in place)."""
    kwargs = dict(input_ids=tokens, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True)
    try:
        output = model.model(**kwargs, return_dict=True)
    except TypeError:  # a decoder without `return_dict` returns (hidden states, cache)
        output = model.model(**kwargs)
    return output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]


@torch.no_grad()
def manual_greedy(model, input_ids, fuse_forced):
    """Greedy frame tokens (B, image_sequence_length) with the model's modules and no `generate`.

    World-model sequences are plainly causal (their one action block precedes the last image) and unpadded (every
    prompt has the same length), so the mask rows of new tokens are causal over the cache and themselves.
    """
    config = model.config
    first_code = config.image_token_offset
    code_head = model.lm_head.weight[first_code : first_code + config.image_codebook_size]
    batch = input_ids.shape[0]
    cache = DynamicCache(config=config)
    past = 0

    def forward(new_tokens):
        nonlocal past
        queries = new_tokens.shape[1]
        if past == 0:
            hidden = decoder_hidden_states(model, new_tokens, torch.ones_like(new_tokens), None, cache)
        else:
            keys = torch.arange(past + queries)
            allowed = (keys[None, :] <= past + torch.arange(queries)[:, None])[None].expand(batch, -1, -1)
            positions = (past + torch.arange(queries)).expand(batch, -1)
            hidden = decoder_hidden_states(model, new_tokens, additive_mask(allowed, model.dtype), positions, cache)
        past += queries
        return hidden[:, -1]

    generated, pending = [], input_ids
    for forced in frame_template(config):
        if forced is not None and fuse_forced:
            token = torch.full((batch, 1), forced, dtype=torch.long)
            pending = torch.cat([pending, token], dim=1)
        else:
            hidden = forward(pending)
            if forced is None:
                token = torch.nn.functional.linear(hidden, code_head).argmax(-1, keepdim=True) + first_code
            else:
                token = torch.full((batch, 1), forced, dtype=torch.long)
            pending = token
        generated.append(token)
    return torch.cat(generated, dim=1)


def overhead_seconds(model, input_ids, repeats):
    """(grammar processor, mask rows) seconds for one frame's 276 generation steps, measured alone."""
    config = model.config
    length = config.image_sequence_length
    sequence = torch.cat([input_ids, model.generate_image_tokens(input_ids)], dim=1)
    grammar = ImageTokensLogitsProcessor(config, input_ids.shape[1])
    scores = torch.randn(input_ids.shape[0], config.vocab_size)
    attention = torch.ones_like(sequence)

    def run_grammar():
        for step in range(length):
            grammar(sequence[:, : input_ids.shape[1] + step], scores)

    def run_mask_rows():
        for step in range(length):
            prefix = input_ids.shape[1] + step + 1
            build_action_attention_mask(sequence[:, :prefix], config, attention[:, :prefix], model.dtype, last_rows=1)

    full = build_action_attention_mask(sequence, config)
    causal = torch.ones(sequence.shape[1], sequence.shape[1]).tril().bool()
    assert torch.equal(full[:, 0] == 0, causal.expand_as(full[:, 0])), "world-model sequences should be plainly causal"
    return min_seconds(run_grammar, repeats), min_seconds(run_mask_rows, repeats)


def bench_batch(model, processor, batch, repeats, seed):
    inputs = world_model_prompts(processor, batch, seed)
    input_ids, attention_mask = inputs["input_ids"], inputs["attention_mask"]
    reference = model.generate_image_tokens(input_ids, attention_mask)
    result = {
        "batch": batch,
        "prompt_tokens": int(input_ids.shape[1]),
        "image_tokens": int(reference.shape[1]),
        "padding": int((attention_mask == 0).sum()),
        "identical_manual": bool(torch.equal(manual_greedy(model, input_ids, fuse_forced=False), reference)),
        "identical_fused": bool(torch.equal(manual_greedy(model, input_ids, fuse_forced=True), reference)),
        "identical_static": bool(torch.equal(
            model.generate_image_tokens(input_ids, attention_mask, cache_implementation="static"), reference
        )),
    }

    def prefill():
        with torch.no_grad():
            decoder_hidden_states(model, input_ids, attention_mask, None, DynamicCache(config=model.config))

    # The variants run in turn within each repeat, and the best time is kept: on a machine shared with other work,
    # the minimum is the least disturbed measurement (the medians are reported too).
    variants = {
        "prefill": prefill,
        "generate": lambda: model.generate_image_tokens(input_ids, attention_mask),
        "static": lambda: model.generate_image_tokens(input_ids, attention_mask, cache_implementation="static"),
        "manual": lambda: manual_greedy(model, input_ids, False),
        "fused": lambda: manual_greedy(model, input_ids, True),
    }
    times = {name: [] for name in variants}
    for repeat in range(repeats + 1):
        for name, function in variants.items():
            start = time.perf_counter()
            function()
            if repeat:  # the first round warms up
                times[name].append(time.perf_counter() - start)
    for name, values in times.items():
        result[f"{name}_s"] = min(values)
        result[f"{name}_median_s"] = statistics.median(values)
    result["grammar_s"], result["mask_rows_s"] = overhead_seconds(model, input_ids, repeats)
    result["frames_per_s"] = batch / result["generate_s"]
    result["frames_per_s_static"] = batch / result["static_s"]
    result["frames_per_s_manual"] = batch / result["manual_s"]
    result["frames_per_s_fused"] = batch / result["fused_s"]
    result["grammar_fraction"] = result["grammar_s"] / result["generate_s"]
    result["mask_rows_fraction"] = result["mask_rows_s"] / result["generate_s"]
    result["generate_overhead_fraction"] = 1 - result["manual_s"] / result["generate_s"]
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON line instead of a table")
    parser.add_argument("--batch-sizes", default="1,4", help="comma-separated batch sizes")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--codebook-size", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="use 1 when other work keeps the cores busy")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, processor = build_small_worldvla(
        image_size=args.image_size, hidden_size=args.hidden_size, num_hidden_layers=args.layers, num_attention_heads=4,
        codebook_size=args.codebook_size, seed=args.seed,
    )
    batches = [int(b) for b in args.batch_sizes.split(",")]
    runs = [bench_batch(model, processor, batch, args.repeats, args.seed) for batch in batches]
    summary = {
        "model": {"layers": args.layers, "hidden": args.hidden_size, "image_size": args.image_size,
                  "codebook": args.codebook_size, "vocab": model.config.vocab_size,
                  "parameters_m": round(model.num_parameters() / 1e6, 2)},
        "threads": args.threads,
        "device": "cpu",
        "runs": runs,
        "batch_speedup": runs[-1]["frames_per_s"] / runs[0]["frames_per_s"],
    }
    if args.json:
        print(json.dumps(summary))
        return
    m = summary["model"]
    print(
        f"model: {m['layers']} x {m['hidden']}, {m['parameters_m']}M parameters, vocab {m['vocab']}, {m['image_size']}-px "
        f"frames ({runs[0]['image_tokens']} tokens), prompt {runs[0]['prompt_tokens']} tokens; {args.threads} thread(s), "
        f"best of {args.repeats} (interleaved)"
    )
    print(f"{'batch':>5} {'prefill ms':>10} {'generate s':>10} {'frames/s':>8} {'static fr/s':>11} {'manual fr/s':>11} "
          f"{'fused fr/s':>10} {'grammar':>7} {'mask rows':>9} {'generate overhead':>17} {'identical':>9}")
    for run in runs:
        identical = run["identical_manual"] and run["identical_fused"] and run["identical_static"]
        print(
            f"{run['batch']:>5} {run['prefill_s'] * 1e3:>10.1f} {run['generate_s']:>10.2f} {run['frames_per_s']:>8.2f} "
            f"{run['frames_per_s_static']:>11.2f} {run['frames_per_s_manual']:>11.2f} {run['frames_per_s_fused']:>10.2f} "
            f"{run['grammar_fraction']:>7.1%} {run['mask_rows_fraction']:>9.1%} {run['generate_overhead_fraction']:>17.1%} "
            f"{str(identical):>9}"
        )
    print(f"batch {runs[-1]['batch']} vs batch {runs[0]['batch']}: {summary['batch_speedup']:.2f}x frames/s")


if __name__ == "__main__":
    main()
