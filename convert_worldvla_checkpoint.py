"""Convert a checkpoint of the authors' WorldVLA release into a checkpoint of this repository.

The release (https://huggingface.co/Alibaba-DAMO-Academy/WorldVLA, code github.com/alibaba-damo-academy/WorldVLA)
holds, per LIBERO suite and resolution, a transformers-4.48 Chameleon checkpoint of the authors' own class
(`model_256/<suite>/`, `model_512/<suite>/`: config.json + bf16 safetensors shards), and next to it Meta's image
and text tokenizers (`chameleon/tokenizer/`: `text_tokenizer.json`, `vqgan.yaml`, `vqgan.ckpt`) and the
Hugging Face tokenizer their data pipeline encodes text with (`base_model/`). This script turns one model folder
plus those tokenizers into one folder that loads with

    AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)   # WorldVLAForConditionalGeneration
    AutoProcessor.from_pretrained(out, trust_remote_code=True)          # WorldVLAProcessor (text, VQGAN, actions)

What it does:
  * language model: every tensor mapped by name; the QK-norm weight and bias, stored as (1, head_dim) rows shared
    by all heads (Chameleon's `model_parallel_size` = 1), are repeated to (num_heads, head_dim); the release's
    `model.vqmodel.*` copy of the VQ encoder, if present, is dropped (the processor carries the full VQGAN).
    Any other missing or unexpected key is an error naming it. Tensors are streamed one by one from the source
    shards into new shards (`--max-shard-size`), dtype kept unless `--dtype`: no 7B model is ever built in memory.
  * config: sizes, RMSNorm eps, RoPE theta, residual dropout from the release; the released token ids (checked
    against the tokenizer's names); the suite's action chunk size (5, or 10 for libero_10) and the resolution.
  * processor: the text tokenizer; the VQGAN (encoder and decoder) from `vqgan.yaml` + `vqgan.ckpt`, unpickled
    with `torch.load(weights_only=True)` and inert stand-ins for a short allow-list of Lightning bookkeeping
    types (anything else is refused); the release's LIBERO action bounds under the suite's key.

    python convert_worldvla_checkpoint.py \\
        --model-dir WorldVLA/model_256/libero_spatial \\
        --tokenizer-dir WorldVLA/chameleon/tokenizer \\
        --base-model-dir WorldVLA/base_model \\
        --output-dir worldvla-libero-spatial-256 [--push-to-hub user/worldvla-libero-spatial-256]
"""

import argparse
import json
import logging
import math
import os
import pickle
import re
import shutil
import sys
from pathlib import Path

import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from configuration_worldvla import (  # noqa: E402
    MAX_IMAGE_GRID,
    RELEASED_TOKEN_LAYOUT,
    WorldVLAConfig,
    WorldVLAVQConfig,
)
from modeling_worldvla import WorldVLAForConditionalGeneration, WorldVLAVQModel  # noqa: E402
from processing_worldvla import LIBERO_ACTION_STATISTICS, WorldVLAProcessor  # noqa: E402
from worldvla_cli import HelpFormatter  # noqa: E402

logger = logging.getLogger("convert_worldvla_checkpoint")

# Chunk size K of each released suite (worldvla/configs/libero_*_all/*_ck_{5,10}_*.yaml).
SUITE_CHUNK_SIZES = {"libero_spatial": 5, "libero_object": 5, "libero_goal": 5, "libero_10": 10}
SUITE_ALIASES = {
    "spatial": "libero_spatial",
    "object": "libero_object",
    "goal": "libero_goal",
    "10": "libero_10",
    "long": "libero_10",
}
RELEASED_IMAGE_SIZES = (256, 512)
RELEASED_HISTORY_FRAMES = 2  # "his_2" in every released experiment

# Released tensors that are deliberately not converted, with the reason. Nothing else is ever dropped.
DROPPED_MODEL_KEY_PREFIXES = {
    "model.vqmodel.": "transformers' Chameleon keeps a copy of the VQ encoder in the language model; the processor "
    "carries the full VQGAN (encoder and decoder) from vqgan.ckpt instead",
}
DROPPED_VQGAN_KEY_PREFIXES = {"loss.": "LPIPS and discriminator weights, used only to train the VQGAN"}

# Globals a Lightning-era VQGAN checkpoint may reference outside its state_dict (callback states keyed by the
# callback class, paths, argparse / omegaconf hyper-parameters, numpy scalars). Each is replaced by an inert
# stand-in while unpickling: nothing from those packages is imported or run, and the objects are discarded.
CHECKPOINT_BOOKKEEPING_GLOBALS = (
    "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
    "lightning.pytorch.callbacks.model_checkpoint.ModelCheckpoint",
    "argparse.Namespace",
    "pathlib.PosixPath",
    "pathlib.WindowsPath",
    "omegaconf.dictconfig.DictConfig",
    "omegaconf.listconfig.ListConfig",
    "omegaconf.base.ContainerMetadata",
    "omegaconf.base.Metadata",
    "omegaconf.nodes.AnyNode",
    "typing.Any",
    "numpy.core.multiarray.scalar",
    "numpy._core.multiarray.scalar",
    "numpy.dtype",
)

# taming's VQModel options this model implements only at their defaults.
TAMING_FIXED_OPTIONS = {
    "give_pre_end": False,
    "tanh_out": False,
    "resamp_with_conv": True,
    "use_linear_attn": False,
    "attn_type": "vanilla",
}

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
SAFETENSORS_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64}


class ConversionError(Exception):
    """The inputs are not a WorldVLA release this converter understands; the message says what and where."""


class _DiscardedPickleObject:
    """Inert stand-in for an allow-listed bookkeeping global: accepts any constructor arguments and state, keeps
    nothing, runs nothing."""

    def __new__(cls, *args, **kwargs):
        return super().__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


# ---------------------------------------------------------------------------------------------------------------------
# Reading the release
# ---------------------------------------------------------------------------------------------------------------------


def parse_size(text):
    """ "5GB", "500MB", "2GiB", "1000" -> bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B)?\s*", str(text), flags=re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 5GB, 500MB, 2GiB)")
    number, unit = float(match.group(1)), (match.group(2) or "B").upper()
    base = 1024 if "I" in unit else 1000
    power = {"B": 0, "K": 1, "M": 2, "G": 3, "T": 4}[unit[0]]
    return int(number * base**power)


def detect_suite_and_image_size(model_dir):
    """(suite, image size) read from the path: `model_256/libero_spatial` or `WorldVLA-ActionModel-LIBERO-Spatial-256`.
    Either is None when the path does not say."""
    text = str(Path(model_dir).resolve()).lower()
    suite = re.search(r"libero[_-](spatial|object|goal|10|long)(?![a-z0-9])", text)
    size = re.findall(r"(?:^|[/_-])(256|512)(?=$|[/_-])", text)
    return (SUITE_ALIASES[suite.group(1)] if suite else None), (int(size[-1]) if size else None)


def read_released_config(model_dir):
    """The release's config.json, checked for the options this model implements."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise ConversionError(
            f"{model_dir} has no config.json: pass the released model folder (e.g. model_256/libero_spatial)"
        )
    released = json.loads(path.read_text())
    if released.get("model_type") != "chameleon":
        raise ConversionError(
            f"{path}: model_type is {released.get('model_type')!r}, a WorldVLA release has 'chameleon'"
        )
    unsupported = {
        "swin_norm": (released.get("swin_norm", False), False),
        "rope_scaling": (released.get("rope_scaling"), None),
    }
    for name, (value, supported) in unsupported.items():
        if value != supported:
            raise ConversionError(f"{path}: {name}={value!r} is not supported (only {supported!r}, as in the release)")
    logger.info("released config: %s, architectures %s", path, released.get("architectures"))
    if released.get("mask_image_logits", False):
        logger.warning(
            "%s says mask_image_logits=true; the authors run every model with --unmask_image_logits, and this "
            "repository never masks image logits (the world model generates images)",
            path,
        )
    return released


def build_worldvla_config(released, image_size, chunk_size, image_patch_size):
    """WorldVLAConfig of the converted model: the release's sizes and numerics, the released token layout."""
    config = WorldVLAConfig(
        vocab_size=released["vocab_size"],
        hidden_size=released["hidden_size"],
        intermediate_size=released["intermediate_size"],
        num_hidden_layers=released["num_hidden_layers"],
        num_attention_heads=released["num_attention_heads"],
        num_key_value_heads=released.get("num_key_value_heads") or released["num_attention_heads"],
        max_position_embeddings=released["max_position_embeddings"],
        rms_norm_eps=released["rms_norm_eps"],
        rope_theta=released["rope_theta"],
        attention_bias=released.get("attention_bias", False),
        mlp_bias=released.get("mlp_bias", False),
        hidden_act=released.get("hidden_act", "silu"),
        attention_dropout=released.get("attention_dropout", 0.0),
        residual_dropout=released.get("dropout", 0.0),
        initializer_range=released.get("initializer_range", 0.02),
        tie_word_embeddings=released.get("tie_word_embeddings", False),
        z_loss_weight=released.get("z_loss_weight", 0.0),
        use_qk_norm=True,
        action_chunk_size=chunk_size,
        history_frames=RELEASED_HISTORY_FRAMES,
        image_size=image_size,
        image_patch_size=image_patch_size,
        **RELEASED_TOKEN_LAYOUT,
    )
    return config


def released_weight_map(model_dir):
    """{tensor name: shard file name} from model.safetensors.index.json, or from a single model.safetensors."""
    model_dir = Path(model_dir)
    index_path = model_dir / "model.safetensors.index.json"
    if index_path.is_file():
        weight_map = json.loads(index_path.read_text())["weight_map"]
    elif (model_dir / "model.safetensors").is_file():
        with safe_open(model_dir / "model.safetensors", framework="pt") as source:
            weight_map = {name: "model.safetensors" for name in source.keys()}
    else:
        raise ConversionError(f"{model_dir} has neither model.safetensors.index.json nor model.safetensors")
    missing_files = sorted({shard for shard in weight_map.values() if not (model_dir / shard).is_file()})
    if missing_files:
        raise ConversionError(f"{index_path} names shard files that are not in {model_dir}: {missing_files}")
    return weight_map


def released_shapes(model_dir, weight_map):
    """{tensor name: (shape, torch dtype)} read from the shard headers, without loading any tensor."""
    shapes = {}
    for shard in sorted(set(weight_map.values())):
        with safe_open(Path(model_dir) / shard, framework="pt") as source:
            for name in source.keys():
                if weight_map.get(name) == shard:
                    tensor_slice = source.get_slice(name)
                    shapes[name] = (tuple(tensor_slice.get_shape()), SAFETENSORS_DTYPES[tensor_slice.get_dtype()])
    absent = sorted(set(weight_map) - set(shapes))
    if absent:
        raise ConversionError(f"the index lists tensors that are not in their shard files: {absent[:10]}")
    return shapes


def is_qk_norm(name):
    return re.fullmatch(r"model\.layers\.\d+\.self_attn\.[qk]_norm\.(weight|bias)", name) is not None


def expand_qk_norm(name, tensor, config):
    """(rows, head_dim) -> (heads, head_dim). Chameleon's LayerNorm gives head h the row h // (heads / rows)
    (`repeat_interleave`); the release has one row (model_parallel_size 1) shared by all heads."""
    heads = config.num_attention_heads if ".q_norm." in name else config.num_key_value_heads
    return tensor.repeat_interleave(heads // tensor.shape[0], dim=0)


def plan_model_conversion(model_dir, config):
    """[(name, shard file, source dtype, converted element count)] of the tensors to convert, after checking
    every released name and shape against the converted model. Raises ConversionError listing missing,
    unexpected or mis-shaped tensors."""
    weight_map = released_weight_map(model_dir)
    shapes = released_shapes(model_dir, weight_map)
    with torch.device("meta"):
        expected = {name: tuple(t.shape) for name, t in WorldVLAForConditionalGeneration(config).state_dict().items()}

    for prefix, reason in DROPPED_MODEL_KEY_PREFIXES.items():
        dropped = [name for name in shapes if name.startswith(prefix)]
        if dropped:
            logger.info("dropping %d released tensors %s*: %s", len(dropped), prefix, reason)
    kept = [name for name in shapes if not name.startswith(tuple(DROPPED_MODEL_KEY_PREFIXES))]

    unexpected = sorted(set(kept) - set(expected))
    missing = sorted(set(expected) - set(kept))
    if unexpected or missing:
        raise ConversionError(
            f"the released checkpoint in {model_dir} does not match the WorldVLA architecture of its config.json:\n"
            f"  unexpected tensors ({len(unexpected)}): {unexpected}\n  missing tensors ({len(missing)}): {missing}"
        )
    wrong_shapes = []
    for name in kept:
        shape = shapes[name][0]
        if is_qk_norm(name):  # (rows, head_dim), rows dividing the heads
            heads, head_dim = expected[name]
            ok = len(shape) == 2 and shape[1] == head_dim and heads % shape[0] == 0
        else:
            ok = shape == expected[name]
        if not ok:
            wrong_shapes.append(f"{name}: released {shape}, expected {expected[name]}")
    if wrong_shapes:
        raise ConversionError("released tensors with unexpected shapes:\n  " + "\n  ".join(wrong_shapes))
    return [(name, weight_map[name], shapes[name][1], math.prod(expected[name])) for name in kept]


def write_model_shards(plan, model_dir, output_dir, config, dtype, max_shard_size):
    """Stream the planned tensors into safetensors shards of at most `max_shard_size` bytes (a tensor larger than
    that gets a shard of its own) and write the index. Memory holds one shard plus one tensor."""
    output_dir = Path(output_dir)
    total_bytes = sum(numel * (dtype or source_dtype).itemsize for _, _, source_dtype, numel in plan)
    shard_files, pending, pending_bytes = [], {}, 0

    def flush():
        nonlocal pending, pending_bytes
        part = output_dir / f"model-part-{len(shard_files) + 1:05d}.safetensors"
        save_file(pending, part, metadata={"format": "pt"})
        shard_files.append((part, list(pending)))
        pending, pending_bytes = {}, 0

    by_shard = {}
    for name, shard, _, _ in plan:
        by_shard.setdefault(shard, []).append(name)
    with tqdm(total=total_bytes, unit="B", unit_scale=True, desc="converting") as progress:
        for shard, names in by_shard.items():
            with safe_open(Path(model_dir) / shard, framework="pt") as source:
                for name in names:
                    tensor = source.get_tensor(name)
                    if is_qk_norm(name):
                        tensor = expand_qk_norm(name, tensor, config)
                    tensor = tensor.to(dtype or tensor.dtype).contiguous()
                    size = tensor.numel() * tensor.element_size()
                    if pending and pending_bytes + size > max_shard_size:
                        flush()
                    pending[name] = tensor
                    pending_bytes += size
                    progress.update(size)
    if pending:
        flush()

    if len(shard_files) == 1:
        shard_files[0][0].rename(output_dir / "model.safetensors")
        return
    weight_map = {}
    for number, (part, names) in enumerate(shard_files, start=1):
        final = output_dir / f"model-{number:05d}-of-{len(shard_files):05d}.safetensors"
        part.rename(final)
        weight_map.update({name: final.name for name in names})
    index = {"metadata": {"total_size": total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
    (output_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


# ---------------------------------------------------------------------------------------------------------------------
# Tokenizers
# ---------------------------------------------------------------------------------------------------------------------


def vq_config_from_yaml(path):
    """WorldVLAVQConfig from Meta's vqgan.yaml (taming `model.params`)."""
    params = yaml.safe_load(Path(path).read_text())["model"]["params"]
    ddconfig = params["ddconfig"]
    if params.get("remap") is not None:
        raise ConversionError(f"{path}: remap={params['remap']!r} (codebook index remapping) is not supported")
    for option, default in TAMING_FIXED_OPTIONS.items():
        if ddconfig.get(option, default) != default:
            raise ConversionError(f"{path}: ddconfig.{option}={ddconfig[option]!r} is not supported (only {default!r})")
    return WorldVLAVQConfig(
        embed_dim=params["embed_dim"],
        num_embeddings=params["n_embed"],
        latent_channels=ddconfig["z_channels"],
        double_latent=ddconfig.get("double_z", False),
        in_channels=ddconfig["in_channels"],
        out_channels=ddconfig["out_ch"],
        base_channels=ddconfig["ch"],
        channel_multiplier=list(ddconfig["ch_mult"]),
        num_res_blocks=ddconfig["num_res_blocks"],
        attn_resolutions=list(ddconfig.get("attn_resolutions") or []),
        resolution=ddconfig["resolution"],
        dropout=ddconfig.get("dropout", 0.0),
        norm_num_groups=32,  # taming's Normalize
    )


def load_vqgan_state_dict(path):
    """The taming state dict of a VQGAN checkpoint: a Lightning `.ckpt` (its "state_dict") or a `.safetensors`.

    The `.ckpt` is unpickled with `torch.load(weights_only=True)`: only tensors, plain containers and the inert
    stand-ins of `CHECKPOINT_BOOKKEEPING_GLOBALS` can be built; a pickle referencing anything else is refused.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        return load_file(path)
    stand_ins = [(_DiscardedPickleObject, name) for name in CHECKPOINT_BOOKKEEPING_GLOBALS]
    refusal = (
        f"Refusing to unpickle {path}: it references objects other than tensors, plain containers and the "
        "Lightning bookkeeping types this converter allows ({details}). If you trust the file, extract its "
        "'state_dict' into a .safetensors file yourself and pass it with --vqgan-checkpoint."
    )
    with torch.serialization.safe_globals(stand_ins):
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except ValueError:  # a legacy (non-zip) checkpoint cannot be listed; the load below still guards it
            unsafe = []
        if unsafe:
            raise ConversionError(refusal.format(details="globals " + ", ".join(sorted(unsafe))))
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            raise ConversionError(refusal.format(details=str(error).splitlines()[0])) from error
    state_dict = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state_dict, dict):
        raise ConversionError(f"{path} holds no state dict (a dict of tensors, or a dict with a 'state_dict' entry)")
    not_tensors = [
        key for key, value in state_dict.items() if not (isinstance(key, str) and isinstance(value, torch.Tensor))
    ]
    if not_tensors:
        raise ConversionError(f"{path}: the state dict has entries that are not named tensors: {not_tensors[:10]}")
    return state_dict


def build_vq_model(yaml_path, checkpoint_path):
    """WorldVLAVQModel (float32) with the checkpoint's encoder, quantizer and decoder. Only the `loss.*` training
    weights may be left out; any other missing or unexpected key is an error."""
    vq_model = WorldVLAVQModel(vq_config_from_yaml(yaml_path)).eval()
    state_dict = load_vqgan_state_dict(checkpoint_path)
    for prefix, reason in DROPPED_VQGAN_KEY_PREFIXES.items():
        dropped = [key for key in state_dict if key.startswith(prefix)]
        if dropped:
            logger.info("dropping %d VQGAN tensors %s*: %s", len(dropped), prefix, reason)
    state_dict = {k: v for k, v in state_dict.items() if not any(k.startswith(p) for p in DROPPED_VQGAN_KEY_PREFIXES)}
    expected = vq_model.state_dict()
    unexpected, missing = sorted(set(state_dict) - set(expected)), sorted(set(expected) - set(state_dict))
    wrong = [
        f"{k}: {tuple(state_dict[k].shape)} vs {tuple(expected[k].shape)}"
        for k in state_dict
        if k in expected and state_dict[k].shape != expected[k].shape
    ]
    if unexpected or missing or wrong:
        raise ConversionError(
            f"{checkpoint_path} does not match the VQGAN of {yaml_path}:\n  unexpected: {unexpected}\n"
            f"  missing: {missing}\n  wrong shapes: {wrong}"
        )
    vq_model.load_state_dict({k: v.float() for k, v in state_dict.items()}, strict=True)
    return vq_model


def check_released_token_layout(vocab, config, source):
    """Check that the tokenizer names behind the config's ids are the release's: `<s>` at BOS, `<reserved08706>`
    at the separator, `<racm3:break>` / `<eoss>` around images, `<reserved08799>` ending rows, the grid tokens
    `<reserved0880n>`, the action tokens `<reserved10000>` ... `<reserved15000>`, and image code c at
    `image_token_offset + c` (names "IMGIMG..."). Raises ConversionError listing the differences."""
    expected = {
        "<s>": config.bos_token_id,
        "<reserved08706>": config.separator_token_id,
        "<racm3:break>": config.image_start_token_id,
        "<eoss>": config.image_end_token_id,
        "<reserved08799>": config.image_row_end_token_id,
        "<reserved10000>": config.action_start_token_id,
        "<reserved15000>": config.action_end_token_id,
    }
    expected.update(
        {f"<reserved{8800 + n:05d}>": config.image_grid_token_offset + n for n in range(MAX_IMAGE_GRID + 1)}
    )
    bins = config.token_layout.action_bin_slice
    expected.update({f"<reserved{token_id - 4:05d}>": token_id for token_id in range(bins.start, bins.stop)})
    problems = [
        f"{name}: id {vocab.get(name)}, expected {token_id}"
        for name, token_id in expected.items()
        if vocab.get(name) != token_id
    ]

    digits = {chr(ord("A") + d): str(d) for d in range(10)}
    image_codes = {}
    for name, token_id in vocab.items():
        if name.startswith("IMGIMG"):
            image_codes[int("".join(digits.get(c, c) for c in name[len("IMGIMG") : -1]))] = token_id
    if sorted(image_codes) != list(range(config.image_codebook_size)):
        problems.append(
            f"{len(image_codes)} IMGIMG image-code tokens, expected codes 0..{config.image_codebook_size - 1}"
        )
    else:
        shifted = [code for code, token_id in image_codes.items() if token_id != config.image_token_offset + code]
        if shifted:
            problems.append(f"image codes not at image_token_offset + code, e.g. codes {shifted[:5]}")
    if problems:
        raise ConversionError(f"{source} does not have the released token layout:\n  " + "\n  ".join(problems))


def load_text_tokenizer(tokenizer_file, config):
    """PreTrainedTokenizerFast over the given tokenizer.json, unchanged (its special tokens named, none added),
    checked against the released layout."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer.from_file(str(tokenizer_file))
    vocab = backend.get_vocab(with_added_tokens=True)
    if len(vocab) > config.vocab_size:
        raise ConversionError(f"{tokenizer_file} has {len(vocab)} tokens, more than the model's {config.vocab_size}")
    check_released_token_layout(vocab, config, tokenizer_file)
    roles = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, **{role: name for role, name in roles.items() if name in vocab}
    )


# ---------------------------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------------------------


def write_code_and_config(config, output_dir):
    """config.json (with auto_map), generation_config.json and the model code files, as save_pretrained writes
    them, from a model built on the meta device (no memory)."""
    from transformers import GenerationConfig
    from transformers.dynamic_module_utils import custom_object_save

    with torch.device("meta"):
        model = WorldVLAForConditionalGeneration(config)
    custom_object_save(model, output_dir, config=config)
    config.architectures = [WorldVLAForConditionalGeneration.__name__]
    config.save_pretrained(output_dir)
    GenerationConfig.from_model_config(config).save_pretrained(output_dir)


MODEL_CARD = """---
library_name: transformers
pipeline_tag: robotics
tags:
- worldvla
- vision-language-action
- world-model
- libero
- chameleon
---

# WorldVLA ({suite}, {image_size} px), converted

The authors' released WorldVLA checkpoint `{source}` (Cen et al., 2025, "WorldVLA: Towards Autoregressive
Action World Model"; https://github.com/alibaba-damo-academy/WorldVLA), converted with
`convert_worldvla_checkpoint.py` to a self-contained Hugging Face checkpoint (weights unchanged, {dtype}).
The license of the source checkpoint and of Chameleon applies.

- action chunk: {chunk_size} actions per query, from {history_frames} frames of {image_size} x {image_size} px
- action statistics: the release's LIBERO bounds under `unnorm_key="{suite}"` (the default)

```python
from transformers import AutoModelForCausalLM, AutoProcessor

model = AutoModelForCausalLM.from_pretrained("{repo_id}", trust_remote_code=True, dtype="auto")
processor = AutoProcessor.from_pretrained("{repo_id}", trust_remote_code=True)
inputs = processor(text=instruction, images=[previous_frame, current_frame]).to(model.device)
actions = model.predict_action(**inputs, processor=processor)  # (1, {chunk_size}, 7)
```
"""


def write_model_card(output_dir, config, suite, source, repo_id):
    card = MODEL_CARD.format(
        suite=suite,
        image_size=config.image_size,
        source=source,
        dtype=str(config.dtype).replace("torch.", ""),
        chunk_size=config.action_chunk_size,
        history_frames=config.history_frames,
        repo_id=repo_id or str(output_dir),
    )
    (Path(output_dir) / "README.md").write_text(card)


def prepare_staging_dir(output_dir, overwrite):
    """A fresh sibling folder to write into; the output folder appears only once the conversion is complete.

    Refuses a non-empty output folder unless `overwrite`.
    """
    output_dir = Path(output_dir)
    if output_dir.exists() and any(output_dir.iterdir()) and not overwrite:
        raise ConversionError(f"{output_dir} is not empty; pass --overwrite to replace a previous conversion")
    staging = output_dir.parent / f".{output_dir.name}.partial"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    return staging


def publish_staging_dir(staging, output_dir):
    """Swap the finished staging folder in place of the output folder (a crash before this leaves no
    half-written checkpoint under the output name)."""
    output_dir = Path(output_dir)
    if output_dir.exists():
        replaced = output_dir.parent / f".{output_dir.name}.replaced"
        if replaced.exists():
            shutil.rmtree(replaced)
        os.replace(output_dir, replaced)
        os.replace(staging, output_dir)
        shutil.rmtree(replaced)
    else:
        os.replace(staging, output_dir)


def convert(
    model_dir,
    tokenizer_dir,
    output_dir,
    base_model_dir=None,
    vqgan_checkpoint=None,
    suite=None,
    image_size=None,
    chunk_size=None,
    dtype=None,
    max_shard_size=parse_size("5GB"),
    overwrite=False,
    repo_id=None,
):
    """Convert one released model folder; returns the output folder. See the module docstring."""
    detected_suite, detected_size = detect_suite_and_image_size(model_dir)
    suite = SUITE_ALIASES.get(suite, suite) or detected_suite
    if suite is None:
        raise ConversionError(
            f"cannot tell the LIBERO suite from {model_dir}: pass --suite ({', '.join(SUITE_CHUNK_SIZES)})"
        )
    image_size = image_size or detected_size
    if image_size is None:
        raise ConversionError(f"cannot tell the resolution from {model_dir}: pass --image-size (256 or 512)")
    if image_size not in RELEASED_IMAGE_SIZES or (detected_size and detected_size != image_size):
        logger.warning(
            "image size %d: the release was trained at %s (path says %s)",
            image_size,
            RELEASED_IMAGE_SIZES,
            detected_size,
        )
    if chunk_size is None:
        if suite not in SUITE_CHUNK_SIZES:
            raise ConversionError(f"unknown suite {suite!r}: pass --chunk-size")
        chunk_size = SUITE_CHUNK_SIZES[suite]
    tokenizer_dir = Path(tokenizer_dir)
    vqgan_checkpoint = Path(vqgan_checkpoint or tokenizer_dir / "vqgan.ckpt")
    text_tokenizer_file = (
        Path(base_model_dir) / "tokenizer.json" if base_model_dir else tokenizer_dir / "text_tokenizer.json"
    )
    for required in (tokenizer_dir / "vqgan.yaml", vqgan_checkpoint, text_tokenizer_file):
        if not required.is_file():
            raise ConversionError(f"missing input file {required}")
    logger.info("suite %s, %d px, chunk of %d actions", suite, image_size, chunk_size)

    # Everything is checked before anything is written.
    released = read_released_config(model_dir)
    vq_model = build_vq_model(tokenizer_dir / "vqgan.yaml", vqgan_checkpoint)
    config = build_worldvla_config(released, image_size, chunk_size, vq_model.config.downsample_factor)
    plan = plan_model_conversion(model_dir, config)
    source_dtypes = sorted({str(source_dtype) for _, _, source_dtype, _ in plan})
    if dtype is None and len(source_dtypes) > 1:
        raise ConversionError(f"the released tensors have several dtypes {source_dtypes}: pass --dtype")
    config.dtype = dtype or plan[0][2]
    tokenizer = load_text_tokenizer(text_tokenizer_file, config)
    if "vocabulary_map" in released:
        check_released_token_layout(released["vocabulary_map"], config, f"{model_dir}/config.json vocabulary_map")
    processor = WorldVLAProcessor.from_config(
        config, tokenizer, vq_model, action_statistics={suite: LIBERO_ACTION_STATISTICS}, default_unnorm_key=suite
    )

    staging = prepare_staging_dir(output_dir, overwrite)
    write_model_shards(plan, model_dir, staging, config, dtype, max_shard_size)
    write_code_and_config(config, staging)
    processor.save_pretrained(staging)
    source = f"Alibaba-DAMO-Academy/WorldVLA/model_{detected_size or image_size}/{suite}"
    write_model_card(staging, config, suite, source, repo_id)
    publish_staging_dir(staging, output_dir)
    logger.info("wrote %s", output_dir)
    return Path(output_dir)


def push_to_hub(output_dir, repo_id, private=False, token=None):
    """Create `repo_id` if needed and upload the converted folder; returns the commit info."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    commit = api.upload_folder(
        folder_path=str(output_dir),
        repo_id=repo_id,
        commit_message="Add WorldVLA checkpoint converted from the authors' release",
    )
    logger.info("pushed %s to %s", output_dir, commit.commit_url)
    return commit


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument(
        "--model-dir", required=True, help="released model folder, e.g. WorldVLA/model_256/libero_spatial"
    )
    parser.add_argument(
        "--tokenizer-dir",
        required=True,
        help="release's chameleon/tokenizer (vqgan.yaml, vqgan.ckpt, text_tokenizer.json)",
    )
    parser.add_argument(
        "--base-model-dir",
        help="release's base_model (the tokenizer.json the authors encode text with); "
        "default: text_tokenizer.json of --tokenizer-dir",
    )
    parser.add_argument("--output-dir", required=True)
    parser.add_argument(
        "--vqgan-checkpoint", help="VQGAN weights (.ckpt or .safetensors); default: <tokenizer-dir>/vqgan.ckpt"
    )
    parser.add_argument(
        "--suite", choices=sorted(SUITE_CHUNK_SIZES), help="LIBERO suite; default: read from --model-dir"
    )
    parser.add_argument(
        "--image-size", type=int, help="frame side in pixels (256 or 512); default: read from --model-dir"
    )
    parser.add_argument("--chunk-size", type=int, help="actions per query; default: 10 for libero_10, else 5")
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), help="weights dtype; default: kept (bfloat16 in the release)"
    )
    parser.add_argument(
        "--max-shard-size", type=parse_size, default=parse_size("5GB"), help="largest output shard (default 5GB)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a previous conversion in --output-dir")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="upload the converted folder to this Hub repository")
    parser.add_argument("--private", action="store_true", help="create the Hub repository as private")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        output_dir = convert(
            args.model_dir,
            args.tokenizer_dir,
            args.output_dir,
            base_model_dir=args.base_model_dir,
            vqgan_checkpoint=args.vqgan_checkpoint,
            suite=args.suite,
            image_size=args.image_size,
            chunk_size=args.chunk_size,
            dtype=DTYPES.get(args.dtype),
            max_shard_size=args.max_shard_size,
            overwrite=args.overwrite,
            repo_id=args.push_to_hub,
        )
        if args.push_to_hub:
            push_to_hub(output_dir, args.push_to_hub, private=args.private)
    except ConversionError as error:
        parser.exit(1, f"error: {error}\n")


if __name__ == "__main__":
    main()
