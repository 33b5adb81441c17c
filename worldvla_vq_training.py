"""Training WorldVLA's image tokenizer, `WorldVLAVQModel` (Chameleon's VQGAN architecture), on LIBERO frames.

    third-person frames of LIBERO-format HDF5 files, upright, at the model's image size (worldvla_data's rules)
      │ encoder -> quant_conv -> latents z (B, D, h, w)
      │ nearest codebook vector e (the inference quantizer's argmin), straight-through: z + sg(e - z)
      ▼ post_quant_conv -> decoder -> reconstruction
    loss = |x - x'|_1 + |x - x'|^2 + beta |z - sg(e)|^2  [+ w_lpips LPIPS] [+ w_gan hinge loss after warm-up]

The codebook learns by exponential moving averages of the latents assigned to each code (van den Oord et al.
2017, appendix; no codebook loss), is initialised from latents of the first batch, and codes whose average
use falls below a threshold are restarted on latents of the current batch, so that the codebook stays in use.
The trained weights have the same class and names as the released VQGAN: the processor, the converter and the
world model use them unchanged.

Everything random is drawn from generators seeded by (seed, step), so a run resumed from a checkpoint takes the
same batches, restarts and updates as an uninterrupted one.
"""

import json
import logging
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate.utils import broadcast
from safetensors.torch import load_file, save_file
from torch import nn

import worldvla_data
import worldvla_metrics
from configuration_worldvla import WorldVLAConfig, WorldVLAVQConfig
from modeling_worldvla import WorldVLAVQModel
from processing_worldvla import WorldVLAProcessor, build_text_tokenizer, images_to_pixel_values, pixel_values_to_images
from worldvla_results import publish_folder, staging_folder

logger = logging.getLogger(__name__)

INSTRUCTIONS_FILE = Path(__file__).resolve().parent / "assets" / "libero_instructions.txt"
CHECKPOINT_PREFIX = "checkpoint-"
TRAINING_STATE = "training_state.safetensors"
OPTIMIZER_STATE = "optimizer.pt"
TRAINER_STATE = "trainer_state.json"


class VQDataError(ValueError):
    """Frames that cannot be trained on; the message names the file."""


# ---------------------------------------------------------------------------------------------------------------------
# Frames
# ---------------------------------------------------------------------------------------------------------------------


def load_frames(data_dirs, image_size, heldout_fraction=0.1):
    """(train frames, held-out frames, description) from every task file of `data_dirs`.

    Frames are uint8 (N, image_size, image_size, 3), prepared as for the policy (`worldvla_data.read_libero_file`:
    no-op steps dropped, rotated upright, resized only when stored at another size). In each file the last
    ceil(heldout_fraction * demos) demos are held out: the tokenizer is evaluated on episodes it never saw.
    """
    train, heldout, files = [], [], []
    for data_dir in data_dirs:
        if not Path(data_dir).is_dir():
            raise VQDataError(f"--data-dir {data_dir} is not a folder")
        for path in worldvla_data.list_task_files(data_dir):
            try:
                episodes = [episode["frames"] for episode in worldvla_data.read_libero_file(path, image_size)]
            except OSError as error:
                raise VQDataError(f"{path}: not a readable HDF5 file ({error})") from error
            num_heldout = math.ceil(heldout_fraction * len(episodes)) if heldout_fraction > 0 else 0
            if num_heldout >= len(episodes) and heldout_fraction > 0:
                num_heldout = len(episodes) - 1  # a file with one demo still trains
            cut = len(episodes) - num_heldout
            train += [frames for frames in episodes[:cut] if len(frames)]
            heldout += [frames for frames in episodes[cut:] if len(frames)]
            files.append({"file": str(path), "train_demos": cut, "heldout_demos": num_heldout})
    if not train:
        raise VQDataError(f"no training frames in {', '.join(map(str, data_dirs))}")
    empty = np.zeros((0, image_size, image_size, 3), np.uint8)
    return np.concatenate(train), np.concatenate(heldout) if heldout else empty, files


# ---------------------------------------------------------------------------------------------------------------------
# Model pieces used in training
# ---------------------------------------------------------------------------------------------------------------------


def build_vq_config(image_size, downsample_factor, codebook_size, base_channels, embed_dim, num_res_blocks):
    """The release's VQGAN layout at another size: widths (1, 2, 2, 4, ...) x base, levels = log2(factor) + 1."""
    levels = int(math.log2(downsample_factor))
    if 2**levels != downsample_factor or levels < 1:
        raise ValueError(f"--downsample must be a power of two >= 2, got {downsample_factor}")
    multipliers = [1] + [2] * (levels - 1) + [4] if levels > 1 else [1, 4]
    multipliers = multipliers[: levels + 1]
    groups = math.gcd(32, base_channels)
    return WorldVLAVQConfig(
        num_embeddings=codebook_size,
        embed_dim=embed_dim,
        latent_channels=embed_dim,
        base_channels=base_channels,
        channel_multiplier=multipliers,
        num_res_blocks=num_res_blocks,
        resolution=image_size,
        norm_num_groups=groups,
    )


def quantize_straight_through(model, pixel_values):
    """(reconstruction, latents (B*h*w, D), codes (B, h, w), commitment loss) with straight-through gradients."""
    latents = model.quant_conv(model.encoder(pixel_values))  # (B, D, h, w)
    with torch.no_grad():
        codes = model.quantize(latents)
    quantized = model.quantize.embed_codes(codes)
    commitment = F.mse_loss(latents, quantized.detach())
    straight_through = latents + (quantized - latents).detach()
    reconstruction = model.decoder(model.post_quant_conv(straight_through))
    flat = latents.detach().permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
    return reconstruction, flat, codes, commitment


class StraightThroughVQ(nn.Module):
    """The training pass as a module, so that `accelerate` can wrap it (DDP averages gradients in its forward)."""

    def __init__(self, vq_model):
        super().__init__()
        self.vq_model = vq_model

    def forward(self, pixel_values):
        return quantize_straight_through(self.vq_model, pixel_values)


class EMACodebook:
    """Moving averages of each code's use and of the sum of its latents; the codebook is their ratio.

    `cluster_size` starts at one and `embed_sum` at the initial codebook, so a code that is never used keeps its
    vector instead of being divided by zero.
    """

    def __init__(self, embedding, decay, epsilon=1e-5):
        self.embedding = embedding  # nn.Embedding of the model, updated in place
        self.decay = decay
        self.epsilon = epsilon
        weight = embedding.weight.detach()
        self.cluster_size = torch.ones(weight.shape[0], device=weight.device)
        self.embed_sum = weight.clone()

    @torch.no_grad()
    def update(self, latents, codes, reduce=None):
        """One EMA step from this batch's latents (M, D) and their codes (M,); `reduce` sums over processes."""
        one_hot = F.one_hot(codes.flatten(), self.cluster_size.shape[0]).to(latents.dtype)
        counts, sums = one_hot.sum(0), one_hot.T @ latents
        if reduce is not None:
            counts, sums = reduce(counts), reduce(sums)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        total = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.epsilon) / (total + self.cluster_size.numel() * self.epsilon) * total
        self.embedding.weight.copy_(self.embed_sum / smoothed[:, None])

    @torch.no_grad()
    def restart(self, codes_to_restart, latents):
        """Put the given codes on the given latents (one each) with a fresh average of one use."""
        self.embedding.weight[codes_to_restart] = latents
        self.embed_sum[codes_to_restart] = latents
        self.cluster_size[codes_to_restart] = 1.0

    def dead_codes(self, threshold):
        return torch.nonzero(self.cluster_size < threshold).flatten()

    def state_dict(self):
        return {"ema_cluster_size": self.cluster_size, "ema_embed_sum": self.embed_sum}

    def load_state_dict(self, state):
        self.cluster_size.copy_(state["ema_cluster_size"])
        self.embed_sum.copy_(state["ema_embed_sum"])


class PatchDiscriminator(nn.Module):
    """PatchGAN discriminator (Isola et al. 2017, as taming's NLayerDiscriminator): one logit per patch."""

    def __init__(self, channels=64, num_layers=3):
        super().__init__()
        layers = [nn.Conv2d(3, channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        width = channels
        for layer in range(1, num_layers + 1):
            previous, width = width, channels * min(2**layer, 8)
            stride = 2 if layer < num_layers else 1
            layers += [nn.Conv2d(previous, width, 4, stride=stride, padding=1, bias=False), nn.GroupNorm(math.gcd(32, width), width), nn.LeakyReLU(0.2)]
        layers.append(nn.Conv2d(width, 1, 4, stride=1, padding=1))
        self.layers = nn.Sequential(*layers)

    def forward(self, pixel_values):
        return self.layers(pixel_values)


# ---------------------------------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def reconstruct(model, frames, batch_size=64):
    """uint8 frames (N, H, W, 3) -> (reconstructions uint8 (N, H, W, 3), codes (N, h, w)) with the inference path."""
    model.eval()
    reconstructions, all_codes = [], []
    for start in range(0, len(frames), batch_size):
        pixel_values = images_to_pixel_values(list(frames[start : start + batch_size])).to(model.device)
        codes = model.encode(pixel_values)
        reconstructions.append(pixel_values_to_images(model.decode(codes)))
        all_codes.append(codes.cpu())
    return np.concatenate(reconstructions), torch.cat(all_codes)


def codebook_usage(codes, codebook_size):
    """Fraction of the codebook used by `codes` and the perplexity of their distribution (codebook_size = uniform)."""
    counts = torch.bincount(torch.as_tensor(codes).flatten(), minlength=codebook_size).double()
    probabilities = counts / counts.sum()
    entropy = -(probabilities[probabilities > 0] * probabilities[probabilities > 0].log()).sum()
    return {"codebook_usage": float((counts > 0).double().mean()), "perplexity": float(entropy.exp())}


def evaluate_reconstruction(model, frames):
    """PSNR and SSIM (RynnVLA-002's settings, `worldvla_metrics`) and codebook use on `frames`."""
    reconstructions, codes = reconstruct(model, frames)
    return {
        "frames": int(len(frames)),
        "psnr": float(np.mean(worldvla_metrics.psnr(reconstructions, frames))),
        "ssim": float(np.mean(worldvla_metrics.ssim(reconstructions, frames))),
        **codebook_usage(codes, model.config.num_embeddings),
    }


def reconstruction_grid(model, frames, columns=8):
    """uint8 image: a row of originals above a row of their reconstructions, repeated."""
    reconstructions, _ = reconstruct(model, frames)
    rows = []
    for start in range(0, len(frames), columns):
        originals = list(frames[start : start + columns])
        rebuilt = list(reconstructions[start : start + columns])
        missing = columns - len(originals)
        blank = [np.full_like(frames[0], 255)] * missing
        rows += [np.concatenate(originals + blank, axis=1), np.concatenate(rebuilt + blank, axis=1)]
    return np.concatenate(rows, axis=0)


# ---------------------------------------------------------------------------------------------------------------------
# The processor that carries the trained tokenizer
# ---------------------------------------------------------------------------------------------------------------------


def build_processor(vq_model, image_size, n_action_bins=256):
    """A processor (text tokenizer trained on LIBERO's instructions + the VQ + LIBERO action bounds) with the
    compact token layout, ready for `train.py --from-scratch-config` and `scripts/build_small_checkpoint.py`."""
    tokenizer = build_text_tokenizer(INSTRUCTIONS_FILE.read_text().splitlines())
    layout = WorldVLAConfig.compact_token_layout(len(tokenizer), vq_model.config.num_embeddings, n_action_bins)
    layout.pop("vocab_size")
    layout.update(n_action_bins=n_action_bins, action_dim=7, image_size=image_size, image_patch_size=vq_model.config.downsample_factor)
    return WorldVLAProcessor(tokenizer, vq_model, layout)


# ---------------------------------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------------------------------


def list_checkpoints(output_dir):
    """Complete checkpoints, oldest first (a complete one has its trainer state: it is written last)."""
    found = []
    for path in Path(output_dir).glob(f"{CHECKPOINT_PREFIX}*"):
        suffix = path.name[len(CHECKPOINT_PREFIX) :]
        if not suffix.isdigit():
            continue
        if not (path / TRAINER_STATE).is_file():
            logger.warning("%s is incomplete (no %s): skipped", path, TRAINER_STATE)
            continue
        found.append((int(suffix), path))
    return [path for _, path in sorted(found)]


def save_checkpoint(output_dir, step, model, discriminator, optimizers, codebook, trainer_state, keep=2):
    final = Path(output_dir) / f"{CHECKPOINT_PREFIX}{step}"
    staging = staging_folder(final)
    if staging.exists():
        shutil.rmtree(staging)
    model.save_pretrained(staging / "vq")
    tensors = {name: value.detach().cpu().contiguous() for name, value in codebook.state_dict().items()}
    if discriminator is not None:
        tensors.update({f"discriminator.{k}": v.detach().cpu().contiguous() for k, v in discriminator.state_dict().items()})
    save_file(tensors, staging / TRAINING_STATE)
    torch.save({name: optimizer.state_dict() for name, optimizer in optimizers.items()}, staging / OPTIMIZER_STATE)
    (staging / TRAINER_STATE).write_text(json.dumps(trainer_state, indent=2))
    publish_folder(staging, final)
    for old in list_checkpoints(output_dir)[:-keep]:
        shutil.rmtree(old)
    return final


def load_checkpoint(path, model, discriminator, optimizers, codebook):
    """Restores a checkpoint written by `save_checkpoint`; returns its trainer state."""
    path = Path(path)
    trained = WorldVLAVQModel.from_pretrained(path / "vq")
    model.load_state_dict(trained.state_dict())
    tensors = load_file(path / TRAINING_STATE)
    codebook.load_state_dict({k: v.to(codebook.cluster_size.device) for k, v in tensors.items() if k.startswith("ema_")})
    if discriminator is not None:
        discriminator.load_state_dict({k.removeprefix("discriminator."): v for k, v in tensors.items() if k.startswith("discriminator.")})
    # Optimizer states are plain tensors and numbers: loaded without unpickling arbitrary objects.
    states = torch.load(path / OPTIMIZER_STATE, weights_only=True, map_location="cpu")
    for name, optimizer in optimizers.items():
        optimizer.load_state_dict(states[name])
    return json.loads((path / TRAINER_STATE).read_text())


# ---------------------------------------------------------------------------------------------------------------------
# Training loop
# ---------------------------------------------------------------------------------------------------------------------


def learning_rate_at(step, args):
    """Linear warm-up, then cosine decay to `min_lr_ratio` of the peak at `max_steps`."""
    if step < args.warmup_steps:
        return args.learning_rate * (step + 1) / args.warmup_steps
    progress = min(1.0, (step - args.warmup_steps) / max(1, args.max_steps - args.warmup_steps))
    return args.learning_rate * (args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def train(args, accelerator, train_frames, eval_frames, model, lpips=None):
    """Trains `model` in place for `args.max_steps` steps, resuming from the last checkpoint of
    `args.output_dir`; returns the list of evaluation records."""
    from tqdm.auto import tqdm

    device = accelerator.device
    model.to(device)
    model.quantize.embedding.weight.requires_grad_(False)  # moved by the moving averages, not by gradients
    codebook = EMACodebook(model.quantize.embedding, args.ema_decay)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizers = {"model": torch.optim.AdamW(parameters, lr=args.learning_rate, betas=(0.5, 0.9), weight_decay=0.0)}
    discriminator = None
    if args.gan_weight > 0:
        discriminator = PatchDiscriminator(args.discriminator_channels).to(device)
        optimizers["discriminator"] = torch.optim.AdamW(discriminator.parameters(), lr=args.learning_rate, betas=(0.5, 0.9), weight_decay=0.0)

    state = {"step": 0, "elapsed_s": 0.0, "evaluations": [], "losses": []}
    checkpoints = list_checkpoints(args.output_dir)
    if checkpoints:
        state = load_checkpoint(checkpoints[-1], model, discriminator, optimizers, codebook)
        logger.info("resumed from %s (step %d)", checkpoints[-1], state["step"])

    training_model = accelerator.prepare_model(StraightThroughVQ(model))
    training_discriminator = accelerator.prepare_model(discriminator) if discriminator is not None else None
    several = accelerator.num_processes > 1

    def reduce_sum(tensor):
        return accelerator.reduce(tensor, reduction="sum")

    def from_main_process(tensor):
        # Every process must restart the same codes on the same vectors.
        return broadcast(tensor.contiguous(), from_process=0) if several else tensor

    def evaluate_and_log(step):
        if not accelerator.is_main_process:
            return
        record = {"step": step, "elapsed_s": round(state["elapsed_s"], 1), **evaluate_reconstruction(model, eval_frames)}
        state["evaluations"].append(record)
        logger.info("eval at step %d (%.0f s): PSNR %.2f dB, SSIM %.2f, codebook use %.3f, perplexity %.1f", step, record["elapsed_s"], record["psnr"], record["ssim"], record["codebook_usage"], record["perplexity"])

    progress = tqdm(total=args.max_steps, initial=state["step"], desc="VQ training", unit="step", disable=not accelerator.is_main_process)
    window = []
    while state["step"] < args.max_steps:
        step = state["step"]
        started = time.perf_counter()
        generator = np.random.default_rng([args.seed, step, accelerator.process_index])
        batch = train_frames[np.sort(generator.choice(len(train_frames), args.batch_size, replace=len(train_frames) < args.batch_size))]
        pixel_values = images_to_pixel_values(list(batch)).to(device)
        if args.hflip:
            flips = torch.from_numpy(generator.random(args.batch_size) < 0.5).to(device)
            pixel_values = torch.where(flips[:, None, None, None], pixel_values.flip(-1), pixel_values)
        for group in optimizers["model"].param_groups:
            group["lr"] = learning_rate_at(step, args)

        training_model.train()
        if step == 0 and not checkpoints:
            # Data-dependent start: codes on latents of the first batch, so that every code begins near the data.
            with torch.no_grad():
                first = model.quant_conv(model.encoder(pixel_values)).permute(0, 2, 3, 1).reshape(-1, model.config.embed_dim)
            size = model.config.num_embeddings
            chosen = torch.from_numpy(generator.choice(len(first), size, replace=len(first) < size)).to(device)
            codebook.restart(torch.arange(size, device=device), from_main_process(first[chosen]))
        reconstruction, latents, codes, commitment = training_model(pixel_values)
        l1 = (reconstruction - pixel_values).abs().mean()
        l2 = F.mse_loss(reconstruction, pixel_values)
        loss = args.l1_weight * l1 + args.l2_weight * l2 + args.commitment_weight * commitment
        logs = {"l1": l1.item(), "l2": l2.item(), "commitment": commitment.item()}
        if lpips is not None and args.lpips_weight > 0:
            perceptual = lpips(reconstruction.clamp(-1, 1), pixel_values).mean()
            loss = loss + args.lpips_weight * perceptual
            logs["lpips"] = perceptual.item()
        gan_active = discriminator is not None and step >= args.gan_start_step
        if gan_active:
            generator_loss = -training_discriminator(reconstruction).mean()
            loss = loss + args.gan_weight * generator_loss
            logs["generator"] = generator_loss.item()
        optimizers["model"].zero_grad(set_to_none=True)
        accelerator.backward(loss)
        if args.max_grad_norm:
            accelerator.clip_grad_norm_(parameters, args.max_grad_norm)
        optimizers["model"].step()
        codebook.update(latents, codes, reduce_sum if several else None)

        if gan_active:
            for group in optimizers["discriminator"].param_groups:
                group["lr"] = learning_rate_at(step, args)
            real = training_discriminator(pixel_values)
            fake = training_discriminator(reconstruction.detach())
            discriminator_loss = 0.5 * (F.relu(1 - real).mean() + F.relu(1 + fake).mean())
            optimizers["discriminator"].zero_grad(set_to_none=True)
            accelerator.backward(discriminator_loss)
            optimizers["discriminator"].step()
            logs["discriminator"] = discriminator_loss.item()

        if args.restart_every and (step + 1) % args.restart_every == 0:
            dead = codebook.dead_codes(args.dead_code_threshold)
            if len(dead):
                chosen = torch.from_numpy(generator.choice(len(latents), len(dead), replace=len(latents) < len(dead))).to(device)
                codebook.restart(dead, from_main_process(latents[chosen]))
                logs["restarted_codes"] = int(len(dead))

        state["step"] = step + 1
        state["elapsed_s"] += time.perf_counter() - started
        window.append(logs)
        progress.update()
        if state["step"] % args.logging_steps == 0 and accelerator.is_main_process:
            averaged = {name: round(float(np.mean([entry[name] for entry in window if name in entry])), 6) for name in window[-1]}
            averaged.update(step=state["step"], lr=learning_rate_at(step, args), elapsed_s=round(state["elapsed_s"], 1))
            state["losses"].append(averaged)
            progress.set_postfix(l1=averaged["l1"], l2=averaged["l2"])
            logger.info("step %d: %s", state["step"], json.dumps(averaged))
            window = []
        if state["step"] % args.eval_every == 0 or state["step"] == args.max_steps:
            evaluate_and_log(state["step"])
        if (state["step"] % args.save_every == 0 or state["step"] == args.max_steps) and accelerator.is_main_process:
            save_checkpoint(args.output_dir, state["step"], model, discriminator, optimizers, codebook, state)
        accelerator.wait_for_everyone()
    progress.close()
    return state
