"""Train WorldVLA's image tokenizer (the VQGAN, `WorldVLAVQModel`) on the third-person frames of LIBERO demos.

    python train_vq.py --data-dir data/libero_spatial_64 --output-dir runs/vq64 --max-steps 12000
    accelerate launch --num_processes 2 train_vq.py ...        # several processes (DDP; CUDA when present)

The defaults are the configuration chosen for the project's small WorldVLA and measured on a 2-core CPU:
64-px frames, 8x downsampling (8 x 8 codes a frame), 512 codes, base width 32. Outputs in --output-dir:

    checkpoint-N/      resumable state (VQ weights, codebook averages, optimizer); a rerun resumes the last one
    processor/         the trained VQ inside a processor folder (text tokenizer + VQ + LIBERO action bounds),
                       taken as is by `train.py --from-scratch-config ... --processor` and
                       `scripts/build_small_checkpoint.py --processor`
    eval/              metrics.json and results.md on held-out demos (PSNR, SSIM x100, codebook use,
                       perplexity), reconstructions.png (originals above reconstructions), psnr_curve.png

Held-out frames are those of the last 10% of the demos of each file (--heldout-fraction), never trained on.
Training is the VQGAN objective of `worldvla_vq_training`: L1 + L2 reconstruction, commitment, EMA codebook
with dead-code restarts; optionally a perceptual loss from local LPIPS weights and a patch discriminator.
"""

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path

from worldvla_cli import HelpFormatter, configure_logging
from worldvla_results import publish_folder, staging_folder

logger = logging.getLogger("train_vq")
# Settings that must not change when a run is resumed (the rest, e.g. --max-steps, may).
FIXED_SETTINGS = (
    "image_size", "downsample", "codebook_size", "base_channels", "embed_dim", "num_res_blocks", "batch_size",
    "seed", "heldout_fraction", "gan_weight", "discriminator_channels", "lpips_weight",
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--data-dir", action="append", required=True, help="folder of LIBERO-format .hdf5 files; repeat for several")
    data.add_argument("--output-dir", required=True, help="checkpoints, the processor folder and the evaluation")
    data.add_argument("--heldout-fraction", type=float, default=0.1, help="last fraction of each file's demos held out for evaluation")
    data.add_argument("--hflip", action="store_true", help="random horizontal flips (off: LIBERO scenes are not mirror-symmetric)")
    model = parser.add_argument_group("tokenizer")
    model.add_argument("--image-size", type=int, default=64, help="frame side in pixels (frames stored at another size are resized)")
    model.add_argument("--downsample", type=int, choices=(8, 16), default=8, help="pixels per code along a side")
    model.add_argument("--codebook-size", type=int, default=512, help="number of codes")
    model.add_argument("--base-channels", type=int, default=32, help="width of the first level (widths x1, x2, x2, x4)")
    model.add_argument("--embed-dim", type=int, default=64, help="size of a codebook vector (and of the latent)")
    model.add_argument("--num-res-blocks", type=int, default=2, help="residual blocks per encoder level")
    optimisation = parser.add_argument_group("training")
    optimisation.add_argument("--max-steps", type=int, default=12000, help="optimizer steps")
    optimisation.add_argument("--batch-size", type=int, default=16, help="frames per step and process")
    optimisation.add_argument("--learning-rate", type=float, default=4e-4, help="peak AdamW learning rate")
    optimisation.add_argument("--warmup-steps", type=int, default=200, help="linear warm-up steps")
    optimisation.add_argument("--min-lr-ratio", type=float, default=0.1, help="cosine decay ends at this fraction of the peak")
    optimisation.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping (0: none)")
    optimisation.add_argument("--l1-weight", type=float, default=1.0, help="weight of the L1 reconstruction loss")
    optimisation.add_argument("--l2-weight", type=float, default=1.0, help="weight of the squared-error reconstruction loss")
    optimisation.add_argument("--commitment-weight", type=float, default=0.25, help="beta of |z - sg(e)|^2")
    optimisation.add_argument("--ema-decay", type=float, default=0.99, help="decay of the codebook's moving averages")
    optimisation.add_argument("--restart-every", type=int, default=50, help="steps between dead-code restarts (0: never)")
    optimisation.add_argument("--dead-code-threshold", type=float, default=0.03, help="a code whose average uses per step fall below this is restarted")
    optimisation.add_argument("--lpips-weights", default=None, help="local LPIPS-VGG weights for a perceptual loss (never downloaded)")
    optimisation.add_argument("--lpips-weight", type=float, default=0.0, help="weight of the perceptual loss (needs --lpips-weights)")
    optimisation.add_argument("--gan-weight", type=float, default=0.0, help="weight of the patch discriminator's hinge loss (0: no discriminator)")
    optimisation.add_argument("--gan-start-step", type=int, default=4000, help="discriminator warm-up: no adversarial loss before this step")
    optimisation.add_argument("--discriminator-channels", type=int, default=64, help="width of the discriminator's first layer")
    optimisation.add_argument("--seed", type=int, default=0, help="seed of the initialisation, the batches and the restarts")
    run = parser.add_argument_group("run")
    run.add_argument("--eval-every", type=int, default=500, help="steps between held-out evaluations")
    run.add_argument("--eval-frames", type=int, default=512, help="held-out frames evaluated during training (evenly spread)")
    run.add_argument("--final-eval-frames", type=int, default=4096, help="held-out frames of the final evaluation (evenly spread)")
    run.add_argument("--save-every", type=int, default=500, help="steps between checkpoints (the last two are kept)")
    run.add_argument("--logging-steps", type=int, default=50, help="steps between logged loss averages")
    run.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: CUDA when present")
    run.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    run.add_argument("--push-to-hub", action="store_true", help="upload the processor folder at the end")
    run.add_argument("--hub-model-id", default=None, help="repo id for --push-to-hub (default: the output folder's name)")
    run.add_argument("--hub-token", default=None, help="token for --push-to-hub (default: the logged-in one)")
    args = parser.parse_args(argv)
    for path in args.data_dir:
        if not Path(path).is_dir():
            parser.error(f"--data-dir {path}: no such folder")
        if not any(Path(path).glob("*.hdf5")):
            parser.error(f"--data-dir {path}: no .hdf5 files in it")
    if args.image_size % args.downsample:
        parser.error(f"--image-size {args.image_size} is not divisible by --downsample {args.downsample}")
    if args.lpips_weight > 0 and not args.lpips_weights:
        parser.error("--lpips-weight needs --lpips-weights (a local file: nothing is downloaded)")
    if not 0 <= args.heldout_fraction < 1:
        parser.error("--heldout-fraction must be in [0, 1)")
    return args


def check_resumable_settings(output_dir, args):
    """Records the run's settings on the first run; a rerun with other fixed settings is an error naming them."""
    from worldvla_results import write_json_atomically

    settings_file = Path(output_dir) / "train_vq_args.json"
    current = {name: getattr(args, name) for name in FIXED_SETTINGS}
    if settings_file.is_file():
        recorded = json.loads(settings_file.read_text())
        different = {name: (recorded.get(name), value) for name, value in current.items() if recorded.get(name) != value}
        if different:
            raise SystemExit(
                f"{output_dir} holds a run with other settings {different} (recorded, given): use another "
                "--output-dir or the recorded values"
            )
    else:
        write_json_atomically(settings_file, current)


def evenly_spread(frames, count):
    import numpy as np

    if len(frames) <= count:
        return frames
    return frames[np.linspace(0, len(frames) - 1, count).round().astype(int)]


def plot_psnr_curve(evaluations, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 3.2), dpi=120)
    minutes = [record["elapsed_s"] / 60 for record in evaluations]
    axis.plot(minutes, [record["psnr"] for record in evaluations], marker="o", markersize=3)
    axis.set_xlabel("training time (minutes)")
    axis.set_ylabel("held-out PSNR (dB)")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def write_evaluation(output_dir, model, heldout, state, args):
    from PIL import Image

    import worldvla_vq_training as vq_training
    from worldvla_results import write_json_atomically

    eval_dir = Path(output_dir) / "eval"
    eval_dir.mkdir(parents=True, exist_ok=True)
    final = vq_training.evaluate_reconstruction(model, evenly_spread(heldout, args.final_eval_frames))
    metrics = {
        "final": final,
        "steps": state["step"],
        "training_time_s": round(state["elapsed_s"], 1),
        "curve": state["evaluations"],
        "settings": {name: getattr(args, name) for name in FIXED_SETTINGS},
    }
    write_json_atomically(eval_dir / "metrics.json", metrics)
    table = [
        "| frames | PSNR (dB) | SSIM x100 | codebook use | perplexity | steps | training time |",
        "|---|---|---|---|---|---|---|",
        f"| {final['frames']} | {final['psnr']:.2f} | {final['ssim']:.2f} | {100 * final['codebook_usage']:.1f}% of "
        f"{model.config.num_embeddings} | {final['perplexity']:.1f} | {state['step']} | {state['elapsed_s'] / 60:.1f} min |",
    ]
    (eval_dir / "results.md").write_text("# Image tokenizer on held-out frames\n\n" + "\n".join(table) + "\n")
    grid = vq_training.reconstruction_grid(model, evenly_spread(heldout, 16))
    Image.fromarray(grid).save(eval_dir / "reconstructions.png")
    if state["evaluations"]:
        plot_psnr_curve(state["evaluations"], eval_dir / "psnr_curve.png")
    print("\n".join(table))
    return metrics


def main(argv=None):
    args = parse_args(argv)
    configure_logging()
    import torch
    from accelerate import Accelerator

    import worldvla_vq_training as vq_training
    from modeling_worldvla import WorldVLAVQModel

    if args.threads:
        torch.set_num_threads(args.threads)
    use_cpu = args.device == "cpu" or (args.device == "auto" and not torch.cuda.is_available())
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available here")
    accelerator = Accelerator(cpu=use_cpu)
    output_dir = Path(args.output_dir)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        check_resumable_settings(output_dir, args)
    accelerator.wait_for_everyone()

    train_frames, heldout, files = vq_training.load_frames(args.data_dir, args.image_size, args.heldout_fraction)
    logger.info("%d training frames, %d held-out frames from %d files", len(train_frames), len(heldout), len(files))
    if not len(heldout):
        logger.warning("no held-out frames (--heldout-fraction 0 or one demo per file): evaluating on training frames")
        heldout = train_frames
    torch.manual_seed(args.seed)
    config = vq_training.build_vq_config(args.image_size, args.downsample, args.codebook_size, args.base_channels, args.embed_dim, args.num_res_blocks)
    model = WorldVLAVQModel(config)
    lpips = None
    if args.lpips_weights:
        import worldvla_metrics

        lpips = worldvla_metrics.load_lpips(args.lpips_weights).to(accelerator.device)
    state = vq_training.train(args, accelerator, train_frames, evenly_spread(heldout, args.eval_frames), model, lpips)

    if accelerator.is_main_process:
        model = model.cpu().eval()
        processor = vq_training.build_processor(model, args.image_size)
        final = output_dir / "processor"
        staging = staging_folder(final)
        if staging.exists():
            shutil.rmtree(staging)
        processor.save_pretrained(staging)
        publish_folder(staging, final)
        logger.info("saved the processor with the trained tokenizer to %s", final)
        write_evaluation(output_dir, model, heldout, state, args)
        if args.push_to_hub:
            from huggingface_hub import HfApi

            api = HfApi(token=args.hub_token)
            repo_id = args.hub_model_id or output_dir.name
            api.create_repo(repo_id, exist_ok=True)
            api.upload_folder(repo_id=repo_id, folder_path=str(final), commit_message="Upload WorldVLA image tokenizer trained with train_vq.py")
            logger.info("pushed %s to %s", final, repo_id)


if __name__ == "__main__":
    sys.exit(main())
