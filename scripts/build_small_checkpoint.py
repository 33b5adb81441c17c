"""Build a small, randomly initialised WorldVLA checkpoint (model + processor) for tests, benchmarks and
training from scratch.

It uses the compact token layout (`WorldVLAConfig.compact_token_layout`), a byte-level BPE text tokenizer
trained on LIBERO's instructions (`assets/libero_instructions.txt`) and a small random VQGAN with the real
architecture (16x downsampling) and few channels, or, with `--processor`, the text tokenizer and trained VQ of
a processor folder (e.g. `train_vq.py`'s `processor/`), whose image size and codebook then set the layout.

    python scripts/build_small_checkpoint.py --output-dir runs/small-worldvla --image-size 64
    python scripts/build_small_checkpoint.py --output-dir runs/init --processor runs/vq/processor --layers 4 --hidden-size 256

The folder's `config.json` is what `train.py --from-scratch-config ... --processor <folder>` takes.
"""

import argparse
import logging
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from configuration_worldvla import WorldVLAConfig, WorldVLAVQConfig  # noqa: E402
from modeling_worldvla import WorldVLAForConditionalGeneration, WorldVLAVQModel  # noqa: E402
from processing_worldvla import WorldVLAProcessor, build_text_tokenizer, vq_fingerprint  # noqa: E402
from worldvla_cli import HelpFormatter  # noqa: E402

INSTRUCTIONS_FILE = ROOT / "assets" / "libero_instructions.txt"
logger = logging.getLogger(__name__)


def build_small_worldvla(
    image_size=64,
    hidden_size=64,
    intermediate_size=None,
    num_hidden_layers=2,
    num_attention_heads=4,
    action_chunk_size=5,
    history_frames=2,
    text_vocab_size=512,
    codebook_size=256,
    vq_channels=16,
    max_position_embeddings=None,
    seed=0,
    processor=None,
    **config_kwargs,
):
    """(model, processor) of a small random WorldVLA, deterministic for a given seed; with `processor`, its
    text tokenizer, VQ (and so image size and codebook) and action statistics instead of random ones."""
    torch.manual_seed(seed)
    if processor is None:
        instructions = INSTRUCTIONS_FILE.read_text().splitlines()
        tokenizer = build_text_tokenizer(instructions, vocab_size=text_vocab_size)
        vq_config = WorldVLAVQConfig(
            num_embeddings=codebook_size,
            embed_dim=8,
            latent_channels=8,
            base_channels=vq_channels,
            channel_multiplier=[1, 1, 2, 2, 4],
            num_res_blocks=1,
            norm_num_groups=4,
        )
        vq_model = WorldVLAVQModel(vq_config).eval()
        statistics, default_key = None, None
    else:
        tokenizer, vq_model = processor.tokenizer, processor.vq_model
        vq_config = vq_model.config
        image_size, codebook_size = processor.layout["image_size"], vq_config.num_embeddings
        statistics, default_key = processor.action_statistics, processor.default_unnorm_key
    layout = WorldVLAConfig.compact_token_layout(len(tokenizer), codebook_size)
    grid = image_size // vq_config.downsample_factor
    image_tokens = 3 + grid * (grid + 1) + 1
    if max_position_embeddings is None:
        # Room for the longest sample: history frames plus a chunk, or a world-model pair and its answer.
        cameras = 2 if config_kwargs.get("wrist_camera") else 1
        max_position_embeddings = 64 + (history_frames * cameras + 1) * image_tokens + (action_chunk_size + 1) * 9
    config = WorldVLAConfig(
        **layout,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 2 * hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        image_size=image_size,
        image_patch_size=vq_config.downsample_factor,
        action_chunk_size=action_chunk_size,
        history_frames=history_frames,
        max_position_embeddings=max_position_embeddings,
        **config_kwargs,
    )
    config.vq_fingerprint = vq_fingerprint(vq_model)
    model = WorldVLAForConditionalGeneration(config).eval()
    if statistics is None:
        processor = WorldVLAProcessor.from_config(config, tokenizer, vq_model)
    else:
        processor = WorldVLAProcessor.from_config(config, tokenizer, vq_model, statistics, default_key)
    processor.check_compatible(config, check_weights=True)
    return model, processor


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--processor", default=None, help="processor folder whose text tokenizer, VQ and action statistics to use")
    parser.add_argument("--image-size", type=int, default=64, help="frame side (random VQ only; --processor sets it)")
    parser.add_argument("--codebook-size", type=int, default=256, help="codes of the random VQ (--processor sets it)")
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--intermediate-size", type=int, default=None, help="MLP width (default: 2 x hidden)")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--chunk-size", type=int, default=5, help="actions per chunk (K)")
    parser.add_argument("--history-frames", type=int, default=2, help="frames the policy sees (M)")
    parser.add_argument("--wrist-camera", action="store_true", help="each history step shows the wrist camera's frame too")
    parser.add_argument("--causal-action-mask", action="store_true",
                        help="use_action_attention_mask=False: a chunk's actions see the earlier ones (the paper's ablation)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    processor = None
    if args.processor is not None:
        if not Path(args.processor).is_dir():
            parser.error(f"--processor {args.processor}: no such folder")
        processor = WorldVLAProcessor.from_pretrained(args.processor)
    model, processor = build_small_worldvla(
        image_size=args.image_size,
        hidden_size=args.hidden_size,
        intermediate_size=args.intermediate_size,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        action_chunk_size=args.chunk_size,
        history_frames=args.history_frames,
        codebook_size=args.codebook_size,
        seed=args.seed,
        processor=processor,
        wrist_camera=args.wrist_camera,
        use_action_attention_mask=not args.causal_action_mask,
    )
    os.makedirs(args.output_dir, exist_ok=True)
    model.save_pretrained(args.output_dir)
    processor.save_pretrained(args.output_dir)
    logger.info("saved a %.2fM-parameter WorldVLA to %s", model.num_parameters() / 1e6, args.output_dir)


if __name__ == "__main__":
    main()
