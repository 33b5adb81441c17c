"""Open-loop diagnosis of a trained WorldVLA policy on its own demonstrations: why does it fail in closed loop?

    python scripts/diagnose_policy.py --model runs/spatial64/train/model --data-dir data/libero_spatial_64 \\
        --val-split episodes --output runs/spatial64/diagnosis.json

For evenly spread steps of training and held-out demos, the model decodes a chunk from the recorded frames
(greedy, as in closed loop), and the chunk is compared with the expert's next K actions: the share of exact
bins and the L1 of the un-normalised actions, per position in the chunk. Three variants on the same prompts:
as trained (history frames, action attention mask), one frame only, and without the action mask (the same
weights, the causal mask, decoded token by token). Prints a table; writes JSON with `--output`.

`--around-first-close W` adds the moment a pick-and-place policy most often gets wrong: the W steps before and
after the first step the expert commands the gripper closed, in every demo of each split. For each step the
model decodes a chunk from the recorded frames (as trained) and its first action is set beside the expert's:
per offset from that first close, how often the gripper is predicted closed (the expert: never before offset 0,
always from it), and the mean predicted and expert x, y, z commands. A policy that closes early on frames of the
hand still above the object shows it here, without the simulator and without compounding errors.
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import worldvla_data  # noqa: E402
from processing_worldvla import history_indices, prompt_frames, uses_wrist_camera  # noqa: E402
from worldvla_cli import HelpFormatter  # noqa: E402
from worldvla_results import write_json_atomically  # noqa: E402

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
                steps_seen = [t] if one_frame else list(history_indices(t, config.history_frames))
                wrist = episode.wrist_codes[steps_seen] if uses_wrist_camera(config) else None
                samples.append(processor.build_action_sample(episode.instruction, prompt_frames(episode.codes[steps_seen], wrist)))
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


def first_close(episode):
    """The first step the expert commands the gripper closed, or None."""
    closed = np.flatnonzero(episode.expert_actions[:, -1] > 0)
    return int(closed[0]) if closed.size else None


def around_first_close(model, processor, episodes, window, batch_size):
    """Per offset from each demo's first close: the share of first actions predicted closed, and the mean
    predicted and expert position commands (x, y, z)."""
    chunk = model.config.action_chunk_size
    steps, offsets = [], []
    for episode in episodes:
        close = first_close(episode)
        if close is None:
            continue
        for t in range(max(0, close - window), min(len(episode.actions) - chunk, close + window) + 1):
            steps.append((episode, t))
            offsets.append(t - close)
    if not steps:
        return []
    tokens = decode_chunks(model, processor, steps, one_frame=False, action_mask=True, batch_size=batch_size)
    predicted = processor.decode_actions(tokens)[:, 0]
    truth = np.stack([episode.expert_actions[t] for episode, t in steps])
    offsets = np.asarray(offsets)
    rows = []
    for offset in range(-window, window + 1):
        at = offsets == offset
        if not at.any():
            continue
        rows.append({
            "offset": offset,
            "prompts": int(at.sum()),
            "predicted_closed": float((predicted[at, -1] > 0).mean()),
            "expert_closed": float((truth[at, -1] > 0).mean()),
            "predicted_xyz": predicted[at, :3].mean(axis=0).round(3).tolist(),
            "expert_xyz": truth[at, :3].mean(axis=0).round(3).tolist(),
        })
    return rows


def first_close_table(results):
    lines = ["| split | offset from the first close | prompts | predicted closed | expert closed | predicted x, y, z | expert x, y, z |",
             "|---|---|---|---|---|---|---|"]
    for split, rows in results.items():
        for row in rows:
            predicted, expert = (", ".join(f"{v:+.2f}" for v in row[key]) for key in ("predicted_xyz", "expert_xyz"))
            lines.append(f"| {split} | {row['offset']:+d} | {row['prompts']} | {100 * row['predicted_closed']:.0f}% | "
                         f"{100 * row['expert_closed']:.0f}% | {predicted} | {expert} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--model", required=True, help="a WorldVLA checkpoint folder")
    parser.add_argument("--data-dir", required=True, help="the LIBERO-format demos it was trained on")
    parser.add_argument("--cache-dir", default=None, help="the tokenised-episode cache (train.py's --data-cache-dir)")
    parser.add_argument("--val-split", choices=("release", "episodes", "none"), default="episodes",
                        help="the rule the training run held demos out with ('none': one split, 'train', of every demo: demos the model never saw)")
    parser.add_argument("--prompts", type=int, default=256, help="prompts per split")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--around-first-close", type=int, default=0, metavar="W",
                        help="also compare the predicted and the expert gripper and motion W steps around each demo's first close")
    parser.add_argument("--action-bin-window", type=int, default=None,
                        help="the decoding's action_bin_window (default: the checkpoint's config)")
    parser.add_argument("--output", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.prompts < 0 or args.around_first_close < 0:
        parser.error("--prompts and --around-first-close take numbers of at least 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM, AutoProcessor

    overrides = {} if args.action_bin_window is None else {"action_bin_window": args.action_bin_window}
    model = AutoModelForCausalLM.from_pretrained(args.model, trust_remote_code=True, **overrides).eval()
    processor = AutoProcessor.from_pretrained(args.model, trust_remote_code=True)
    episodes = worldvla_data.load_episodes(
        worldvla_data.tokenised_episodes(args.data_dir, processor, args.cache_dir, wrist_camera=uses_wrist_camera(model.config))
    )
    splits = worldvla_data.split_episodes([episode.task for episode in episodes], args.val_split)
    chunk = model.config.action_chunk_size
    results, first_close_results = {}, {}
    for split in ("train", "val_ind", "val_ood"):
        members = [episode for episode, name in zip(episodes, splits) if name == split]
        if args.around_first_close and members:
            first_close_results[split] = around_first_close(model, processor, members, args.around_first_close, args.batch_size)
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
    if first_close_results:
        print("\nAround the first close (the first action of each decoded chunk):")
        print(first_close_table(first_close_results))
    report = {
        "model": args.model, "data_dir": args.data_dir, "val_split": args.val_split,
        "action_bin_window": getattr(model.config, "action_bin_window", 1), "results": results,
    }
    if first_close_results:
        report["around_first_close"] = first_close_results
    if args.output:
        write_json_atomically(args.output, report)
    return report


if __name__ == "__main__":
    main()
