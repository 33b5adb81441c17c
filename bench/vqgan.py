"""Benchmark: encode and decode time of the real-size Chameleon VQGAN (random weights) on one frame.

    python bench/vqgan.py [--size 256] [--threads 1] [--json]
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from configuration_worldvla import WorldVLAVQConfig  # noqa: E402
from modeling_worldvla import WorldVLAVQModel  # noqa: E402
from worldvla_cli import HelpFormatter  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = WorldVLAVQModel(WorldVLAVQConfig()).eval().to(args.device)
    pixel_values = torch.rand(1, 3, args.size, args.size, device=args.device) * 2 - 1

    def synchronize():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    encode_times, decode_times = [], []
    with torch.inference_mode():
        model.decode(model.encode(pixel_values))
        for _ in range(args.repeats):
            synchronize()
            start = time.perf_counter()
            codes = model.encode(pixel_values)
            synchronize()
            middle = time.perf_counter()
            model.decode(codes)
            synchronize()
            encode_times.append(middle - start)
            decode_times.append(time.perf_counter() - middle)
    result = {"size": args.size, "device": args.device, "threads": args.threads, "encode_s": min(encode_times), "decode_s": min(decode_times)}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"VQGAN {args.size}x{args.size} on {args.device} ({args.threads} threads): encode {result['encode_s']:.3f} s, decode {result['decode_s']:.3f} s (best of {args.repeats})")


if __name__ == "__main__":
    main()
