"""Benchmark: three ways to decode the K x 7 action-bin tokens of one prompt (greedy, batch 1).

  parallel    `model.generate_action_tokens(..., decoding="parallel")`: one prefill of the prompt, then 7 forward
              passes of K tokens (the K action blocks side by side at their sequential positions).
  sequential  `decoding="sequential"`: `generate`, one token per step, the mask rows of the new token only.
  release     the authors' release procedure, rewritten here from its description: one token per step over a KV
              cache; at every step the full 4-D mask of the whole sequence so far is rebuilt with
              `build_action_attention_mask` and only its last row is used; the prefill computes the logits of
              every prompt position (no `logits_to_keep`). Forced tokens ([action start], [action end]) go through
              the same grammar as the project's (`ActionChunkLogitsProcessor`), so the three decode the same thing.

All three must give identical tokens: checked before timing and in every round; a difference stops the run with
an AssertionError. On random small WorldVLAs (layers x hidden: `--sizes`, default 4x256 and 8x512; 256-px frames,
an 8,192-code VQ vocabulary, a prompt of two frames: 589 tokens), at K = 5 and 10 (`--chunks`), the methods are
timed in interleaved rounds (parallel, sequential, release, parallel, ...), so that a change of machine load hits
all three alike. Reported:
  * per method, the median over rounds of the end-to-end time, of its prefill and of its decode phase;
  * per ratio (release / parallel, sequential / parallel), the median and the spread (min-max and the quartiles)
    of the ratios of each round, end to end and of the decode phase.
The phases of a call are split inside that call: the prefill ends when the prompt's forward through the decoder
stack returns (and, where the method computes them, the logits of that forward); the decode phase is the rest
of the call. A round's decode ratio uses only times measured in that round.
Also: building the action mask of a full action sample against one forward of that sample, and the share of the
release procedure's time spent rebuilding masks.

    python bench/decode.py                                            # a table
    python bench/decode.py --threads 1 --rounds 2 --sizes 4x256 --chunks 5
    python bench/decode.py --json                                     # one JSON line
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from modeling_worldvla import ActionChunkLogitsProcessor, build_action_attention_mask  # noqa: E402
from scripts.build_small_checkpoint import build_small_worldvla  # noqa: E402
from worldvla_cli import HelpFormatter  # noqa: E402

INSTRUCTION = "pick up the black bowl between the plate and the ramekin and place it on the plate"
METHODS = ("parallel", "sequential", "release")
RATIOS = {"release/parallel": ("release", "parallel"), "sequential/parallel": ("sequential", "parallel")}


@torch.no_grad()
def release_procedure_tokens(model, input_ids, timings=None):
    """Greedy action-bin tokens (1, K, action_dim) of one prompt (1, P), decoded as the release does.

    One token per forward pass over a KV cache. Before every pass the full additive mask (1, 1, L, L) of the
    sequence so far is rebuilt from scratch; the prefill uses all of it, a step only its last row. The prefill's
    logits cover every prompt position. `timings`, a dict, receives the seconds spent building masks
    ("mask_s").
    """
    if input_ids.ndim != 2 or input_ids.shape[0] != 1:
        raise ValueError(f"the release procedure decodes one prompt (1, P), got {tuple(input_ids.shape)}")
    config = model.config
    new_tokens = config.action_chunk_size * config.action_block_length
    grammar = ActionChunkLogitsProcessor(config, input_ids.shape[1])
    cache = DynamicCache(config=config)
    sequence, step_input, mask_seconds = input_ids, input_ids, 0.0
    for _ in range(new_tokens):
        started = time.perf_counter()
        full_mask = build_action_attention_mask(sequence, config, dtype=model.dtype)
        mask = full_mask[:, :, -step_input.shape[1] :, :]
        mask_seconds += time.perf_counter() - started
        logits = model(step_input, attention_mask=mask, past_key_values=cache, use_cache=True).logits
        scores = grammar(sequence, logits[:, -1, :].float())
        step_input = scores.argmax(-1, keepdim=True)
        sequence = torch.cat([sequence, step_input], dim=-1)
    if timings is not None:
        timings["mask_s"] = mask_seconds
    generated = sequence[:, input_ids.shape[1] :]
    return generated.view(1, config.action_chunk_size, config.action_block_length)[:, :, 1:-1]


class PhaseClock:
    """Time stamps of the forwards of the decoder stack ("body") and of the head ("head") during one call."""

    def __init__(self, model):
        self.events = []
        self.synchronize = torch.cuda.synchronize if model.device.type == "cuda" else (lambda: None)
        self.handles = [
            model.model.register_forward_hook(lambda *_: self._record("body")),
            model.lm_head.register_forward_hook(lambda *_: self._record("head")),
        ]

    def _record(self, kind):
        self.synchronize()
        self.events.append((kind, time.perf_counter()))

    def prefill_end(self):
        """End of the prompt's forward (the first through the stack), or of its logits when they come next."""
        kinds = [kind for kind, _ in self.events]
        first = kinds.index("body")
        if first + 1 < len(kinds) and kinds[first + 1] == "head":
            first += 1
        return self.events[first][1]

    def remove(self):
        for handle in self.handles:
            handle.remove()


def build_setting(layers, hidden, chunk, seed):
    """A random WorldVLA (256-px frames, 8,192 codes) and the ids (1, P) of a two-frame action prompt."""
    model, processor = build_small_worldvla(
        image_size=256, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=max(1, hidden // 64),
        codebook_size=8192, action_chunk_size=chunk, seed=seed,
    )
    rng = np.random.default_rng(seed)
    grid = processor.token_layout.image_grid_size
    codes = [torch.from_numpy(rng.integers(0, 8192, (grid, grid))) for _ in range(2)]
    prompt = processor.build_action_sample(INSTRUCTION, codes)["input_ids"]
    return model, processor, codes, torch.tensor([prompt])


def check_identical(tokens, reference, name, layers, hidden, chunk):
    if not torch.equal(tokens, reference):
        differ = int((tokens != reference).sum()) if tokens.shape == reference.shape else "all"
        raise AssertionError(
            f"{layers}x{hidden}, K={chunk}: {name} decoding gave other tokens than parallel decoding "
            f"({differ} of {reference.numel()} bins differ)"
        )


def spread(values):
    values = np.asarray(values, dtype=np.float64)
    q1, median, q3 = np.percentile(values, [25, 50, 75])
    return {
        "median": float(median), "min": float(values.min()), "max": float(values.max()), "q1": float(q1), "q3": float(q3)
    }


def bench_setting(layers, hidden, chunk, rounds, seed, device):
    model, processor, codes, input_ids = build_setting(layers, hidden, chunk, seed)
    model.to(device)
    input_ids = input_ids.to(device)
    attention_mask = torch.ones_like(input_ids)
    release_timings = {}
    calls = {
        "parallel": lambda: model.generate_action_tokens(input_ids, attention_mask, decoding="parallel"),
        "sequential": lambda: model.generate_action_tokens(input_ids, attention_mask, decoding="sequential"),
        "release": lambda: release_procedure_tokens(model, input_ids, release_timings),
    }
    reference = calls["parallel"]()  # also the warm-up of every method
    for name in METHODS[1:]:
        check_identical(calls[name](), reference, name, layers, hidden, chunk)

    clock = PhaseClock(model)
    times = {name: {"total_s": [], "prefill_s": [], "decode_s": []} for name in METHODS}
    mask_share = []
    try:
        for _ in range(rounds):
            for name in METHODS:
                clock.events.clear()
                clock.synchronize()
                start = time.perf_counter()
                tokens = calls[name]()
                clock.synchronize()
                end = time.perf_counter()
                prefill = clock.prefill_end() - start
                times[name]["total_s"].append(end - start)
                times[name]["prefill_s"].append(prefill)
                times[name]["decode_s"].append(end - start - prefill)
                check_identical(tokens, reference, name, layers, hidden, chunk)
                if name == "release":
                    mask_share.append(release_timings["mask_s"] / (end - start))
    finally:
        clock.remove()

    result = {
        "layers": layers,
        "hidden": hidden,
        "chunk": chunk,
        "prompt_tokens": int(input_ids.shape[1]),
        "identical": True,  # checked for every call above
        "median_s": {
            name: {part: statistics.median(values) for part, values in parts.items()} for name, parts in times.items()
        },
        "ratio": {},
        "decode_ratio": {},
        "release_mask_share": statistics.median(mask_share),
    }
    for label, (numerator, denominator) in RATIOS.items():
        for key, part in (("ratio", "total_s"), ("decode_ratio", "decode_s")):
            per_round = [a / b for a, b in zip(times[numerator][part], times[denominator][part])]
            result[key][label] = spread(per_round)

    # The mask of a full action sample (prompt, K blocks, separator) against one forward of that sample.
    sample = processor.build_action_sample(INSTRUCTION, codes, np.zeros((chunk, 7)))
    sample_ids = torch.tensor([sample["input_ids"]], device=device)
    mask_times, forward_times = [], []
    with torch.no_grad():
        for _ in range(max(2, min(rounds, 3))):
            start = time.perf_counter()
            build_action_attention_mask(sample_ids, model.config)
            clock.synchronize()
            middle = time.perf_counter()
            model(sample_ids)
            clock.synchronize()
            mask_times.append(middle - start)
            forward_times.append(time.perf_counter() - middle)
    result["mask_build_s"] = min(mask_times)
    result["forward_s"] = min(forward_times)
    result["mask_build_fraction"] = result["mask_build_s"] / result["forward_s"]
    return result


def parse_size(text):
    try:
        layers, hidden = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a size is LAYERSxHIDDEN, e.g. 4x256, got {text!r}") from None
    if layers < 1 or hidden < 64 or hidden % 64:
        raise argparse.ArgumentTypeError(f"size {text!r}: at least 1 layer and a hidden size that is a multiple of 64")
    return layers, hidden


def parse_list(item):
    return lambda text: [item(part) for part in text.split(",") if part]


def summary_line(runs, threads, rounds, device):
    """The one JSON line: ratios per setting (flat keys) and every run's details."""
    summary = {"identical": all(run["identical"] for run in runs), "threads": threads, "rounds": rounds, "device": device}
    for run in runs:
        tag = f"{run['layers']}x{run['hidden']}_k{run['chunk']}"
        for label in RATIOS:
            name = label.replace("/", "_over_")
            summary[f"{name}_{tag}"] = run["ratio"][label]["median"]
            summary[f"decode_{name}_{tag}"] = run["decode_ratio"][label]["median"]
    summary["mask_build_fraction"] = max(run["mask_build_fraction"] for run in runs)
    summary["runs"] = runs
    return json.dumps(summary)


def print_table(runs, threads, rounds, device):
    print(
        f"{device}, {threads} thread(s), {rounds} interleaved rounds; prompt of two 256-px frames "
        f"({runs[0]['prompt_tokens']} tokens); medians in ms"
    )
    header = f"{'model':>6} {'K':>3}"
    for name in METHODS:
        header += f" | {name + ' total':>16} {'prefill':>8} {'decode':>8}"
    print(header + f" | {'identical':>9}")
    for run in runs:
        line = f"{run['layers']}x{run['hidden']:<4} {run['chunk']:>3}"
        for name in METHODS:
            parts = run["median_s"][name]
            line += f" | {parts['total_s'] * 1e3:>16.1f} {parts['prefill_s'] * 1e3:>8.1f} {parts['decode_s'] * 1e3:>8.1f}"
        print(line + f" | {str(run['identical']):>9}")
    print()
    print("ratios of each round: median [min-max] (quartiles)")
    print(f"{'model':>6} {'K':>3} {'ratio':>20} {'end to end':>34} {'decode phase':>34}")
    for run in runs:
        for label in RATIOS:
            cells = []
            for key in ("ratio", "decode_ratio"):
                s = run[key][label]
                cells.append(f"{s['median']:.2f}x [{s['min']:.2f}-{s['max']:.2f}] ({s['q1']:.2f}-{s['q3']:.2f})")
            print(f"{run['layers']}x{run['hidden']:<4} {run['chunk']:>3} {label:>20} {cells[0]:>34} {cells[1]:>34}")
    print()
    for run in runs:
        print(
            f"{run['layers']}x{run['hidden']} K={run['chunk']}: action mask of a full sample "
            f"{run['mask_build_s'] * 1e3:.2f} ms "
            f"= {run['mask_build_fraction']:.1%} of one forward of it ({run['forward_s'] * 1e3:.1f} ms); "
            f"the release procedure spends {run['release_mask_share']:.1%} of its time rebuilding masks"
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument(
        "--sizes", type=parse_list(parse_size), default=[(4, 256), (8, 512)], help="LAYERSxHIDDEN,... (default 4x256,8x512)"
    )
    parser.add_argument("--chunks", type=parse_list(int), default=[5, 10], help="chunk sizes K (default 5,10)")
    parser.add_argument("--rounds", "--repeats", type=int, default=7, help="interleaved timing rounds (default 7)")
    parser.add_argument(
        "--threads", type=int, default=torch.get_num_threads(),
        help="torch threads (default: torch's); use 1 when other work keeps the cores busy",
    )
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON line instead of a table")
    args = parser.parse_args()
    if args.rounds < 1 or not args.sizes or not args.chunks or min(args.chunks) < 1:
        parser.error("--rounds, --sizes and --chunks need at least one round, one size and chunks >= 1")
    torch.set_num_threads(args.threads)
    runs = [
        bench_setting(layers, hidden, chunk, args.rounds, args.seed, args.device)
        for layers, hidden in args.sizes
        for chunk in args.chunks
    ]
    if args.json:
        print(summary_line(runs, args.threads, args.rounds, args.device))
    else:
        print_table(runs, args.threads, args.rounds, args.device)


if __name__ == "__main__":
    main()
