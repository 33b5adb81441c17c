"""Tests of WorldVLA's VQGAN image tokenizer (`WorldVLAVQModel`) on tiny random configurations.

What they pin down:
- the encoder and quantizer give the same codes as transformers' `ChameleonVQVAE` (Meta's encoder as
  ported by Hugging Face) loaded with the same weights;
- the decoder equals a plain functional re-implementation of taming-transformers' `Decoder`, written
  below from the taming source;
- parameter names are taming's, so Meta's `vqgan.ckpt` loads with `strict=True`;
- shapes, determinism, save / load, and the uint8 <-> pixel value helpers.

The time of the real-size model is measured by `bench/vqgan.py`.
"""

import math
import os

# Nothing here needs the Hub; without this, transformers may spend a minute on DNS retries.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import ChameleonVQVAE, ChameleonVQVAEConfig

from configuration_worldvla import WorldVLAVQConfig
from modeling_worldvla import WorldVLAVQModel
from processing_worldvla import images_to_pixel_values, pixel_values_to_images


torch.set_num_threads(1)

# 2 levels, 1 residual block, attention at the second level (16 px when the nominal resolution is 32),
# 4 groups per GroupNorm so that each group spans several channels.
TINY = dict(
    embed_dim=4,
    num_embeddings=16,
    latent_channels=8,
    base_channels=8,
    channel_multiplier=[1, 2],
    num_res_blocks=1,
    attn_resolutions=[16],
    resolution=32,
    norm_num_groups=4,
)


def build_model(seed: int = 0, **overrides) -> WorldVLAVQModel:
    torch.manual_seed(seed)
    return WorldVLAVQModel(WorldVLAVQConfig(**{**TINY, **overrides})).eval()


def random_pixel_values(batch: int, size: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, size, size, generator=generator) * 2 - 1


# --------------------------------------------------------------------------------------------------
# Encoder: parity with transformers' ChameleonVQVAE
# --------------------------------------------------------------------------------------------------


def test_encoder_codes_match_transformers_chameleon_vqvae():
    # ChameleonVQVAE hard-codes 32 groups per GroupNorm, so every width here is a multiple of 32.
    # Three levels, two blocks, attention inside the middle level (16 px of a nominal 32).
    shared = dict(
        embed_dim=8,
        num_embeddings=64,
        latent_channels=16,
        base_channels=32,
        channel_multiplier=[1, 2, 2],
        num_res_blocks=2,
        attn_resolutions=[16],
        resolution=32,
    )
    torch.manual_seed(0)
    ours = WorldVLAVQModel(WorldVLAVQConfig(norm_num_groups=32, **shared)).eval()
    pixel_values = random_pixel_values(batch=3, size=48)  # 48 px: not the nominal size, 12 x 12 codes
    # A codebook made of the encoder's own latents plus a little noise, as a trained codebook is: most
    # positions then have several close candidates, so any difference in the arithmetic would show.
    with torch.no_grad():
        latents = ours.quant_conv(ours.encoder(pixel_values)).permute(0, 2, 3, 1).reshape(-1, 8)
        generator = torch.Generator().manual_seed(7)
        picked = latents[torch.randperm(latents.shape[0], generator=generator)[:64]]
        noise = 0.05 * picked.std() * torch.randn(picked.shape, generator=generator)
        ours.quantize.embedding.weight.copy_(picked + noise)

    reference = ChameleonVQVAE(ChameleonVQVAEConfig(double_latent=False, **shared)).eval()
    # Key mapping: ChameleonVQVAE uses taming's names too (`encoder.*`, `quant_conv.*`, `quantize.embedding.*`,
    # `post_quant_conv.*`), so the mapping is the identity on those; it has no decoder, so `decoder.*` is dropped.
    encoder_side = {k: v for k, v in ours.state_dict().items() if not k.startswith("decoder.")}
    reference.load_state_dict(encoder_side, strict=True)

    codes = ours.encode(pixel_values)
    with torch.no_grad():
        reference_codes = reference.encode(pixel_values).image_tokens.reshape(codes.shape)

    assert codes.shape == (3, 12, 12)
    assert torch.equal(codes, reference_codes)
    # Stronger than equal codes: the latents before the argmin are bit-identical, so near-ties in Meta's
    # 8192-vector codebook resolve the same way too.
    with torch.no_grad():
        assert torch.equal(
            ours.quant_conv(ours.encoder(pixel_values)), reference.quant_conv(reference.encoder(pixel_values))
        )
    assert codes.unique().numel() >= 32  # the comparison is not between two near-constant maps


# --------------------------------------------------------------------------------------------------
# Decoder: parity with a functional re-implementation of taming's Decoder
# --------------------------------------------------------------------------------------------------


def reference_taming_decode(state_dict: dict, codes: torch.Tensor, config: WorldVLAVQConfig) -> torch.Tensor:
    """Taming's `VQModel.decode(quantize.get_codebook_entry(codes))`, written as plain functions of the
    state dict. Unclamped output."""
    groups = config.norm_num_groups

    def conv(x, name, padding=0):
        return F.conv2d(x, state_dict[f"{name}.weight"], state_dict[f"{name}.bias"], padding=padding)

    def norm(x, name):
        return F.group_norm(x, groups, state_dict[f"{name}.weight"], state_dict[f"{name}.bias"], eps=1e-6)

    def swish(x):
        return x * torch.sigmoid(x)

    def resnet_block(x, name):
        h = conv(swish(norm(x, f"{name}.norm1")), f"{name}.conv1", padding=1)
        h = conv(swish(norm(h, f"{name}.norm2")), f"{name}.conv2", padding=1)
        if f"{name}.nin_shortcut.weight" in state_dict:
            x = conv(x, f"{name}.nin_shortcut")
        return x + h

    def attention_block(x, name):
        h = norm(x, f"{name}.norm")
        batch, channels, height, width = x.shape
        q, k, v = (conv(h, f"{name}.{p}").reshape(batch, channels, height * width) for p in "qkv")
        weights = torch.softmax(torch.einsum("bci,bcj->bij", q, k) / math.sqrt(channels), dim=-1)
        out = torch.einsum("bij,bcj->bci", weights, v).reshape(batch, channels, height, width)
        return x + conv(out, f"{name}.proj_out")

    num_levels = len(config.channel_multiplier)
    resolution = config.resolution // 2 ** (num_levels - 1)
    h = state_dict["quantize.embedding.weight"][codes].permute(0, 3, 1, 2)
    h = conv(h, "post_quant_conv")
    h = conv(h, "decoder.conv_in", padding=1)
    h = resnet_block(h, "decoder.mid.block_1")
    h = attention_block(h, "decoder.mid.attn_1")
    h = resnet_block(h, "decoder.mid.block_2")
    for level in reversed(range(num_levels)):
        for block in range(config.num_res_blocks + 1):
            h = resnet_block(h, f"decoder.up.{level}.block.{block}")
            if resolution in config.attn_resolutions:
                h = attention_block(h, f"decoder.up.{level}.attn.{block}")
        if level != 0:
            h = conv(F.interpolate(h, scale_factor=2.0, mode="nearest"), f"decoder.up.{level}.upsample.conv", 1)
            resolution *= 2
    h = conv(swish(norm(h, "decoder.norm_out")), "decoder.conv_out", padding=1)
    return h


def test_decoder_matches_reference_taming_decoder():
    model = build_model(channel_multiplier=[1, 2, 2], attn_resolutions=[16])  # attention in the decoder's level 1
    generator = torch.Generator().manual_seed(2)
    codes = torch.randint(0, model.config.num_embeddings, (2, 5, 6), generator=generator)  # non-square

    with torch.no_grad():
        expected = reference_taming_decode(model.state_dict(), codes, model.config)
        unclamped = model.decoder(model.post_quant_conv(model.get_codebook_entry(codes)))
        decoded = model.decode(codes)

    assert decoded.shape == (2, 3, 20, 24)
    torch.testing.assert_close(unclamped, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(decoded, expected.clamp(-1, 1), rtol=1e-5, atol=1e-5)
    inside = ((expected > -1) & (expected < 1)).float().mean().item()
    assert inside > 0.2  # most outputs are not saturated, so the comparison is not a comparison of clamps


# --------------------------------------------------------------------------------------------------
# Parameter names: taming's, as in Meta's vqgan.ckpt
# --------------------------------------------------------------------------------------------------

# Every module of the TINY configuration with its weight shape; each also has a bias of shape (out,).
# Widths: level 0 has 8 channels, level 1 has 16; latent 8; codebook 16 x 4.
# Encoder level 0 (32 px) has no attention, level 1 (16 px) has one attention block per residual block.
# Decoder level 1 (16 px) runs first, with 2 residual blocks + 2 attention blocks + upsampler; level 0
# (32 px) has 2 residual blocks, the first narrowing 16 -> 8 channels through `nin_shortcut`.
RESNET_8 = {"norm1": (8,), "conv1": (8, 8, 3, 3), "norm2": (8,), "conv2": (8, 8, 3, 3)}
RESNET_16 = {"norm1": (16,), "conv1": (16, 16, 3, 3), "norm2": (16,), "conv2": (16, 16, 3, 3)}
RESNET_8_TO_16 = {
    "norm1": (8,), "conv1": (16, 8, 3, 3), "norm2": (16,), "conv2": (16, 16, 3, 3), "nin_shortcut": (16, 8, 1, 1),
}
RESNET_16_TO_8 = {
    "norm1": (16,), "conv1": (8, 16, 3, 3), "norm2": (8,), "conv2": (8, 8, 3, 3), "nin_shortcut": (8, 16, 1, 1),
}
ATTN_16 = {"norm": (16,), "q": (16, 16, 1, 1), "k": (16, 16, 1, 1), "v": (16, 16, 1, 1), "proj_out": (16, 16, 1, 1)}
EXPECTED_TINY_MODULES = {
    "encoder.conv_in": (8, 3, 3, 3),
    **{f"encoder.down.0.block.0.{k}": s for k, s in RESNET_8.items()},
    "encoder.down.0.downsample.conv": (8, 8, 3, 3),
    **{f"encoder.down.1.block.0.{k}": s for k, s in RESNET_8_TO_16.items()},
    **{f"encoder.down.1.attn.0.{k}": s for k, s in ATTN_16.items()},
    **{f"encoder.mid.block_1.{k}": s for k, s in RESNET_16.items()},
    **{f"encoder.mid.attn_1.{k}": s for k, s in ATTN_16.items()},
    **{f"encoder.mid.block_2.{k}": s for k, s in RESNET_16.items()},
    "encoder.norm_out": (16,),
    "encoder.conv_out": (8, 16, 3, 3),
    "quant_conv": (4, 8, 1, 1),
    "post_quant_conv": (8, 4, 1, 1),
    "decoder.conv_in": (16, 8, 3, 3),
    **{f"decoder.mid.block_1.{k}": s for k, s in RESNET_16.items()},
    **{f"decoder.mid.attn_1.{k}": s for k, s in ATTN_16.items()},
    **{f"decoder.mid.block_2.{k}": s for k, s in RESNET_16.items()},
    **{f"decoder.up.1.block.0.{k}": s for k, s in RESNET_16.items()},
    **{f"decoder.up.1.attn.0.{k}": s for k, s in ATTN_16.items()},
    **{f"decoder.up.1.block.1.{k}": s for k, s in RESNET_16.items()},
    **{f"decoder.up.1.attn.1.{k}": s for k, s in ATTN_16.items()},
    "decoder.up.1.upsample.conv": (16, 16, 3, 3),
    **{f"decoder.up.0.block.0.{k}": s for k, s in RESNET_16_TO_8.items()},
    **{f"decoder.up.0.block.1.{k}": s for k, s in RESNET_8.items()},
    "decoder.norm_out": (8,),
    "decoder.conv_out": (3, 8, 3, 3),
}


def test_state_dict_has_taming_names_and_shapes():
    expected = {"quantize.embedding.weight": (16, 4)}
    for module, weight_shape in EXPECTED_TINY_MODULES.items():
        expected[f"{module}.weight"] = weight_shape
        expected[f"{module}.bias"] = (weight_shape[0],)
    state_dict = build_model().state_dict()
    assert {k: tuple(v.shape) for k, v in state_dict.items()} == expected
    assert len(state_dict) == 155


def test_real_size_encoder_names_and_shapes_match_transformers():
    # transformers' Chameleon conversion script copies Meta's vqgan.ckpt keys unchanged, so equal names and
    # shapes here mean Meta's encoder weights load into ours. Built on the meta device: no memory, no time.
    with torch.device("meta"):
        ours = WorldVLAVQModel(WorldVLAVQConfig())
        reference = ChameleonVQVAE(ChameleonVQVAEConfig(resolution=256, attn_resolutions=[]))
    ours_encoder_side = {k: tuple(v.shape) for k, v in ours.state_dict().items() if not k.startswith("decoder.")}
    assert ours_encoder_side == {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    assert ours.config.downsample_factor == 16
    assert ours.quantize.embedding.weight.shape == (8192, 256)
    assert sum(p.numel() for p in ours.parameters()) == 68_718_467
    # Decoder: 5 levels of 3 blocks, upsamplers on levels 1-4, no attention outside `mid`.
    decoder_keys = [k for k in ours.state_dict() if k.startswith("decoder.up.")]
    assert not any(".attn." in k for k in decoder_keys)
    assert sorted({k.split(".")[2] for k in decoder_keys}) == ["0", "1", "2", "3", "4"]
    assert sorted({".".join(k.split(".")[2:4]) for k in decoder_keys if "upsample" in k}) == [
        "1.upsample", "2.upsample", "3.upsample", "4.upsample",
    ]


# --------------------------------------------------------------------------------------------------
# Shapes, determinism, quantizer
# --------------------------------------------------------------------------------------------------


def test_encode_decode_shapes_with_real_depth():
    # Meta's depth (5 levels, 2 blocks, 16x downsampling) with 8-channel levels: 256 px -> 16 x 16 codes.
    model = build_model(channel_multiplier=[1, 1, 2, 2, 4], num_res_blocks=2, attn_resolutions=[], resolution=256)
    pixel_values = random_pixel_values(batch=2, size=256)
    output = model(pixel_values)
    assert output.codes.shape == (2, 16, 16)
    assert output.codes.dtype == torch.long
    assert output.reconstruction.shape == (2, 3, 256, 256)
    assert output.reconstruction.dtype == torch.float32
    assert output.reconstruction.min() >= -1 and output.reconstruction.max() <= 1
    assert model.decode(output.codes[:, :8, :4]).shape == (2, 3, 128, 64)


def test_encode_and_decode_are_deterministic_and_codes_in_range():
    model = build_model()
    pixel_values = random_pixel_values(batch=2, size=32)
    codes = model.encode(pixel_values)
    assert torch.equal(codes, model.encode(pixel_values.clone()))
    assert torch.equal(codes, build_model().encode(pixel_values))  # same seed, same weights, same codes
    assert int(codes.min()) >= 0 and int(codes.max()) < model.config.num_embeddings
    assert codes.unique().numel() > 1
    assert torch.equal(model.decode(codes), model.decode(codes))
    # Batch independence: an image's codes do not depend on its batch neighbours.
    assert torch.equal(model.encode(pixel_values[1:]), codes[1:])


def test_quantizer_returns_the_index_of_a_codebook_vector_placed_exactly():
    model = build_model()
    codebook = model.quantize.embedding.weight.detach()
    generator = torch.Generator().manual_seed(3)
    chosen = torch.randint(0, codebook.shape[0], (2, 3, 5), generator=generator)
    latents = codebook[chosen].permute(0, 3, 1, 2)  # (B, embed_dim, h, w) holding exact codebook vectors
    assert torch.equal(model.quantize(latents), chosen)
    assert torch.equal(model.get_codebook_entry(chosen), latents)


def test_runs_in_float32_under_autocast_and_refuses_low_precision_weights():
    model = build_model()
    pixel_values = random_pixel_values(batch=2, size=32)
    codes = model.encode(pixel_values)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(model.encode(pixel_values), codes)
        assert model.decode(codes).dtype == torch.float32
    assert torch.equal(model.encode(pixel_values.double()), codes)  # inputs are cast to float32
    with pytest.raises(RuntimeError, match="float32"):
        model.to(torch.bfloat16).encode(pixel_values)


def re_shape(shape) -> str:
    """Regular expression matching `str(shape)` of a tuple."""
    return r"\(" + r", ".join(str(d) for d in shape) + (r",\)" if len(shape) == 1 else r"\)")


@pytest.mark.parametrize(
    "bad_shape",
    [(3, 32, 32), (1, 1, 32, 32), (1, 4, 32, 32), (1, 3, 33, 32), (1, 3, 32, 31), (1, 3, 1, 32, 32)],
)
def test_encode_rejects_bad_shapes_naming_expected_and_got(bad_shape):
    model = build_model()
    expected = r"\(batch, 3, H, W\) with H and W divisible by 2.*got "
    with pytest.raises(ValueError, match=expected + re_shape(bad_shape)):
        model.encode(torch.zeros(bad_shape))


def test_encode_and_decode_reject_wrong_types():
    model = build_model()
    with pytest.raises(ValueError, match="images_to_pixel_values"):
        model.encode(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\[0, 16\)"):
        model.decode(torch.full((1, 2, 2), 16))
    with pytest.raises(ValueError, match=r"\[0, 16\)"):
        model.decode(torch.full((1, 2, 2), -1))
    with pytest.raises(ValueError, match="integer"):
        model.decode(torch.zeros(1, 2, 2))
    with pytest.raises(ValueError, match=r"\(batch, height, width\)"):
        model.decode(torch.zeros(4, dtype=torch.long))


# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------


def test_config_defaults_are_metas_vqgan():
    config = WorldVLAVQConfig()
    assert (config.embed_dim, config.num_embeddings, config.latent_channels) == (256, 8192, 256)
    assert (config.base_channels, config.channel_multiplier, config.num_res_blocks) == (128, [1, 1, 2, 2, 4], 2)
    assert (config.attn_resolutions, config.in_channels, config.out_channels) == ([], 3, 3)
    assert (config.double_latent, config.dropout, config.norm_num_groups) == (False, 0.0, 32)
    assert config.model_type == "worldvla_vqgan"
    assert config.downsample_factor == 16


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(norm_num_groups=3), "must divide every channel count"),
        (dict(channel_multiplier=[]), "channel_multiplier"),
        (dict(channel_multiplier=[1, 0]), "channel_multiplier"),
        (dict(embed_dim=0), "embed_dim"),
        (dict(num_embeddings=2.5), "num_embeddings"),
        (dict(dropout=1.0), "dropout"),
        (dict(double_latent=True), "double_latent"),
        (dict(attn_resolutions=[8]), "match no level"),
        (dict(resolution=31), "divisible by the downsample factor 2"),
    ],
)
def test_config_rejects_invalid_values(overrides, message):
    with pytest.raises(ValueError, match=message):
        WorldVLAVQConfig(**{**TINY, **overrides})


# --------------------------------------------------------------------------------------------------
# Save / load
# --------------------------------------------------------------------------------------------------


def test_save_pretrained_round_trip_is_exact_and_uses_safetensors(tmp_path):
    model = build_model()
    pixel_values = random_pixel_values(batch=2, size=32)
    codes = model.encode(pixel_values)
    with torch.no_grad():
        pixels = model.decode(codes)

    model.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]

    reloaded = WorldVLAVQModel.from_pretrained(tmp_path)
    config_fields = {k: v for k, v in model.config.to_dict().items() if k != "_name_or_path"}
    assert {k: v for k, v in reloaded.config.to_dict().items() if k != "_name_or_path"} == config_fields
    for (name, tensor), (reloaded_name, reloaded_tensor) in zip(
        model.state_dict().items(), reloaded.state_dict().items(), strict=True
    ):
        assert name == reloaded_name and torch.equal(tensor, reloaded_tensor), name
    assert torch.equal(reloaded.encode(pixel_values), codes)
    with torch.no_grad():
        assert torch.equal(reloaded.decode(codes), pixels)

    # Asking for bf16 keeps the VQGAN in float32 (its codes would change otherwise).
    low_precision = WorldVLAVQModel.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert {p.dtype for p in low_precision.parameters()} == {torch.float32}
    assert torch.equal(low_precision.encode(pixel_values), codes)


def test_taming_style_checkpoint_loads_strictly_after_dropping_loss_keys():
    # Meta's vqgan.ckpt is {"state_dict": {taming keys..., "loss.*": discriminator / LPIPS weights}}.
    source = build_model(seed=5)
    checkpoint = {"state_dict": {**source.state_dict(), "loss.discriminator.main.0.weight": torch.zeros(1)}}
    target = build_model(seed=6)
    weights = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("loss.")}
    target.load_state_dict(weights, strict=True)
    pixel_values = random_pixel_values(batch=1, size=32)
    assert torch.equal(target.encode(pixel_values), source.encode(pixel_values))


# --------------------------------------------------------------------------------------------------
# Pixel helpers
# --------------------------------------------------------------------------------------------------


def test_images_to_pixel_values_scales_exactly_like_chameleon():
    all_values = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)  # (16, 16, 3)
    pixel_values = images_to_pixel_values(all_values)
    assert pixel_values.shape == (1, 3, 16, 16) and pixel_values.dtype == torch.float32
    assert pixel_values[0, 0, 0, 0].item() == -1.0 and pixel_values[0, 0, 15, 15].item() == 1.0
    # Chameleon's image_tokenizer: np.array(img) / 255.0 * 2 - 1 in float64, then .float().
    chameleon = torch.from_numpy(all_values / 255.0 * 2 - 1).permute(2, 0, 1).float()
    assert torch.equal(pixel_values[0], chameleon)


def test_images_to_pixel_values_accepts_pil_lists_and_batches():
    generator = np.random.default_rng(4)
    batch = generator.integers(0, 256, size=(3, 8, 12, 3), dtype=np.uint8)  # (N, H, W, 3)
    from_batch = images_to_pixel_values(batch)
    assert from_batch.shape == (3, 3, 8, 12)
    assert torch.equal(images_to_pixel_values(list(batch)), from_batch)
    assert torch.equal(images_to_pixel_values([Image.fromarray(image) for image in batch]), from_batch)
    assert torch.equal(images_to_pixel_values(Image.fromarray(batch[1])), from_batch[1:2])
    assert torch.equal(from_batch[2, :, 5, 7], torch.from_numpy(batch[2, 5, 7] / 255.0 * 2 - 1).float())


def test_uint8_round_trip_through_pixel_values_is_exact():
    images = np.random.default_rng(5).integers(0, 256, size=(2, 16, 16, 3), dtype=np.uint8)
    images[0, 0, :4] = [[0, 0, 0], [255, 255, 255], [127, 128, 1], [254, 2, 253]]
    restored = pixel_values_to_images(images_to_pixel_values(images))
    assert restored.dtype == np.uint8 and restored.shape == (2, 16, 16, 3)
    assert np.array_equal(restored, images)


def test_pixel_values_to_images_rounds_and_clips():
    pixel_values = torch.tensor([-1.5, -1.0, 0.0, 1.0, 2.0, 2 * 100.4 / 255 - 1, 2 * 100.6 / 255 - 1])
    images = pixel_values_to_images(pixel_values.reshape(1, 1, 1, 7).expand(1, 3, 1, 7))
    assert images.shape == (1, 1, 7, 3)
    assert images[0, 0, :, 0].tolist() == [0, 0, 128, 255, 255, 100, 101]  # 127.5 rounds half to even: 128


@pytest.mark.parametrize(
    "images, message",
    [
        (np.zeros((8, 8, 3), dtype=np.float32), "uint8"),
        (np.zeros((2, 8, 8, 3), dtype=np.int64), "uint8"),
        (np.zeros((8, 8), dtype=np.uint8), r"\(H, W, 3\)"),
        (np.zeros((8, 8, 4), dtype=np.uint8), r"got shape \(1, 8, 8, 4\)"),
        (np.zeros((2, 3, 8, 8), dtype=np.uint8), r"got shape \(2, 3, 8, 8\)"),  # channels first
        ([np.zeros((8, 8, 3), np.uint8), np.zeros((4, 8, 3), np.uint8)], "same shape"),
        ([], "empty"),
        (Image.new("L", (8, 8)), "RGB"),
        (Image.new("RGBA", (8, 8)), "convert"),
    ],
)
def test_images_to_pixel_values_rejects_bad_inputs(images, message):
    with pytest.raises(ValueError, match=message):
        images_to_pixel_values(images)


def test_pixel_values_to_images_rejects_bad_inputs():
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        pixel_values_to_images(torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match="float"):
        pixel_values_to_images(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
