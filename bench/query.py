"""Benchmark: where the time of one policy query goes, part by part.

A query is one `WorldVLAPolicy.select_action(frame, instruction)` call whose action queue is empty, so that it
predicts a chunk, in the steady state of an episode: the policy keeps the VQ codes of the frames it has seen, so
each query encodes only its new frame and reuses the previous one's codes (two-frame history). The real policy
code runs; its parts are timed from the outside (wrappers on the processor's methods and on
`generate_action_tokens`, hooks on the decoder stack), in the same call:

  VQ encode    `processor.encode_images` of the new frame (pixel scaling, VQGAN encoder, quantiser);
  prompt       `processor.build_action_sample` (instruction tokens, image codes to ids, layout);
  prefill      the prompt's forward through the decoder stack into a fresh KV cache (its action-mask build
               is shown apart as "of which: mask");
  decode       the rest of `generate_action_tokens` after the prefill: the decoding steps, their forwards of the
               decoder stack ("of which: forwards") and of the language-model head ("of which: head",
               `model.action_bin_logits`: the logits of the action bins), the masks, checks and argmax;
  unnormalise  `processor.decode_actions` (bins to continuous actions);
  rest         the query's total minus the parts above, all measured in that call: frame and instruction checks,
               history bookkeeping, tensors of the prompt, the checks in `generate_action_tokens` before the
               prefill, the action queue: Python overhead.

Two settings (`--settings`): "shipped", the checkpoint `checkpoints/worldvla-libero-spatial-64` (64-px frames, 8x8
codes, loaded with `WorldVLAPolicy.from_pretrained`), and "256px", a 256-px frame through a real-size VQGAN
(`WorldVLAVQModel` with the release's default config, random weights: 16x16 codes) in front of a random model of
4 layers x hidden 256 (K = 5). Medians over `--rounds` queries after one warm-up episode step; a part's share is
its median over the median total.

    python bench/query.py                       # a table
    python bench/query.py --threads 1 --rounds 2 --settings shipped
    python bench/query.py --json                # one JSON line
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from transformers.utils import logging as transformers_logging

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from configuration_worldvla import WorldVLAVQConfig  # noqa: E402
from modeling_worldvla import WorldVLAVQModel  # noqa: E402
from policy_worldvla import WorldVLAPolicy  # noqa: E402
from processing_worldvla import WorldVLAProcessor, vq_fingerprint  # noqa: E402
from scripts.build_small_checkpoint import build_small_worldvla  # noqa: E402
from worldvla_cli import HelpFormatter  # noqa: E402

SHIPPED = ROOT / "checkpoints" / "worldvla-libero-spatial-64"
SHIPPED_FRAME = ROOT / "tests" / "data" / "libero_spatial_task0_state0.png"
INSTRUCTION = "pick up the black bowl between the plate and the ramekin and place it on the plate"
PARTS = ("vq_encode", "prompt", "prefill", "decode", "unnormalise", "rest")
LABELS = {
    "vq_encode": "VQ encode", "prompt": "prompt", "prefill": "prefill", "prefill_mask": "  of which: mask",
    "decode": "decode", "decode_forwards": "  of which: forwards", "decode_head": "  of which: head",
    "unnormalise": "unnormalise", "rest": "rest (Python)",
    "total": "total",
}


class QueryClock:
    """Times the parts of the policy's queries: `start()` before a query, `parts(total)` after it."""

    def __init__(self, policy):
        model, processor = policy.model, policy.processor
        self.synchronize = torch.cuda.synchronize if model.device.type == "cuda" else (lambda: None)
        self._restore = []
        self._wrap(processor, "encode_images", "vq_encode", count_frames=True)
        self._wrap(processor, "build_action_sample", "prompt")
        self._wrap(processor, "decode_actions", "unnormalise")
        self._wrap(model, "generate_action_tokens", "generate")
        self._wrap(model, "action_bin_logits", "head")
        # The prompt's action mask is built inside the decoder stack's forward, by the module-level function.
        self._wrap(sys.modules[type(model.model).__module__], "build_action_attention_mask", "mask")
        self._handles = [
            model.model.register_forward_pre_hook(lambda *_: self._stamp("forward_start")),
            model.model.register_forward_hook(lambda *_: self._stamp("forward_end")),
        ]
        self.start()

    def _stamp(self, kind):
        self.synchronize()
        self.events.append((kind, time.perf_counter()))

    def _wrap(self, owner, name, part, count_frames=False):
        original = getattr(owner, name)
        had_own = name in vars(owner)

        def timed(*args, **kwargs):
            self._stamp(part + "_start")
            output = original(*args, **kwargs)
            self._stamp(part + "_end")
            if count_frames:
                self.frames_encoded += len(args[0])
            return output

        setattr(owner, name, timed)
        self._restore.append((owner, name, original if had_own else None))

    def start(self):
        self.events, self.frames_encoded = [], 0

    def _intervals(self, part):
        starts = [stamp for kind, stamp in self.events if kind == part + "_start"]
        ends = [stamp for kind, stamp in self.events if kind == part + "_end"]
        return list(zip(starts, ends))

    def parts(self, total):
        """{part: seconds} of the query just made (with the details and the total); rest = total - parts."""
        forwards = self._intervals("forward")
        generate = self._intervals("generate")
        if not forwards or len(generate) != 1:
            raise RuntimeError("the call made no query (its action queue was not empty)")
        (prefill_start, prefill_end), (_, generate_end) = forwards[0], generate[0]
        masks = self._intervals("mask")

        def seconds(part):
            return sum(end - start for start, end in self._intervals(part))

        parts = {
            "vq_encode": seconds("vq_encode"),
            "prompt": seconds("prompt"),
            "prefill": prefill_end - prefill_start,
            "prefill_mask": sum(end - start for start, end in masks if prefill_start <= start and end <= prefill_end),
            # The rest of generate_action_tokens once the prefill returned; its input checks before the prefill
            # are left in the rest.
            "decode": generate_end - prefill_end,
            "decode_forwards": sum(end - start for start, end in forwards[1:]),
            "decode_head": sum(end - start for start, end in self._intervals("head") if start >= prefill_end),
            "unnormalise": seconds("unnormalise"),
        }
        parts["rest"] = total - sum(parts[name] for name in PARTS if name != "rest")
        parts["total"] = total
        return parts

    def remove(self):
        for handle in self._handles:
            handle.remove()
        for owner, name, original in reversed(self._restore):
            if original is None:
                delattr(owner, name)
            else:
                setattr(owner, name, original)


def shipped_setting(device):
    from PIL import Image

    policy = WorldVLAPolicy.from_pretrained(str(SHIPPED), device=device)
    frame = np.asarray(Image.open(SHIPPED_FRAME).convert("RGB"))
    return policy, frame, f"shipped {policy.image_size} px"


def real_vq_setting(device, seed):
    """A 256-px frame, a real-size random VQGAN (16x16 codes) and a random 4 x 256 model (K = 5)."""
    model, processor = build_small_worldvla(
        image_size=256, hidden_size=256, num_hidden_layers=4, num_attention_heads=4, codebook_size=8192, seed=seed
    )
    torch.manual_seed(seed)
    vq_model = WorldVLAVQModel(WorldVLAVQConfig()).eval()
    processor = WorldVLAProcessor.from_config(model.config, processor.tokenizer, vq_model)
    model.config.vq_fingerprint = vq_fingerprint(vq_model)
    processor.vq_model.to(device)
    policy = WorldVLAPolicy(model.to(device), processor)
    frame = np.random.default_rng(seed).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    return policy, frame, "256 px, real-size VQGAN"


def bench_setting(name, rounds, device, seed):
    policy, frame, title = shipped_setting(device) if name == "shipped" else real_vq_setting(device, seed)
    config = policy.model.config
    policy.reset()
    policy.select_action(frame, INSTRUCTION)  # the first step of an episode: one frame, and the warm-up
    clock = QueryClock(policy)
    measured, frames_encoded = [], set()
    try:
        for _ in range(rounds):
            policy._action_queue.clear()  # every timed call makes a query
            clock.start()
            clock.synchronize()
            start = time.perf_counter()
            policy.select_action(frame, INSTRUCTION)
            clock.synchronize()
            measured.append(clock.parts(time.perf_counter() - start))
            frames_encoded.add(clock.frames_encoded)
    finally:
        clock.remove()
    median = {part: statistics.median(parts[part] for parts in measured) for part in measured[0]}
    return {
        "setting": name,
        "title": title,
        "image_size": int(config.image_size),
        "model": f"{config.num_hidden_layers}x{config.hidden_size}",
        "chunk": int(config.action_chunk_size),
        "decoding": policy.decoding,
        "prompt_tokens": len(policy.processor.build_action_sample(INSTRUCTION, policy.history_codes())["input_ids"]),
        "frames_encoded_per_query": sorted(frames_encoded),
        "median_s": median,
        "share": {part: median[part] / median["total"] for part in median},
        "rounds": [{part: value for part, value in parts.items()} for parts in measured],
    }


def print_table(runs, threads, rounds, device):
    print(f"one policy query, steady state; {device}, {threads} thread(s), median of {rounds} queries")
    for run in runs:
        print(
            f"  {run['setting']}: {run['title']}, model {run['model']}, K = {run['chunk']}, {run['decoding']} decoding, "
            f"prompt {run['prompt_tokens']} tokens, frames encoded per query {run['frames_encoded_per_query']}"
        )
    header = f"{'part':<22}" + "".join(f" | {run['setting'] + ' ms':>14} {'%':>6}" for run in runs)
    print(header)
    for part in (
        "vq_encode", "prompt", "prefill", "prefill_mask", "decode", "decode_forwards", "decode_head", "unnormalise",
        "rest", "total",
    ):
        line = f"{LABELS[part]:<22}"
        for run in runs:
            line += f" | {run['median_s'][part] * 1e3:>14.2f} {run['share'][part]:>6.1%}"
        print(line)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--settings", default="shipped,256px", help="comma-separated: shipped, 256px (default both)")
    parser.add_argument("--rounds", "--repeats", type=int, default=5, help="timed queries per setting (default 5)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads (default: torch's)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON line instead of a table")
    args = parser.parse_args()
    settings = [name for name in args.settings.split(",") if name]
    unknown = sorted(set(settings) - {"shipped", "256px"})
    if unknown or not settings:
        parser.error(f"--settings takes shipped and/or 256px, got {args.settings!r}")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    torch.set_num_threads(args.threads)
    transformers_logging.disable_progress_bar()  # the weight-loading bars
    runs = [bench_setting(name, args.rounds, args.device, args.seed) for name in settings]
    if args.json:
        print(json.dumps({"threads": args.threads, "rounds": args.rounds, "device": args.device, "runs": runs}))
    else:
        print_table(runs, args.threads, args.rounds, args.device)


if __name__ == "__main__":
    main()
