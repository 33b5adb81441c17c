"""How often parallel and sequential chunk decoding give the same action bins, per dtype and attention kernel.

    python bench/decode_agreement.py                                   # small random models
    python bench/decode_agreement.py --model checkpoints/worldvla-libero-spatial-64 --prompts 32

Under the action mask the two decoders compute the same function; they differ only in the order of floating-point
work (one cached prefill and K-token steps against token-by-token steps), so in float32 they agree exactly and
in bfloat16 a bin whose two best logits are closer than bf16's rounding can flip. Prints, for each setting, the
share of identical bins over all prompts and the worst prompt.
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts.build_small_checkpoint import build_small_worldvla  # noqa: E402
from worldvla_cli import HelpFormatter  # noqa: E402


def prompts_for(processor, count, seed):
    rng = np.random.default_rng(seed)
    size = processor.token_layout.image_size
    words = ["pick up the black bowl", "open the drawer", "put the cream cheese in the bowl", "turn on the stove"]
    prompts = []
    for index in range(count):
        frames = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(1 + index % 2)]
        prompts.append(processor(text=words[index % len(words)], images=frames))
    return prompts


def agreement(model, prompts):
    shares = []
    for inputs in prompts:
        parallel = model.generate_action_tokens(**inputs.to(model.device), decoding="parallel")
        sequential = model.generate_action_tokens(**inputs.to(model.device), decoding="sequential")
        shares.append(float((parallel == sequential).float().mean()))
    return float(np.mean(shares)), float(np.min(shares))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--model", default=None, help="a checkpoint folder (default: random small models)")
    parser.add_argument("--seeds", type=int, default=4, help="random models (without --model)")
    parser.add_argument("--prompts", type=int, default=16, help="prompts per model")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.model:
        from transformers import AutoModelForCausalLM, AutoProcessor

        processor = AutoProcessor.from_pretrained(args.model, trust_remote_code=True)
        models = [(AutoModelForCausalLM.from_pretrained(args.model, trust_remote_code=True).eval(), processor)]
    else:
        models = [build_small_worldvla(hidden_size=128, num_hidden_layers=4, seed=seed) for seed in range(args.seeds)]
    print(f"{'dtype':<9} {'attention':<9} {'identical bins':>15} {'worst prompt':>13}")
    for dtype in (torch.float32, torch.bfloat16):
        for attention in ("eager", "sdpa"):
            results = []
            for index, (model, processor) in enumerate(models):
                model = model.to(dtype)
                model.set_attn_implementation(attention)
                results.append(agreement(model, prompts_for(processor, args.prompts, index)))
            mean, worst = np.mean([r[0] for r in results]), min(r[1] for r in results)
            print(f"{str(dtype).removeprefix('torch.'):<9} {attention:<9} {100 * mean:>14.2f}% {100 * worst:>12.2f}%")
        for model, _ in models:
            model.to(torch.float32)


if __name__ == "__main__":
    main()
