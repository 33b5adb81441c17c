"""WorldVLA model: a Chameleon-style decoder that is both an action policy and a world model.

Follows Cen et al., 2025 ("WorldVLA: Towards Autoregressive Action World Model") and the Chameleon
architecture of transformers' `ChameleonForConditionalGeneration` (parameter names kept, so released
weights map one to one), with the release's changes:
  * image-token logits are never masked (the world model generates images);
  * residual dropout after attention and after the MLP (training only);
  * the action attention mask: an action block that starts after the last image of a sequence does not
    attend to earlier action blocks, so one wrong action of a chunk does not leak into the next ones.

    input_ids (B, L) ──embed──> [RMSNorm -> attention (QK-LayerNorm, RoPE, action mask) -> dropout -> +]
                                [RMSNorm -> SwiGLU MLP -> dropout -> +]  x num_hidden_layers
                                RMSNorm -> lm_head -> logits (B, L, vocab)

Because every action block of a chunk depends only on the prompt and on itself, `predict_action` decodes
the K blocks of a chunk together: one prompt cache, `action_dim` steps of K tokens.

The file also holds `WorldVLAVQModel`, Chameleon's VQGAN (taming-transformers' VQModel, Esser et al. 2021) with
its encoder AND decoder, parameter names as in Meta's `vqgan.ckpt`; the processor carries it. It runs in
float32 only: a code is an argmin over 8,192 close distances, and bf16 activations would change codes.
"""

import json
import logging
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import Cache, DynamicCache, GenerationConfig, GenerationMixin, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.generation import LogitsProcessor, LogitsProcessorList
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast
from transformers.modeling_utils import slice_logits_to_keep
from transformers.utils import ModelOutput

try:
    from .configuration_worldvla import IGNORE_INDEX, WorldVLAConfig, WorldVLAVQConfig
except ImportError:
    from configuration_worldvla import IGNORE_INDEX, WorldVLAConfig, WorldVLAVQConfig


# ---------------------------------------------------------------------------------------------------------------------
# Loading: a broken weights file is named
# ---------------------------------------------------------------------------------------------------------------------


def safetensors_problem(path):
    """Why the .safetensors file at `path` cannot be loaded (truncated, unreadable header), or None."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as file:
        prefix = file.read(8)
        if len(prefix) < 8:
            return f"{path}: {size} bytes, too short for a safetensors header"
        header_size = int.from_bytes(prefix, "little")
        if header_size > size - 8:
            return f"{path}: a {header_size}-byte header in a {size}-byte file (truncated?)"
        try:
            header = json.loads(file.read(header_size))
        except ValueError:
            return f"{path}: unreadable safetensors header"
    data_end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
    if 8 + header_size + data_end != size:
        return f"{path}: {size} bytes, its header says {8 + header_size + data_end} (truncated?)"
    return None


def _load_naming_broken_files(load, pretrained_model_name_or_path, subfolder=""):
    """`load()`, and when it fails on a local folder whose weights files are broken, an OSError naming them
    (safetensors' own message names no file)."""
    try:
        return load()
    except Exception as error:
        folder = Path(str(pretrained_model_name_or_path)) / subfolder
        if not folder.is_dir():
            raise
        problems = [problem for weights in sorted(folder.glob("*.safetensors")) if (problem := safetensors_problem(weights))]
        if not problems:
            raise
        raise OSError(f"cannot load {folder}: " + "; ".join(problems) + " - re-save or re-download it") from error


# ---------------------------------------------------------------------------------------------------------------------
# The VQGAN image tokenizer (Chameleon's taming-transformers VQModel: encoder, quantizer and decoder)
# ---------------------------------------------------------------------------------------------------------------------


def _swish(hidden_states: torch.Tensor) -> torch.Tensor:
    # Written as taming writes it rather than F.silu, whose kernel rounds differently in the last bit:
    # the encoder's output feeds an argmin, and this keeps its codes bit-identical to the references.
    return hidden_states * torch.sigmoid(hidden_states)


def _group_norm(num_channels: int, num_groups: int) -> nn.GroupNorm:
    # taming's `Normalize`: eps 1e-6, not torch's 1e-5.
    return nn.GroupNorm(num_groups=num_groups, num_channels=num_channels, eps=1e-6, affine=True)


class WorldVLAVQResnetBlock(nn.Module):
    """Pre-activation residual block: (GroupNorm, swish, 3x3 conv) twice, plus a 1x1 conv on the
    shortcut when the width changes. Taming's timestep-embedding projection is absent: the VQGAN builds
    its blocks with `temb_channels=0`, so the checkpoint has no `temb_proj`."""

    def __init__(self, in_channels: int, out_channels: int, num_groups: int, dropout: float):
        super().__init__()
        self.norm1 = _group_norm(in_channels, num_groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.norm2 = _group_norm(out_channels, num_groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.nin_shortcut = (
            nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=1, padding=0)
            if in_channels != out_channels
            else None
        )

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        residual = hidden_states if self.nin_shortcut is None else self.nin_shortcut(hidden_states)
        hidden_states = self.conv1(_swish(self.norm1(hidden_states)))
        hidden_states = self.conv2(self.dropout(_swish(self.norm2(hidden_states))))
        return residual + hidden_states


class WorldVLAVQAttnBlock(nn.Module):
    """Single-head self-attention over all positions of a feature map, with 1x1 convolutions as the
    query, key, value and output projections, softmax scaled by channels ** -0.5, and a residual."""

    def __init__(self, channels: int, num_groups: int):
        super().__init__()
        self.norm = _group_norm(channels, num_groups)
        self.q = nn.Conv2d(channels, channels, kernel_size=1)
        self.k = nn.Conv2d(channels, channels, kernel_size=1)
        self.v = nn.Conv2d(channels, channels, kernel_size=1)
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        normed = self.norm(hidden_states)
        batch_size, channels, height, width = hidden_states.shape
        query = self.q(normed).reshape(batch_size, channels, height * width).permute(0, 2, 1)  # (B, HW, C)
        key = self.k(normed).reshape(batch_size, channels, height * width)  # (B, C, HW)
        value = self.v(normed).reshape(batch_size, channels, height * width)  # (B, C, HW)
        # Explicit bmm + softmax in taming's order rather than scaled_dot_product_attention: the encoder's
        # output feeds an argmin, and this keeps its codes bit-identical to the reference implementations.
        weights = F.softmax(torch.bmm(query, key) * (channels**-0.5), dim=2)  # (B, HW query, HW key)
        attended = torch.bmm(value, weights.permute(0, 2, 1)).reshape(batch_size, channels, height, width)
        return hidden_states + self.proj_out(attended)


class WorldVLAVQDownsample(nn.Module):
    """Halves the resolution with a 3x3 stride-2 convolution after padding one zero row and column at the
    bottom and right only (taming's asymmetric padding; padding=1 would shift the sampling grid)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=0)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(hidden_states, (0, 1, 0, 1), mode="constant", value=0.0))


class WorldVLAVQUpsample(nn.Module):
    """Doubles the resolution: nearest-neighbour x2, then a 3x3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=1, padding=1)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(hidden_states, scale_factor=2.0, mode="nearest"))


class WorldVLAVQMidBlock(nn.Module):
    """Residual block, self-attention, residual block at the lowest resolution (`encoder.mid`,
    `decoder.mid`); the only attention of Meta's VQGAN."""

    def __init__(self, channels: int, num_groups: int, dropout: float):
        super().__init__()
        self.block_1 = WorldVLAVQResnetBlock(channels, channels, num_groups, dropout)
        self.attn_1 = WorldVLAVQAttnBlock(channels, num_groups)
        self.block_2 = WorldVLAVQResnetBlock(channels, channels, num_groups, dropout)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(hidden_states)))


class WorldVLAVQLevel(nn.Module):
    """One resolution level (`encoder.down.{i}` or `decoder.up.{i}`): residual blocks, each followed by an
    attention block when the level's resolution is in `attn_resolutions`, then an optional resampler.
    The resampler is registered as `downsample` in the encoder and `upsample` in the decoder, as in taming."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_blocks: int,
        use_attention: bool,
        num_groups: int,
        dropout: float,
        resample: str | None,
    ):
        super().__init__()
        self.block = nn.ModuleList(
            WorldVLAVQResnetBlock(in_channels if i == 0 else out_channels, out_channels, num_groups, dropout)
            for i in range(num_blocks)
        )
        # Taming keeps an empty `attn` list at levels without attention; an empty ModuleList has no weights.
        self.attn = nn.ModuleList(
            WorldVLAVQAttnBlock(out_channels, num_groups) for _ in range(num_blocks if use_attention else 0)
        )
        if resample == "down":
            self.downsample = WorldVLAVQDownsample(out_channels)
        elif resample == "up":
            self.upsample = WorldVLAVQUpsample(out_channels)
        elif resample is not None:
            raise ValueError(f"`resample` must be 'down', 'up' or None, got {resample!r}.")
        self.resample = resample

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        for index, block in enumerate(self.block):
            hidden_states = block(hidden_states)
            if len(self.attn) > 0:
                hidden_states = self.attn[index](hidden_states)
        if self.resample == "down":
            hidden_states = self.downsample(hidden_states)
        elif self.resample == "up":
            hidden_states = self.upsample(hidden_states)
        return hidden_states


class WorldVLAVQEncoder(nn.Module):
    """Pixels (B, in_channels, H, W) -> latents (B, latent_channels, H/f, W/f), f = downsample factor."""

    def __init__(self, config: WorldVLAVQConfig):
        super().__init__()
        groups, dropout = config.norm_num_groups, config.dropout
        widths = [config.base_channels * multiplier for multiplier in config.channel_multiplier]
        num_levels = len(widths)

        self.conv_in = nn.Conv2d(config.in_channels, config.base_channels, kernel_size=3, stride=1, padding=1)
        self.down = nn.ModuleList()
        block_in, current_resolution = config.base_channels, config.resolution
        for level, width in enumerate(widths):
            is_last = level == num_levels - 1
            self.down.append(
                WorldVLAVQLevel(
                    in_channels=block_in,
                    out_channels=width,
                    num_blocks=config.num_res_blocks,
                    use_attention=current_resolution in config.attn_resolutions,
                    num_groups=groups,
                    dropout=dropout,
                    resample=None if is_last else "down",
                )
            )
            block_in = width
            if not is_last:
                current_resolution //= 2
        self.mid = WorldVLAVQMidBlock(block_in, groups, dropout)
        self.norm_out = _group_norm(block_in, groups)
        self.conv_out = nn.Conv2d(block_in, config.latent_channels, kernel_size=3, stride=1, padding=1)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden_states = self.conv_in(pixel_values)
        for level in self.down:
            hidden_states = level(hidden_states)
        hidden_states = self.mid(hidden_states)
        return self.conv_out(_swish(self.norm_out(hidden_states)))


class WorldVLAVQDecoder(nn.Module):
    """Latents (B, latent_channels, h, w) -> pixels (B, out_channels, h*f, w*f), unclamped.

    `up[i]` mirrors the encoder's `down[i]` (same width, same resolution) but runs in reverse order, from
    the last level to the first; each level has `num_res_blocks + 1` residual blocks, and every level but
    level 0 ends with an upsampler. Taming builds the levels from the last to the first and prepends each,
    so its indices (hence the checkpoint's key names) are those of the encoder.
    """

    def __init__(self, config: WorldVLAVQConfig):
        super().__init__()
        groups, dropout = config.norm_num_groups, config.dropout
        widths = [config.base_channels * multiplier for multiplier in config.channel_multiplier]
        num_levels = len(widths)

        block_in = widths[-1]
        current_resolution = config.resolution // 2 ** (num_levels - 1)
        self.conv_in = nn.Conv2d(config.latent_channels, block_in, kernel_size=3, stride=1, padding=1)
        self.mid = WorldVLAVQMidBlock(block_in, groups, dropout)
        levels_last_first = []
        for level in reversed(range(num_levels)):
            levels_last_first.append(
                WorldVLAVQLevel(
                    in_channels=block_in,
                    out_channels=widths[level],
                    num_blocks=config.num_res_blocks + 1,
                    use_attention=current_resolution in config.attn_resolutions,
                    num_groups=groups,
                    dropout=dropout,
                    resample="up" if level != 0 else None,
                )
            )
            block_in = widths[level]
            if level != 0:
                current_resolution *= 2
        self.up = nn.ModuleList(reversed(levels_last_first))
        self.norm_out = _group_norm(block_in, groups)
        self.conv_out = nn.Conv2d(block_in, config.out_channels, kernel_size=3, stride=1, padding=1)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        hidden_states = self.mid(self.conv_in(latents))
        for level in reversed(self.up):
            hidden_states = level(hidden_states)
        return self.conv_out(_swish(self.norm_out(hidden_states)))


class WorldVLAVQVectorQuantizer(nn.Module):
    """Nearest-neighbour lookup in a codebook of `num_embeddings` vectors of size `embed_dim` (taming's
    `VectorQuantizer2`, inference part: no commitment loss, no index remapping)."""

    def __init__(self, config: WorldVLAVQConfig):
        super().__init__()
        self.embedding = nn.Embedding(config.num_embeddings, config.embed_dim)

    def forward(self, latents: torch.Tensor) -> torch.LongTensor:
        """Latents (B, embed_dim, h, w) -> codes (B, h, w): index of the nearest codebook vector."""
        batch_size, embed_dim, height, width = latents.shape
        flat = latents.permute(0, 2, 3, 1).reshape(-1, embed_dim)  # (B*h*w, D)
        codebook = self.embedding.weight  # (N, D)
        # |z - e|^2 expanded as |z|^2 + |e|^2 - 2 z.e, in taming's order: the same float rounding, so the
        # same argmin on near-ties. On exact ties argmin takes the lowest index, as taming does.
        distances = (
            torch.sum(flat**2, dim=1, keepdim=True)
            + torch.sum(codebook**2, dim=1)
            - 2 * torch.einsum("bd,dn->bn", flat, codebook.transpose(0, 1))
        )  # (B*h*w, N)
        return torch.argmin(distances, dim=1).reshape(batch_size, height, width)

    def embed_codes(self, codes: torch.LongTensor) -> torch.Tensor:
        """Codes (B, h, w) -> codebook vectors (B, embed_dim, h, w)."""
        return self.embedding(codes).permute(0, 3, 1, 2).contiguous()


@dataclass
class WorldVLAVQOutput(ModelOutput):
    """Output of [`WorldVLAVQModel.forward`].

    Args:
        reconstruction (`torch.FloatTensor` of shape `(batch_size, out_channels, height, width)`):
            The decoded image, clamped to [-1, 1].
        codes (`torch.LongTensor` of shape `(batch_size, height / f, width / f)`):
            The image codes, in [0, num_embeddings).
    """

    reconstruction: torch.FloatTensor | None = None
    codes: torch.LongTensor | None = None


class WorldVLAVQModel(PreTrainedModel):
    """Chameleon's VQGAN: `encode` turns pixel values into image codes, `decode` turns codes into pixel
    values, `forward` does both. Inference only (WorldVLA keeps its tokenizer frozen): no GAN or
    commitment losses, no straight-through gradients.

    Meta's checkpoint loads with
    `model.load_state_dict({k: v for k, v in ckpt["state_dict"].items() if not k.startswith("loss.")})`.
    """

    config_class = WorldVLAVQConfig
    config: WorldVLAVQConfig
    base_model_prefix = "vqmodel"
    main_input_name = "pixel_values"
    input_modalities = "image"
    _no_split_modules = ["WorldVLAVQResnetBlock", "WorldVLAVQAttnBlock", "WorldVLAVQVectorQuantizer"]
    # Weights stay float32 even under `from_pretrained(dtype=torch.bfloat16)`: see the module docstring.
    _keep_in_fp32_modules_strict = ["encoder", "decoder", "quantize", "quant_conv", "post_quant_conv"]

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`; a truncated or unreadable weights file is named in the error."""
        load = super().from_pretrained
        return _load_naming_broken_files(lambda: load(*args, **kwargs), args[0] if args else kwargs.get("pretrained_model_name_or_path"), kwargs.get("subfolder", ""))

    def __init__(self, config: WorldVLAVQConfig):
        super().__init__(config)
        self.encoder = WorldVLAVQEncoder(config)
        self.decoder = WorldVLAVQDecoder(config)
        self.quantize = WorldVLAVQVectorQuantizer(config)
        self.quant_conv = nn.Conv2d(config.latent_channels, config.embed_dim, kernel_size=1)
        self.post_quant_conv = nn.Conv2d(config.embed_dim, config.latent_channels, kernel_size=1)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        # Random initialisation as in taming (PyTorch's defaults, codebook uniform in +-1/N). transformers'
        # default N(0, 0.02) would shrink the latents until every position picks the same code, which
        # makes randomly initialised test models useless. Trained weights always come from a checkpoint.
        if isinstance(module, (nn.Conv2d, nn.GroupNorm)):
            module.reset_parameters()
        elif isinstance(module, nn.Embedding):
            bound = 1.0 / module.num_embeddings
            nn.init.uniform_(module.weight, -bound, bound)

    @contextmanager
    def _float32_computation(self, device: torch.device):
        if self.dtype != torch.float32:
            raise RuntimeError(
                f"The VQGAN runs in float32 only (its codes are an argmin over close distances), but its "
                f"weights are {self.dtype}. Keep it in float32: call `.float()` on it after casting a parent "
                "model, or load it with `from_pretrained`, which keeps it in float32."
            )
        # A surrounding bf16/fp16 autocast (mixed-precision training of the transformer) must not reach it.
        with torch.autocast(device_type=device.type, enabled=False):
            yield

    def _check_pixel_values(self, pixel_values: torch.Tensor) -> torch.Tensor:
        factor = self.config.downsample_factor
        expected = f"(batch, {self.config.in_channels}, H, W) with H and W divisible by {factor}"
        if not isinstance(pixel_values, torch.Tensor):
            raise ValueError(f"`pixel_values` must be a torch.Tensor of shape {expected}, got {type(pixel_values)}.")
        shape = tuple(pixel_values.shape)
        if (
            pixel_values.ndim != 4
            or shape[1] != self.config.in_channels
            or shape[2] % factor != 0
            or shape[3] % factor != 0
            or shape[2] == 0
            or shape[3] == 0
        ):
            raise ValueError(f"`pixel_values` must have shape {expected}, got {shape}.")
        if not pixel_values.is_floating_point():
            raise ValueError(
                f"`pixel_values` must be a float tensor in [-1, 1], got dtype {pixel_values.dtype}; "
                "convert uint8 images with `images_to_pixel_values`."
            )
        return pixel_values.to(device=self.device, dtype=torch.float32)

    def _check_codes(self, codes: torch.Tensor) -> torch.LongTensor:
        if not isinstance(codes, torch.Tensor) or codes.ndim != 3:
            got = tuple(codes.shape) if isinstance(codes, torch.Tensor) else type(codes)
            raise ValueError(f"`codes` must be a tensor of shape (batch, height, width), got {got}.")
        if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
            raise ValueError(f"`codes` must be an integer tensor, got dtype {codes.dtype}.")
        if codes.numel() > 0 and (codes.min() < 0 or codes.max() >= self.config.num_embeddings):
            raise ValueError(
                f"`codes` must lie in [0, {self.config.num_embeddings}), got values in "
                f"[{int(codes.min())}, {int(codes.max())}]."
            )
        return codes.to(device=self.device, dtype=torch.long)

    def encode(self, pixel_values: torch.Tensor) -> torch.LongTensor:
        """Pixel values (B, 3, H, W), float in [-1, 1] -> codes (B, H/f, W/f) in [0, num_embeddings)."""
        pixel_values = self._check_pixel_values(pixel_values)
        # Codes are an argmin, with no gradient: keeping the graph would only hold activations in memory.
        with torch.no_grad(), self._float32_computation(pixel_values.device):
            latents = self.quant_conv(self.encoder(pixel_values))  # (B, embed_dim, H/f, W/f)
            return self.quantize(latents)

    def get_codebook_entry(self, codes: torch.LongTensor) -> torch.Tensor:
        """Codes (B, h, w) -> quantized latents (B, embed_dim, h, w), the decoder's input before
        `post_quant_conv`."""
        return self.quantize.embed_codes(self._check_codes(codes))

    def decode(self, codes: torch.LongTensor) -> torch.Tensor:
        """Codes (B, h, w) -> pixel values (B, 3, h*f, w*f) in [-1, 1]."""
        quantized = self.get_codebook_entry(codes)
        with self._float32_computation(quantized.device):
            pixels = self.decoder(self.post_quant_conv(quantized))
        # The decoder has no output nonlinearity; Chameleon clamps before converting to pixels.
        return pixels.clamp(-1.0, 1.0)

    def forward(self, pixel_values: torch.Tensor) -> WorldVLAVQOutput:
        """Encodes then decodes: the reconstruction the image tokens allow."""
        codes = self.encode(pixel_values)
        return WorldVLAVQOutput(reconstruction=self.decode(codes), codes=codes)


# ---------------------------------------------------------------------------------------------------------------------
# Attention masks
# ---------------------------------------------------------------------------------------------------------------------


def find_action_blocks(input_ids, config):
    """Locate action blocks in (B, L) token ids.

    Returns `block_id` (B, L): 1-based index of the action block a token belongs to (its start and end tokens
    included), 0 outside blocks; and `restricted` (B, L): True for tokens of blocks that start after the start
    of the last image, the blocks the action mask cuts off from earlier blocks. A block without its end token
    (one being generated) runs to the end of the sequence.
    """
    positions = torch.arange(input_ids.shape[-1], device=input_ids.device)
    is_start = input_ids == config.action_start_token_id
    is_end = input_ids == config.action_end_token_id
    starts_so_far = is_start.long().cumsum(-1)
    ends_before = is_end.long().cumsum(-1) - is_end.long()
    in_block = starts_so_far > ends_before
    block_id = torch.where(in_block, starts_so_far, torch.zeros_like(starts_so_far))

    no_position = torch.full_like(input_ids, -1)
    last_image_start = torch.where(input_ids == config.image_start_token_id, positions, no_position).amax(-1)
    block_start = torch.where(is_start, positions, no_position).cummax(-1).values
    restricted = in_block & (block_start > last_image_start[:, None])
    return block_id, restricted


def additive_mask(allowed, dtype):
    """Bool (B, q, kv) -> additive float (B, 1, q, kv): 0 where attended, the dtype's minimum elsewhere.

    A float mask, never a bool one: eager attention adds the mask to the scores, and a bool mask added as
    0/1 would silently attend everywhere.
    """
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]


def build_action_attention_mask(input_ids, config, attention_mask=None, dtype=torch.float32, last_rows=None):
    """WorldVLA's attention mask for (B, L) token ids, as an additive float mask (B, 1, L, L).

    Causal, with padded keys (`attention_mask` == 0, right or left padding) hidden. With
    `config.use_action_attention_mask`, a token of an action block that starts after the last image may not
    attend to any other action block; it still sees BOS, text, images, separators and the earlier tokens of
    its own block. Action blocks before the last image (the conditioning actions of a world-model sample)
    stay plainly causal. Every position sees itself, so no row is empty.

    `last_rows` = q returns only the rows of the last q tokens, (B, 1, q, L): what a cached generation step
    needs, at O(q L) instead of O(L^2) work per step.

    "After the last image" is read as "starting after the start token of the last image"; the release reads
    it from the image's end token, which is the same on every well-formed sequence and, unlike it, also
    classifies the blocks of a frame still being generated. The rule depends on the whole sequence (a later
    image turns earlier blocks back to causal); in the two sample formats no generated token ever changes
    the rows of earlier tokens, so cached generation equals a full forward (tested).
    """
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must have shape (batch, length), got {tuple(input_ids.shape)}")
    length = input_ids.shape[1]
    rows = length if last_rows is None else last_rows
    keys = torch.arange(length, device=input_ids.device)
    queries = keys[length - rows :]
    allowed = (keys[None, :] <= queries[:, None]).expand(input_ids.shape[0], rows, length)
    if attention_mask is not None:
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask shape {tuple(attention_mask.shape)} does not match input_ids {tuple(input_ids.shape)}"
            )
        allowed = allowed & attention_mask.bool()[:, None, :]
    if config.use_action_attention_mask:
        block_id, restricted = find_action_blocks(input_ids, config)
        query_block, query_restricted = block_id[:, length - rows :], restricted[:, length - rows :]
        other_block = (block_id[:, None, :] > 0) & (block_id[:, None, :] != query_block[:, :, None])
        allowed = allowed & ~(query_restricted[:, :, None] & other_block)
    allowed = allowed | (keys[None, :] == queries[:, None])
    return additive_mask(allowed, dtype)


def position_ids_from_attention_mask(attention_mask):
    """Sequential positions of the real tokens; padding takes position 0 (it is never attended)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


# ---------------------------------------------------------------------------------------------------------------------
# Decoder building blocks
# ---------------------------------------------------------------------------------------------------------------------


class WorldVLARMSNorm(nn.Module):
    def __init__(self, hidden_size, eps=1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states):
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(input_dtype)


class WorldVLAQKLayerNorm(nn.Module):
    """Chameleon's QK norm: statistics over head_dim, a separate (weight, bias) row per head."""

    def __init__(self, num_heads, head_dim, eps=1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_heads, head_dim))
        self.bias = nn.Parameter(torch.zeros(num_heads, head_dim))
        self.eps = eps

    def forward(self, hidden_states):  # (B, L, heads, head_dim)
        hidden_states = F.layer_norm(hidden_states, hidden_states.shape[-1:], None, None, eps=self.eps)
        return hidden_states * self.weight + self.bias


def rotary_cos_sin(position_ids, head_dim, theta, dtype):
    """RoPE tables (B, L, head_dim) computed on the fly: no buffer to initialise or move between devices."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=position_ids.device, dtype=torch.float32) / head_dim))
    freqs = position_ids[..., None].float() * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x):
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def apply_rotary_pos_emb(states, cos, sin):
    cos, sin = cos[:, None], sin[:, None]  # broadcast over heads: (B, 1, L, head_dim)
    return states * cos + rotate_half(states) * sin


class WorldVLAAttention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_key_value_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.scaling = self.head_dim**-0.5
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=config.attention_bias)
        self.k_proj = nn.Linear(config.hidden_size, self.num_key_value_heads * self.head_dim, bias=config.attention_bias)
        self.v_proj = nn.Linear(config.hidden_size, self.num_key_value_heads * self.head_dim, bias=config.attention_bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=config.attention_bias)
        if config.use_qk_norm:
            self.q_norm = WorldVLAQKLayerNorm(self.num_heads, self.head_dim)
            self.k_norm = WorldVLAQKLayerNorm(self.num_key_value_heads, self.head_dim)

    def _keys_values(self, hidden_states, position_embeddings):
        """The keys (rotated) and values (B, kv_heads, L, head_dim) of these hidden states."""
        batch, length, _ = hidden_states.shape
        key = self.k_proj(hidden_states).view(batch, length, self.num_key_value_heads, self.head_dim)
        value = self.v_proj(hidden_states).view(batch, length, self.num_key_value_heads, self.head_dim)
        if self.config.use_qk_norm:
            key = self.k_norm(key)
        return apply_rotary_pos_emb(key.transpose(1, 2), *position_embeddings), value.transpose(1, 2)

    def write_cache(self, hidden_states, position_embeddings, past_key_values):
        """The cache's share of a forward alone: these tokens' keys and values, for later tokens to attend to."""
        past_key_values.update(*self._keys_values(hidden_states, position_embeddings), self.layer_idx)

    def forward(
        self, hidden_states, attention_mask, position_embeddings, past_key_values=None, output_attentions=False
    ):
        """Returns the attention output and, with `output_attentions`, the weights (B, heads, q, kv) after the mask."""
        batch, length, _ = hidden_states.shape
        query = self.q_proj(hidden_states).view(batch, length, self.num_heads, self.head_dim)
        if self.config.use_qk_norm:
            query = self.q_norm(query)
        query = apply_rotary_pos_emb(query.transpose(1, 2), *position_embeddings)
        key, value = self._keys_values(hidden_states, position_embeddings)
        if past_key_values is not None:
            key, value = past_key_values.update(key, value, self.layer_idx)
        groups = self.num_heads // self.num_key_value_heads
        if groups > 1:
            key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)

        dropout = self.config.attention_dropout if self.training else 0.0
        weights = None
        # SDPA never exposes its weights: a call that asks for them runs the eager path, whatever the implementation.
        if self.config._attn_implementation == "eager" or output_attentions:
            scores = torch.matmul(query, key.transpose(2, 3)) * self.scaling + attention_mask
            weights = F.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
            weights = F.dropout(weights, p=dropout, training=self.training)
            output = torch.matmul(weights, value)
        else:
            output = F.scaled_dot_product_attention(
                query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=self.scaling
            )
        return self.o_proj(output.transpose(1, 2).reshape(batch, length, -1)), weights


class WorldVLAMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.mlp_bias)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.mlp_bias)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.mlp_bias)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, hidden_states):
        return self.down_proj(self.act_fn(self.gate_proj(hidden_states)) * self.up_proj(hidden_states))


class WorldVLADecoderLayer(GradientCheckpointingLayer):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.self_attn = WorldVLAAttention(config, layer_idx)
        self.mlp = WorldVLAMLP(config)
        self.input_layernorm = WorldVLARMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = WorldVLARMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.residual_dropout = nn.Dropout(config.residual_dropout)

    def forward(
        self, hidden_states, attention_mask, position_embeddings, past_key_values=None, output_attentions=False
    ):
        attn_output, attention_weights = self.self_attn(
            self.input_layernorm(hidden_states), attention_mask, position_embeddings, past_key_values, output_attentions
        )
        hidden_states = hidden_states + self.residual_dropout(attn_output)
        mlp_output = self.mlp(self.post_attention_layernorm(hidden_states))
        return hidden_states + self.residual_dropout(mlp_output), attention_weights


# ---------------------------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------------------------


class WorldVLAPreTrainedModel(PreTrainedModel):
    config_class = WorldVLAConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["WorldVLADecoderLayer"]
    _skip_keys_device_placement = ["past_key_values"]
    _supports_sdpa = True

    def __init__(self, config, *inputs, **kwargs):
        # The config validates itself when built or loaded; edits made afterwards are caught here.
        config.validate_worldvla()
        super().__init__(config, *inputs, **kwargs)

    @classmethod
    def _can_set_attn_implementation(cls):
        # transformers guesses this from the source (an AttentionInterface lookup); the attention layers here read
        # `config._attn_implementation` at every call, so `set_attn_implementation` takes effect at once.
        return True

    def get_correct_attn_implementation(self, requested_attention, is_init_check=False):
        # transformers refuses unknown names and flash / flex attention (the class does not claim them); the rest of
        # its registry would be silently run as sdpa here.
        requested = super().get_correct_attn_implementation(requested_attention, is_init_check)
        if requested not in ("eager", "sdpa"):
            raise ValueError(
                f"WorldVLA runs attn_implementation 'eager' or 'sdpa', not {requested!r}: its attention layers take "
                "the dense 4-D action mask and a regular KV cache"
            )
        return requested


class WorldVLAModel(WorldVLAPreTrainedModel):
    """The decoder stack without the language-model head."""

    def __init__(self, config):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            [WorldVLADecoderLayer(config, layer_idx) for layer_idx in range(config.num_hidden_layers)]
        )
        self.norm = WorldVLARMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        past_key_values=None,
        inputs_embeds=None,
        use_cache=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        cache_only=False,
    ):
        """Hidden states for (B, L) `input_ids` or (B, L, hidden) `inputs_embeds` (exactly one of them).

        `attention_mask` is either (B, L) with 1 for real tokens, from which the action mask is built from
        `input_ids`, or a 4-D mask (B, 1, L, past + L) used as given: additive float (0 = attend, dtype minimum =
        blocked) or bool with SDPA's convention (True = attend). Generation builds those rows from the full
        sequence. With `inputs_embeds` the 4-D mask is required: the action mask depends on which tokens are images
        and actions, which embeddings do not say (`build_action_attention_mask(input_ids, config, mask)` gives it).

        `use_cache` defaults to `config.use_cache` outside training. `output_attentions` computes eager attention
        for that call. `cache_only` fills the cache and stops there: the last layer computes the tokens' keys and
        values but no queries, attention or MLP, and `last_hidden_state` is None (a prefill whose hidden states
        nobody reads, as in parallel action decoding). Returns a `BaseModelOutputWithPast`, or its tuple with
        `return_dict=False`.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if use_cache is None:
            use_cache = self.config.use_cache and not self.training
        if cache_only and not use_cache:
            raise ValueError("cache_only fills the KV cache: pass use_cache=True")
        output_attentions = self.config.output_attentions if output_attentions is None else output_attentions
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        return_dict = self.config.return_dict if return_dict is None else return_dict
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        batch, length = inputs_embeds.shape[:2]
        dtype, device = inputs_embeds.dtype, inputs_embeds.device

        past_length = int(past_key_values.get_seq_length()) if past_key_values is not None else 0
        if past_length + length > self.config.max_position_embeddings:
            # RoPE would accept any position: a sample longer than the context the config declares trains silently.
            raise ValueError(
                f"a sequence of {past_length + length} tokens exceeds the context of {self.config.max_position_embeddings} "
                "(max_position_embeddings): raise it (train.py --max-position-embeddings) or shorten the samples"
            )
        if attention_mask is None or attention_mask.ndim == 2:
            if input_ids is None:
                raise ValueError(
                    "With inputs_embeds, pass the 4-D attention mask: the action mask is built from token ids "
                    "(build_action_attention_mask(input_ids, config, attention_mask))."
                )
            if past_length:
                raise ValueError(
                    "With a non-empty past_key_values, pass the additive 4-D attention mask of the new tokens "
                    "(build_action_attention_mask on the full sequence, last rows): the action mask depends on "
                    "tokens that are only in the cache."
                )
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            if position_ids is None:
                position_ids = position_ids_from_attention_mask(attention_mask)
            attention_mask = build_action_attention_mask(input_ids, self.config, attention_mask, dtype)
        elif attention_mask.ndim == 4:
            attention_mask = self._additive_4d_mask(attention_mask, dtype)
        else:
            raise ValueError(f"attention_mask must be 2-D or 4-D, got shape {tuple(attention_mask.shape)}")
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=self.config)
        attention_mask = self._mask_for_cache(attention_mask, length, past_length, past_key_values)
        if position_ids is None:
            position_ids = torch.arange(past_length, past_length + length, device=device).expand(batch, -1)

        hidden_states = inputs_embeds
        position_embeddings = rotary_cos_sin(position_ids, self.config.head_dim, self.config.rope_theta, dtype)
        all_hidden_states = () if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for layer in self.layers[:-1] if cache_only else self.layers:
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            hidden_states, attention_weights = layer(
                hidden_states,
                attention_mask,
                position_embeddings,
                past_key_values=past_key_values,
                output_attentions=output_attentions,
            )
            if output_attentions:
                all_attentions += (attention_weights,)
        if cache_only:
            last_layer = self.layers[-1]
            last_layer.self_attn.write_cache(
                last_layer.input_layernorm(hidden_states), position_embeddings, past_key_values
            )
            hidden_states = None
        else:
            hidden_states = self.norm(hidden_states)
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
        output = BaseModelOutputWithPast(
            last_hidden_state=hidden_states,
            past_key_values=past_key_values,
            hidden_states=all_hidden_states,
            attentions=all_attentions,
        )
        return output if return_dict else output.to_tuple()

    @staticmethod
    def _additive_4d_mask(attention_mask, dtype):
        if attention_mask.dtype == torch.bool:
            blocked = torch.zeros(attention_mask.shape, dtype=dtype, device=attention_mask.device)
            return blocked.masked_fill_(~attention_mask, torch.finfo(dtype).min)
        if not attention_mask.is_floating_point():
            raise ValueError(
                f"a 4-D attention_mask must be bool (True = attend) or additive float (0 = attend, dtype minimum = "
                f"blocked), got {attention_mask.dtype}: 0/1 integers added to the scores would mask nothing"
            )
        return attention_mask.to(dtype)

    @staticmethod
    def _mask_for_cache(attention_mask, length, past_length, past_key_values):
        """Check the mask covers the queries and keys; pad it with blocked keys up to a static cache's length."""
        keys = past_length + length
        cache_keys = past_key_values.get_mask_sizes(length, 0)[0] if past_key_values is not None else keys
        if attention_mask.shape[-2] != length or attention_mask.shape[-1] not in (keys, cache_keys):
            raise ValueError(
                f"4-D attention_mask of shape {tuple(attention_mask.shape)} does not fit {length} new tokens after "
                f"{past_length} cached ones: expected (batch, 1, {length}, {keys})"
            )
        if attention_mask.shape[-1] < cache_keys:
            # A static cache returns all its slots; those not written yet must not be attended.
            attention_mask = F.pad(attention_mask, (0, cache_keys - keys), value=torch.finfo(attention_mask.dtype).min)
        return attention_mask


@dataclass
class WorldVLACausalLMOutput(ModelOutput):
    """`loss` is the training objective; `action_loss` (mean cross-entropy on action-bin targets), `image_loss`
    (mean cross-entropy on image-code targets) and `z_loss` are detached, for logging (None when absent).
    `hidden_states` (embeddings, then each layer's output, the last one normed) and `attentions` (one
    (B, heads, q, kv) tensor per layer) come with `output_hidden_states` / `output_attentions`."""

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    past_key_values: Cache | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    action_loss: torch.FloatTensor | None = None
    image_loss: torch.FloatTensor | None = None
    z_loss: torch.FloatTensor | None = None


def _chunk_loss_terms(lm_head, hidden_states, targets):
    """Per-target cross-entropy and logsumexp^2 of one chunk, with fp32 logits that live only here."""
    logits = lm_head(hidden_states).float()
    logsumexp = logits.logsumexp(-1)
    cross_entropy = logsumexp - logits.gather(-1, targets[:, None]).squeeze(-1)
    return cross_entropy, logsumexp.pow(2)


def _check_finite(tensor, what):
    if not torch.isfinite(tensor).all():
        raise FloatingPointError(
            f"non-finite {what} (NaN or inf): no action or frame is decoded from them. The weights or inputs hold NaN "
            "or inf (from_pretrained reports such weights), or fp16 overflowed: run in fp32 or bf16."
        )


def windowed_bin_argmax(bin_logits, window):
    """The bins (...) decoded from logits over the action bins (..., n_bins): the most likely bin inside the window
    of `window` neighbouring bins that holds the most probability (`config.action_bin_window`). 1 is the argmax."""
    if window == 1:
        return bin_logits.argmax(-1)
    probabilities = bin_logits.float().softmax(-1).reshape(-1, 1, bin_logits.shape[-1])
    half = window // 2
    window_mass = F.avg_pool1d(probabilities, window, stride=1, padding=half, count_include_pad=True)
    centre = window_mass.argmax(-1, keepdim=True)
    bins = torch.arange(bin_logits.shape[-1], device=bin_logits.device)
    outside = (bins - centre).abs() > half
    return probabilities.masked_fill(outside, -1.0).argmax(-1).reshape(bin_logits.shape[:-1])


def _drop_right_padding_warning(record):
    """A logging filter: False for `generate`'s right-padding warning (see `_generate_with_grammar`)."""
    return "right-padding was detected" not in record.getMessage()


class ActionChunkLogitsProcessor(LogitsProcessor):
    """Keeps generated tokens in the grammar of an action chunk: [start] action_dim bins [end], repeated.

    With `action_bin_window` > 1 only the bin `windowed_bin_argmax` picks is left, so greedy search decodes it.
    Non-finite bin logits raise a FloatingPointError instead of decoding an action from them."""

    def __init__(self, config, prompt_length):
        self.layout = config.token_layout
        self.prompt_length = prompt_length
        self.bin_window = config.action_bin_window

    def __call__(self, input_ids, scores):
        layout = self.layout
        offset = (input_ids.shape[1] - self.prompt_length) % layout.action_block_length
        constrained = torch.full_like(scores, float("-inf"))
        if offset == 0:
            constrained[:, layout.action_start_token_id] = 0.0
        elif offset == layout.action_block_length - 1:
            constrained[:, layout.action_end_token_id] = 0.0
        else:
            bins = layout.action_bin_slice
            _check_finite(scores[:, bins], "action-bin logits")
            if self.bin_window == 1:
                constrained[:, bins] = scores[:, bins]
            else:
                chosen = windowed_bin_argmax(scores[:, bins], self.bin_window) + layout.first_action_bin_id
                constrained.scatter_(1, chosen[:, None], 0.0)
        return constrained


class ImageTokensLogitsProcessor(LogitsProcessor):
    """Keeps generated tokens in the layout of one frame: [start][grid H][grid W] (codes, row end) x rows [end].

    Structure tokens are forced; at code positions only VQ codes are allowed, so a decoded frame always has
    the model's grid. Non-finite code logits raise a FloatingPointError.
    """

    def __init__(self, config, prompt_length):
        self.layout = config.token_layout
        self.prompt_length = prompt_length
        self.template = self.layout.frame_template

    def __call__(self, input_ids, scores):
        offset = input_ids.shape[1] - self.prompt_length
        constrained = torch.full_like(scores, float("-inf"))
        forced = self.template[offset] if offset < len(self.template) else self.layout.separator_token_id
        if forced is None:
            codes = self.layout.image_code_slice
            _check_finite(scores[:, codes], "image-code logits")
            constrained[:, codes] = scores[:, codes]
        else:
            constrained[:, forced] = 0.0
        return constrained


class WorldVLAForConditionalGeneration(WorldVLAPreTrainedModel, GenerationMixin):
    """WorldVLA: the decoder with its language-model head, `predict_action` and the world-model methods."""

    _tied_weights_keys = {}
    # The loss is a weighted mean within each batch: Trainer must scale it for gradient accumulation itself.
    accepts_loss_kwargs = False

    def __init__(self, config):
        super().__init__(config)
        self.model = WorldVLAModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`, then a ValueError naming every weight that holds NaN or inf: such a
        model decodes garbage (NaN logits make every action bin the lowest one: full-speed motion)."""
        load = super().from_pretrained
        loaded = _load_naming_broken_files(lambda: load(*args, **kwargs), args[0] if args else kwargs.get("pretrained_model_name_or_path"), kwargs.get("subfolder", ""))
        (loaded[0] if isinstance(loaded, tuple) else loaded).check_weights_are_finite()
        return loaded

    def check_weights_are_finite(self):
        """Raise a ValueError naming the parameters and buffers that hold NaN or inf."""
        tensors = [*self.named_parameters(), *self.named_buffers()]
        broken = [
            name
            for name, tensor in tensors
            if tensor.is_floating_point() and tensor.device.type != "meta" and not torch.isfinite(tensor).all()
        ]
        if broken:
            shown = ", ".join(broken[:10]) + (f" and {len(broken) - 10} more" if len(broken) > 10 else "")
            raise ValueError(
                f"non-finite weights (NaN or inf) in {shown}: the checkpoint is corrupt or its training diverged; "
                "re-export or re-download it"
            )

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        past_key_values=None,
        inputs_embeds=None,
        labels=None,
        use_cache=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        logits_to_keep=0,
        **loss_kwargs,
    ):
        """Logits for (B, L) ids (or embeddings, see `WorldVLAModel.forward`); with targets, the class-weighted loss.

        Targets are `labels` (B, L), shifted here (position i predicts label i + 1), or `shift_labels` (B, L), already
        shifted (position i predicts shift_labels i), as context parallelism passes them; -100 is ignored, and
        `shift_labels` wins when both are given. `logits_to_keep` = n > 0 (or a tensor of positions) returns logits
        for the last n positions only; the loss never needs them: it is computed from the hidden states, chunk by
        chunk. Returns a `WorldVLACausalLMOutput`, or its tuple (None entries left out) with `return_dict=False`.
        """
        # `shift_labels` comes as a keyword, as in transformers' models: Trainer expects every named forward
        # parameter with "label" in its name in each batch. Any other keyword is refused.
        unknown = sorted(set(loss_kwargs) - {"shift_labels"})
        if unknown:
            raise TypeError(f"{type(self).__name__}.forward() got unexpected keyword arguments {unknown}")
        shift_labels = loss_kwargs.get("shift_labels")
        return_dict = self.config.return_dict if return_dict is None else return_dict
        outputs = self.model(
            input_ids,
            attention_mask,
            position_ids,
            past_key_values,
            inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        hidden_states = outputs.last_hidden_state
        losses = [None] * 4
        if labels is not None or shift_labels is not None:
            losses = self.compute_loss(hidden_states, labels, shift_labels)
        output = WorldVLACausalLMOutput(
            loss=losses[0],
            logits=self.lm_head(slice_logits_to_keep(hidden_states, logits_to_keep)),
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            action_loss=losses[1],
            image_loss=losses[2],
            z_loss=losses[3],
        )
        return output if return_dict else output.to_tuple()

    def compute_loss(self, hidden_states, labels=None, shift_labels=None):
        """Class-weighted cross-entropy (weight `image_loss_weight` on image codes, 1 elsewhere, mean over the
        weights) plus `z_loss_weight` * mean(logsumexp^2), over the labelled positions.

        Logits are made `loss_chunk_size` positions at a time by `lm_head` (the module, so adapters on it take part)
        in fp32 and, when gradients are needed, recomputed in the backward pass instead of stored, so memory never
        holds (B, L, vocab) fp32 logits.
        """
        config, layout = self.config, self.config.token_layout
        if shift_labels is None:
            if labels.shape != hidden_states.shape[:2]:
                raise ValueError(
                    f"labels of shape {tuple(labels.shape)} do not match the inputs {tuple(hidden_states.shape[:2])}"
                )
            targets, hidden_states = labels[:, 1:], hidden_states[:, :-1]
        else:
            if shift_labels.shape != hidden_states.shape[:2]:
                raise ValueError(
                    f"shift_labels of shape {tuple(shift_labels.shape)} do not match the inputs "
                    f"{tuple(hidden_states.shape[:2])}"
                )
            targets = shift_labels
        targets = targets.to(hidden_states.device)
        selected = targets != IGNORE_INDEX
        if not selected.any():
            zero = hidden_states.sum() * 0.0
            return zero, None, None, None
        hidden = hidden_states[selected]
        targets = targets[selected]
        cross_entropy, z_terms = [], []
        for start in range(0, targets.shape[0], config.loss_chunk_size):
            chunk = slice(start, start + config.loss_chunk_size)
            if torch.is_grad_enabled():
                terms = checkpoint(_chunk_loss_terms, self.lm_head, hidden[chunk], targets[chunk], use_reentrant=False)
            else:
                terms = _chunk_loss_terms(self.lm_head, hidden[chunk], targets[chunk])
            cross_entropy.append(terms[0])
            z_terms.append(terms[1])
        cross_entropy, z_terms = torch.cat(cross_entropy), torch.cat(z_terms)

        is_image, is_action = layout.is_image_code(targets), layout.is_action_bin(targets)
        weights = torch.where(is_image, config.image_loss_weight, 1.0).to(cross_entropy.dtype)
        z_loss = z_terms.mean()
        loss = (weights * cross_entropy).sum() / weights.sum() + config.z_loss_weight * z_loss

        def detached_mean(selection):
            return cross_entropy[selection].detach().mean() if selection.any() else None

        return loss, detached_mean(is_action), detached_mean(is_image), z_loss.detach()

    def generate(self, input_ids=None, attention_mask=None, **kwargs):
        """`GenerationMixin.generate`, with the attention mask all ones when none is given: BOS and padding share
        id 0, so a mask inferred from the padding id would hide the BOS token and shift every position."""
        if input_ids is not None and attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        return super().generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    def prepare_inputs_for_generation(
        self,
        input_ids,
        next_sequence_length=None,
        past_key_values=None,
        attention_mask=None,
        inputs_embeds=None,
        is_first_iteration=False,
        **kwargs,
    ):
        """Rebuild the action mask rows of the new tokens from the full sequence at every generation step."""
        if inputs_embeds is not None and is_first_iteration and input_ids.shape[1] != inputs_embeds.shape[1]:
            raise ValueError(
                "generate with inputs_embeds needs the matching input_ids too: the action mask is built from the ids"
            )
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        new_tokens = next_sequence_length or input_ids.shape[1]
        mask = build_action_attention_mask(input_ids, self.config, attention_mask, self.dtype, last_rows=new_tokens)
        kwargs["position_ids"] = position_ids_from_attention_mask(attention_mask)[:, -new_tokens:]
        return super().prepare_inputs_for_generation(
            input_ids,
            next_sequence_length=next_sequence_length,
            past_key_values=past_key_values,
            attention_mask=mask,
            inputs_embeds=inputs_embeds,
            is_first_iteration=is_first_iteration,
            **kwargs,
        )

    # -----------------------------------------------------------------------------------------------------------------
    # Policy
    # -----------------------------------------------------------------------------------------------------------------

    def _check_prompt(self, input_ids, attention_mask, new_tokens):
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must have shape (batch, length), got {tuple(input_ids.shape)}")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        longest = int(attention_mask.sum(-1).max()) + new_tokens
        if longest > self.config.max_position_embeddings:
            raise ValueError(
                f"prompt of {longest - new_tokens} tokens plus {new_tokens} generated ones exceeds the context of "
                f"{self.config.max_position_embeddings} tokens (max_position_embeddings)"
            )
        return attention_mask.to(input_ids.device)

    def _generate_with_grammar(self, input_ids, attention_mask, new_tokens, grammar, do_sample=False, **generation_kwargs):
        """`generate` exactly `new_tokens` tokens under a grammar logits processor; returns only the new tokens.

        `generate` warns that right padding gives wrong results and advises left padding. Not here: the mask and
        the positions of every step come from the full attention mask (`prepare_inputs_for_generation`), and a
        right-padded batch decodes exactly as its prompts one by one (tested), so that one warning is dropped.
        """
        generation_config = GenerationConfig(
            max_new_tokens=new_tokens,
            do_sample=do_sample,
            eos_token_id=None,
            pad_token_id=self.config.pad_token_id,
            bos_token_id=self.config.bos_token_id,
            **generation_kwargs,
        )
        generation_logger = logging.getLogger("transformers.generation.utils")
        generation_logger.addFilter(_drop_right_padding_warning)
        try:
            generated = self.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                generation_config=generation_config,
                logits_processor=LogitsProcessorList([grammar]),
            )
        finally:
            generation_logger.removeFilter(_drop_right_padding_warning)
        return generated[:, input_ids.shape[1] :]

    @torch.no_grad()
    def generate_action_tokens(self, input_ids, attention_mask=None, decoding="parallel"):
        """Greedy action-bin tokens (B, K, action_dim) for action prompts (B, P), right-padded; each bin as
        `windowed_bin_argmax` picks it with the config's `action_bin_window`.

        "parallel": the K blocks decoded together, each at its sequential positions (block k starts at
        P + k * block_length) over one shared prompt cache, `action_dim` forward passes of K tokens.
        "sequential": `generate`, token by token, the mask rebuilt from the full sequence at every step.
        Both give the same tokens: under the action mask no block sees another. Non-finite hidden states or
        bin logits raise a FloatingPointError rather than yield an action.
        """
        config = self.config
        chunk, block = config.action_chunk_size, config.action_block_length
        attention_mask = self._check_prompt(input_ids, attention_mask, chunk * block)
        frames = ((input_ids == config.token_layout.image_start_token_id) & attention_mask.bool()).sum(-1)
        most_frames = config.history_frames * config.cameras_per_step
        if int(frames.max()) > most_frames:
            raise ValueError(
                f"an action prompt holds {int(frames.max())} frames; this model was trained on at most "
                f"history_frames={config.history_frames}{' steps, each with its wrist frame,' if config.wrist_camera else ''} "
                f"(pass the last {most_frames})"
            )
        if decoding == "sequential":
            grammar = ActionChunkLogitsProcessor(config, input_ids.shape[1])
            generated = self._generate_with_grammar(input_ids, attention_mask, chunk * block, grammar)
            return generated.view(input_ids.shape[0], chunk, block)[:, :, 1:-1]
        if decoding != "parallel":
            raise ValueError(f"decoding must be 'parallel' or 'sequential', got {decoding!r}")
        if not config.use_action_attention_mask:
            raise ValueError(
                "parallel decoding relies on the action attention mask (blocks independent of each other); this "
                "model has use_action_attention_mask=False: use decoding='sequential'"
            )
        return self._decode_action_blocks_in_parallel(input_ids, attention_mask)

    def _decode_action_blocks_in_parallel(self, input_ids, attention_mask):
        config, layout = self.config, self.config.token_layout
        batch, chunk, device = input_ids.shape[0], config.action_chunk_size, input_ids.device
        cache = DynamicCache(config=config)
        # The prompt's hidden states are never read: the blocks start from their [action start] tokens. Values that
        # are not finite in the cache reach every step's hidden states, which are checked.
        self.model(input_ids, attention_mask, past_key_values=cache, use_cache=True, cache_only=True)

        # The new blocks start after the last image: besides their own block they see the real prompt tokens
        # outside action blocks.
        prompt_blocks, _ = find_action_blocks(input_ids, config)
        visible_prompt = (attention_mask.bool() & (prompt_blocks == 0))[:, None, :].expand(batch, chunk, -1)
        block_index = torch.arange(chunk, device=device)
        first_positions = attention_mask.sum(-1, keepdim=True) + block_index * layout.action_block_length
        tokens = torch.full((batch, chunk), layout.action_start_token_id, dtype=torch.long, device=device)
        bins = []
        for step in range(layout.action_dim):
            # Cached generated tokens are ordered step by step, K per step: a block sees its own column.
            own_block = (block_index[:, None] == block_index.repeat(step + 1)[None, :])[None].expand(batch, -1, -1)
            mask = additive_mask(torch.cat([visible_prompt, own_block], dim=-1), self.dtype)
            step_output = self.model(tokens, mask, first_positions + step, cache, use_cache=True, return_dict=True)
            hidden = step_output.last_hidden_state
            _check_finite(hidden, "hidden states")
            bin_logits = self.action_bin_logits(hidden)
            _check_finite(bin_logits, "action-bin logits")
            tokens = windowed_bin_argmax(bin_logits, config.action_bin_window) + layout.first_action_bin_id
            bins.append(tokens)
        return torch.stack(bins, dim=-1)

    def action_bin_logits(self, hidden_states):
        """The head's logits (..., n_bins) over the action bins only, for hidden states (..., hidden)."""
        bins = self.config.token_layout.action_bin_slice
        if type(self.lm_head) is nn.Linear:
            # The bin rows alone: the whole vocabulary's logits, thrown away here, were a tenth of a query's time.
            return F.linear(hidden_states, self.lm_head.weight[bins])
        # A wrapped head (a peft adapter) must act here as it does in `generate`: the module, then its bin columns.
        return self.lm_head(hidden_states)[..., bins]

    @torch.no_grad()
    def predict_action(self, input_ids, attention_mask=None, processor=None, unnorm_key=None, decoding="parallel"):
        """Continuous actions (B, K, action_dim) for B prompts, B = 1 included.

        `input_ids`/`attention_mask` come from `processor(text=instruction, images=history_frames)`; the
        processor un-normalises the bins with the statistics saved with the checkpoint under `unnorm_key`.
        """
        if processor is None:
            raise ValueError("predict_action needs the checkpoint's processor (it holds the action statistics)")
        processor.check_compatible(self.config)
        bin_tokens = self.generate_action_tokens(input_ids, attention_mask, decoding=decoding)
        return processor.decode_actions(bin_tokens.cpu().numpy(), unnorm_key=unnorm_key)

    # -----------------------------------------------------------------------------------------------------------------
    # World model
    # -----------------------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def generate_image_tokens(self, input_ids, attention_mask=None, do_sample=False, **generation_kwargs):
        """Token ids (B, image_sequence_length) of the next frame for world-model prompts (B, P)."""
        length = self.config.image_sequence_length
        attention_mask = self._check_prompt(input_ids, attention_mask, length)
        grammar = ImageTokensLogitsProcessor(self.config, input_ids.shape[1])
        return self._generate_with_grammar(input_ids, attention_mask, length, grammar, do_sample=do_sample, **generation_kwargs)

    @torch.no_grad()
    def predict_next_frame(self, images, actions, processor, unnorm_key=None, do_sample=False, **generation_kwargs):
        """The frames after `images` (uint8 HWC, or a list of them) once `actions` ((7,), or (B, 7)) are applied.

        Returns uint8 (B, H, W, 3), B = 1 for one frame. Greedy unless `do_sample`; `generation_kwargs`
        (temperature, top_k, ...) go to `GenerationConfig`.
        """
        processor.check_compatible(self.config)
        inputs = processor.build_world_model_inputs(images, actions, unnorm_key=unnorm_key).to(self.device)
        image_tokens = self.generate_image_tokens(**inputs, do_sample=do_sample, **generation_kwargs)
        return processor.decode_image_tokens(image_tokens.cpu())

    @torch.no_grad()
    def rollout(self, image, actions, processor, unnorm_key=None, do_sample=False, **generation_kwargs):
        """Imagine N frames: apply actions (N, 7) one by one from `image`, feeding each generated frame back.

        Returns uint8 (N, H, W, 3). The generated codes are fed back as they are (no decode and re-encode).
        """
        processor.check_compatible(self.config)
        actions = np.asarray(actions, dtype=np.float64)
        if actions.ndim != 2:
            raise ValueError(f"rollout takes actions of shape (N, {self.config.action_dim}), got {actions.shape}")
        codes = processor.encode_images([image])[0]
        generated = []
        for action in actions:
            inputs = processor.build_world_model_inputs_from_codes([codes], action[None], unnorm_key=unnorm_key)
            image_tokens = self.generate_image_tokens(**inputs.to(self.device), do_sample=do_sample, **generation_kwargs)
            codes = processor.image_tokens_to_codes(image_tokens[0].cpu())
            generated.append(codes)
        return processor.decode_image_codes(torch.stack(generated))


WorldVLAForConditionalGeneration.register_for_auto_class("AutoModelForCausalLM")
