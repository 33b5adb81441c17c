"""Training-step benchmark: samples/s, peak memory, and the share of a step spent building samples, collating and
building the attention mask.

A small random WorldVLA (scripts/build_small_checkpoint.py) trains on synthetic tokenised episodes (no HDF5, no VQ
encoding: that happens once, before training) with the recipe's AdamW and gradient clipping, one batch a step,
the samples drawn as the Trainer would (uniformly, mixed kinds). Memory: the CUDA allocator's peak on a GPU; on a
CPU, the process's peak resident set minus its size before the model was built.

    python bench/train.py --mode lora --steps 20 --json
"""

import argparse
import json
import logging
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from modeling_worldvla import build_action_attention_mask  # noqa: E402
from scripts.build_small_checkpoint import build_small_worldvla  # noqa: E402
from worldvla_data import Episode, WorldVLASamples  # noqa: E402
from worldvla_cli import HelpFormatter  # noqa: E402

logger = logging.getLogger("bench.train")


def resident_mb():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def synthetic_episodes(count, length, grid, codebook_size, seed=0):
    rng = np.random.default_rng(seed)
    return [
        Episode("task", f"demo_{i}", "put the bowl on the plate", rng.integers(0, codebook_size, (length, grid, grid)),
                rng.uniform(-0.9, 0.9, (length, 7)))
        for i in range(count)
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--mode", choices=["full", "lora"], default="full")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup-steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    rss_before = resident_mb()
    model, processor = build_small_worldvla(image_size=args.image_size, hidden_size=args.hidden_size, num_hidden_layers=args.layers)
    config = model.config
    if args.mode == "lora":
        from peft import LoraConfig, get_peft_model

        targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        model = get_peft_model(model, LoraConfig(r=args.lora_rank, lora_alpha=2 * args.lora_rank, target_modules=targets))
    model.to(device).train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=5e-6, betas=(0.9, 0.95), weight_decay=0.1)

    episodes = synthetic_episodes(16, 40, config.image_grid_size, config.image_codebook_size)
    samples = WorldVLASamples(episodes, processor, "libero", config.history_frames, config.action_chunk_size)
    order = np.random.default_rng(0).integers(0, len(samples), (args.warmup_steps + args.steps, args.batch_size))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    timings = {"build_and_collate": 0.0, "mask": 0.0, "step": 0.0}
    tokens = 0
    for step, indices in enumerate(order):
        started = time.perf_counter()
        batch = processor.pad([samples[int(i)] for i in indices]).to(device)
        collated = time.perf_counter()
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 4.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        finished = time.perf_counter()
        # The forward builds this mask itself; timed again alone to know its share of the step.
        build_action_attention_mask(batch["input_ids"], config, batch["attention_mask"])
        if device.type == "cuda":
            torch.cuda.synchronize()
        mask_time = time.perf_counter() - finished
        if step >= args.warmup_steps:
            timings["build_and_collate"] += collated - started
            timings["mask"] += mask_time
            timings["step"] += finished - started
            tokens += int(batch["attention_mask"].sum())

    measured = args.steps * args.batch_size
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss_before
    result = {
        "mode": args.mode,
        "device": device.type,
        "threads": args.threads,
        "parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
        "trainable_m": round(sum(p.numel() for p in trainable) / 1e6, 3),
        "batch_size": args.batch_size,
        "mean_tokens_per_sample": round(tokens / measured, 1),
        "samples_per_s": round(measured / timings["step"], 2),
        "step_ms": round(1000 * timings["step"] / args.steps, 2),
        "build_and_collate_share": round(timings["build_and_collate"] / timings["step"], 4),
        "mask_share": round(timings["mask"] / timings["step"], 4),
        "peak_memory_mb": round(peak_mb, 1),
    }
    if args.json:
        print(json.dumps(result))
    else:
        for name, value in result.items():
            logger.info("%-24s %s", name, value)


if __name__ == "__main__":
    main()
