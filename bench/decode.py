"""Benchmark: parallel vs sequential action decoding, and the cost of building the action mask.

On a small WorldVLA (4 layers, hidden 256, 256-px frames, an 8,192-code VQ vocabulary) with a prompt of
two 256-px frames, times `predict_action` with decoding="parallel" and "sequential" at K = 5 and K = 10:
  * end to end: `predict_action` from the processor's encoding (prefill, decoding, un-normalisation);
  * decode phase: end to end minus the prefill (one forward of the prompt into a fresh KV cache);
and the time to build the action mask of a full action sample against one forward of that sample.

    python bench/decode.py            # a table
    python bench/decode.py --json     # one JSON line
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

from modeling_worldvla import build_action_attention_mask  # noqa: E402
from scripts.build_small_checkpoint import build_small_worldvla  # noqa: E402


def median_seconds(function, repeats, warmup=1):
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_chunk(chunk, repeats, seed):
    model, processor = build_small_worldvla(
        image_size=256, hidden_size=256, num_hidden_layers=4, num_attention_heads=4, codebook_size=8192,
        action_chunk_size=chunk, seed=seed,
    )
    rng = np.random.default_rng(seed)
    frames = [rng.integers(0, 256, (256, 256, 3), dtype=np.uint8) for _ in range(2)]
    inputs = processor(text="pick up the black bowl between the plate and the ramekin and place it on the plate", images=frames)

    def prefill():
        with torch.no_grad():
            model.model(inputs["input_ids"], inputs["attention_mask"], past_key_values=DynamicCache(config=model.config), use_cache=True)

    parallel_tokens = model.generate_action_tokens(**inputs, decoding="parallel")
    sequential_tokens = model.generate_action_tokens(**inputs, decoding="sequential")
    result = {
        "prompt_tokens": int(inputs["input_ids"].shape[1]),
        "identical": bool(torch.equal(parallel_tokens, sequential_tokens)),
        "prefill_s": median_seconds(prefill, repeats),
    }
    for decoding in ("parallel", "sequential"):
        result[f"{decoding}_s"] = median_seconds(
            lambda decoding=decoding: model.predict_action(**inputs, processor=processor, decoding=decoding), repeats
        )
    result["speedup"] = result["sequential_s"] / result["parallel_s"]
    result["decode_speedup"] = (result["sequential_s"] - result["prefill_s"]) / (result["parallel_s"] - result["prefill_s"])

    sample = processor.build_action_sample("pick up the black bowl", list(processor.encode_images(frames)), np.zeros((chunk, 7)))
    input_ids = torch.tensor([sample["input_ids"]])
    result["mask_build_s"] = median_seconds(lambda: build_action_attention_mask(input_ids, model.config), repeats * 4)
    with torch.no_grad():
        result["forward_s"] = median_seconds(lambda: model(input_ids), repeats)
    result["mask_build_fraction"] = result["mask_build_s"] / result["forward_s"]
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON line instead of a table")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--threads", type=int, default=torch.get_num_threads(), help="use 1 when other work keeps the cores busy"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    runs = {chunk: bench_chunk(chunk, args.repeats, args.seed) for chunk in (5, 10)}
    summary = {
        "speedup_k5": runs[5]["speedup"],
        "speedup_k10": runs[10]["speedup"],
        "decode_speedup_k5": runs[5]["decode_speedup"],
        "decode_speedup_k10": runs[10]["decode_speedup"],
        "identical": runs[5]["identical"] and runs[10]["identical"],
        "mask_build_fraction": max(runs[5]["mask_build_fraction"], runs[10]["mask_build_fraction"]),
        "threads": args.threads,
        "device": "cpu",
        "runs": {f"k{chunk}": run for chunk, run in runs.items()},
    }
    if args.json:
        print(json.dumps(summary))
        return
    print(f"prompt: {runs[5]['prompt_tokens']} tokens (two 256-px frames), {args.threads} thread(s), median of {args.repeats}")
    print(f"{'K':>3} {'prefill ms':>10} {'parallel ms':>11} {'sequential ms':>13} {'speedup':>8} {'decode speedup':>14} {'identical':>9}")
    for chunk, run in runs.items():
        print(
            f"{chunk:>3} {run['prefill_s'] * 1e3:>10.1f} {run['parallel_s'] * 1e3:>11.1f} {run['sequential_s'] * 1e3:>13.1f} "
            f"{run['speedup']:>8.2f} {run['decode_speedup']:>14.2f} {str(run['identical']):>9}"
        )
    for chunk, run in runs.items():
        print(
            f"mask build K={chunk}: {run['mask_build_s'] * 1e3:.2f} ms vs one forward {run['forward_s'] * 1e3:.1f} ms "
            f"({run['mask_build_fraction']:.1%})"
        )


if __name__ == "__main__":
    main()
