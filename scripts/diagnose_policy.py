"""Open-loop diagnosis of a trained WorldVLA policy on its own demonstrations: why does it fail in closed loop?

    python scripts/diagnose_policy.py --model runs/spatial64/train/model --data-dir data/libero_spatial_64 \\
        --val-split episodes --output runs/spatial64/diagnosis.json

For evenly spread steps of training and held-out demos, the model decodes a chunk from the recorded frames
(greedy, as in closed loop), and the chunk is compared with the expert's next K actions: the share of exact
bins and the L1 of the un-normalised actions, per position in the chunk. Three variants on the same prompts:
as trained (history frames, action attention mask), one frame only, and without the action mask (the same
weights, the causal mask, decoded token by token). Prints a table; writes JSON with `--output`.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import worldvla_data  # noqa: E402
from processing_worldvla import history_indices  # noqa: E402
from worldvla_cli import HelpFormatter  # noqa: E402

VARIANTS = {
    "as trained": {"one_frame": False, "action_mask": True},
    "one frame": {"one_frame": True, "action_mask": True},
    "no action mask": {"one_frame": False, "action_mask": False},
}


def chosen_steps(episodes, chunk_size, count):
    """(episode, t) pairs evenly spread over every step that has a full chunk after it."""
    steps = [(episode, t) for episode in episodes for t in range(len(episode.actions) - chunk_size + 1)]
    if not steps:
        return []
    return [steps[i] for i in np.linspace(0, len(steps) - 1, min(count, len(steps))).round().astype(int)]


@torch.no_grad()
def decode_chunks(model, processor, steps, one_frame, action_mask, batch_size):
    config = model.config
    previous_mask = config.use_action_attention_mask
    config.use_action_attention_mask = action_mask
    try:
        tokens = []
        for start in range(0, len(steps), batch_size):
            samples = []
            for episode, t in steps[start : start + batch_size]:
                frames = [t] if one_frame else list(history_indices(t, config.history_frames))
                samples.append(processor.build_action_sample(episode.instruction, list(episode.codes[frames])))
            batch = processor.pad(samples)
            decoding = "parallel" if action_mask else "sequential"
            tokens.append(model.generate_action_tokens(batch["input_ids"], batch["attention_mask"], decoding=decoding).numpy())
        return np.concatenate(tokens)
    finally:
        config.use_action_attention_mask = previous_mask


def compare(processor, steps, tokens, chunk_size):
    truth = np.stack([episode.expert_actions[t : t + chunk_size] for episode, t in steps])  # (N, K, D)
    true_bins = processor.action_tokenizer.encode(truth)
    predicted = processor.decode_actions(tokens)
    l1 = np.abs(predicted - truth)
    return {
        "prompts": len(steps),
        "bin_accuracy": float((tokens == true_bins).mean()),
        "action_l1": float(l1.mean()),
        "action_l1_by_position": l1.mean(axis=(0, 2)).round(5).tolist(),
        "gripper_sign_accuracy": float((np.sign(predicted[..., -1]) == np.sign(truth[..., -1])).mean()),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--model", required=True, help="a WorldVLA checkpoint folder")
    parser.add_argument("--data-dir", required=True, help="the LIBERO-format demos it was trained on")
    parser.add_argument("--cache-dir", default=None, help="the tokenised-episode cache (train.py's --data-cache-dir)")
    parser.add_argument("--val-split", choices=("release", "episodes"), default="episodes", help="the rule the training run held demos out with")
    parser.add_argument("--prompts", type=int, default=256, help="prompts per split")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--output", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM, AutoProcessor

    model = AutoModelForCausalLM.from_pretrained(args.model, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(args.model, trust_remote_code=True)
    episodes = worldvla_data.load_episodes(worldvla_data.tokenised_episodes(args.data_dir, processor, args.cache_dir))
    splits = worldvla_data.split_episodes([episode.task for episode in episodes], args.val_split)
    chunk = model.config.action_chunk_size
    results = {}
    for split in ("train", "val_ind", "val_ood"):
        members = [episode for episode, name in zip(episodes, splits) if name == split]
        steps = chosen_steps(members, chunk, args.prompts)
        if not steps:
            continue
        results[split] = {
            variant: compare(processor, steps, decode_chunks(model, processor, steps, batch_size=args.batch_size, **options), chunk)
            for variant, options in VARIANTS.items()
        }
    lines = ["| split | variant | exact bins | action L1 | L1 by chunk position | gripper sign |", "|---|---|---|---|---|---|"]
    for split, variants in results.items():
        for variant, r in variants.items():
            positions = " / ".join(f"{v:.3f}" for v in r["action_l1_by_position"])
            lines.append(f"| {split} | {variant} | {100 * r['bin_accuracy']:.1f}% | {r['action_l1']:.4f} | {positions} | {100 * r['gripper_sign_accuracy']:.1f}% |")
    table = "\n".join(lines)
    print(table)
    if args.output:
        Path(args.output).write_text(json.dumps({"model": args.model, "data_dir": args.data_dir, "results": results}, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
