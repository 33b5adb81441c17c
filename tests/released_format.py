"""Writers of small synthetic checkpoints in the layout of the authors' WorldVLA release, for the conversion tests.

The release (https://huggingface.co/Alibaba-DAMO-Academy/WorldVLA) ships three kinds of folders; each writer below
produces a tiny one with the same file names, key names, shapes and config fields, read from the authors' code
(github.com/alibaba-damo-academy/WorldVLA):

  * `model_256/<suite>/`: `config.json` of `ChameleonXLLMXConfig` (model_type "chameleon", the custom
    architecture, `vocabulary_map`, `mask_image_logits`, `dropout`, ...) and bf16 safetensors shards with an index,
    saved by `save_pretrained` of `ChameleonXLLMXForConditionalGeneration_ck` after `del model.model.vqmodel`
    (worldvla/pretrain_solver_awm_w_ck.py, xllmx/util/ckpt.py). Key names are transformers' Chameleon ones; the
    QK-norm weight and bias are (model_parallel_size, head_dim) = (1, head_dim) rows shared by all heads
    (worldvla/model/chameleon/modeling_chameleon.py, `ChameleonLayerNorm`).
  * `chameleon/tokenizer/`: Meta's `text_tokenizer.json`, `vqgan.yaml` (taming `VQModel` params) and `vqgan.ckpt`,
    a Lightning checkpoint whose "state_dict" holds the taming key names, loss/discriminator weights included
    (worldvla/model/chameleon_vae_ori/vqgan.py `init_from_ckpt`).
  * `base_model/`: the Hugging Face tokenizer the authors' data pipeline encodes text with (`AutoTokenizer`):
    Meta's tokenizer with `<reserved08707>` renamed `<image>`
    (worldvla/model/chameleon/convert_chameleon_weights_to_hf.py).

Vocabulary layout of the synthetic tokenizer (Chameleon's): 0-3 `<s>` `<pad>` `</s>` `<unk>`; 4..8195 the image
codes, named `IMGIMG` + the code's digits written as letters A-J + `Z`; 8196 `<eoss>` (image end); 8197
`<racm3:break>` (image start); then `<reservedNNNNN>` at id NNNNN + 4 up to `TEXT_OFFSET`; then text BPE tokens.
"""

import argparse
import contextlib
import json
import os
import sys
import types
from collections import OrderedDict
from pathlib import Path

import torch
import yaml
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parent.parent
RELEASED_ARCHITECTURE = "ChameleonXLLMXForConditionalGeneration_ck"
VOCAB_SIZE = 65536
IMAGE_CODEBOOK_SIZE = 8192
TEXT_OFFSET = 16388  # first text token id of the synthetic vocabulary (reserved tokens fill 8198..16387)

# The tiny decoder and VQGAN: real layout and vocabulary, small widths. VQ widths are multiples of 32 because
# taming and transformers' Chameleon VQ use 32 GroupNorm groups.
TINY_DECODER = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
TINY_DDCONFIG = {
    "double_z": False,
    "z_channels": 8,
    "resolution": 64,
    "in_channels": 3,
    "out_ch": 3,
    "ch": 32,
    "ch_mult": [1, 1, 2, 2, 4],
    "num_res_blocks": 1,
    "attn_resolutions": [],
    "dropout": 0.0,
}
TINY_EMBED_DIM = 4
# Meta's VQGAN (chameleon/tokenizer/vqgan.yaml; worldvla.md section 3), for memory measurements at full size.
CHAMELEON_DDCONFIG = {**TINY_DDCONFIG, "z_channels": 256, "resolution": 512, "ch": 128, "num_res_blocks": 2}
CHAMELEON_EMBED_DIM = 256


# ---------------------------------------------------------------------------------------------------------------------
# Tokenizer files
# ---------------------------------------------------------------------------------------------------------------------


def image_code_token_name(code):
    """Chameleon's name of image code `code`: "IMGIMG" + its digits as letters (0 -> A ... 9 -> J) + "Z"."""
    return "IMGIMG" + "".join(chr(ord("A") + int(digit)) for digit in str(code)) + "Z"


def chameleon_layout_vocab():
    """{name: id} of every non-text token of the synthetic Chameleon vocabulary."""
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    vocab.update({image_code_token_name(code): 4 + code for code in range(IMAGE_CODEBOOK_SIZE)})
    vocab["<eoss>"] = 8196
    vocab["<racm3:break>"] = 8197
    vocab.update({f"<reserved{token_id - 4:05d}>": token_id for token_id in range(8198, TEXT_OFFSET)})
    return vocab


def build_chameleon_style_tokenizer(texts, text_vocab_size=600):
    """A `tokenizers.Tokenizer` with Chameleon's id layout and a byte-level BPE trained on `texts` for the text ids."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    trained = Tokenizer(models.BPE())
    trained.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=text_vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    trained.train_from_iterator(texts, trainer)
    trained_json = json.loads(trained.to_str())
    text_tokens = sorted(trained_json["model"]["vocab"].items(), key=lambda item: item[1])
    merges = [
        tuple(merge) if isinstance(merge, list) else tuple(merge.split(" "))
        for merge in trained_json["model"]["merges"]
    ]

    vocab = chameleon_layout_vocab()
    for offset, (token, _) in enumerate(text_tokens):
        vocab[token] = TEXT_OFFSET + offset
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    specials = [name for name in vocab if name.startswith("<") and name.endswith(">")]
    tokenizer.add_special_tokens([AddedToken(name, special=True, normalized=False) for name in specials])
    return tokenizer


def write_tokenizer_files(tokenizer_dir, base_model_dir):
    """`text_tokenizer.json` (Meta's name) in `tokenizer_dir`; the HF tokenizer files in `base_model_dir`."""
    texts = (ROOT / "assets" / "libero_instructions.txt").read_text().splitlines()
    texts += [
        "What action should the robot take to pick up the bowl?",
        "Generate the next image based on the provided sequence of historical images and corresponding actions.",
    ]
    tokenizer = build_chameleon_style_tokenizer(texts)
    os.makedirs(tokenizer_dir, exist_ok=True)
    tokenizer.save(os.path.join(tokenizer_dir, "text_tokenizer.json"))

    # The base_model tokenizer: the same file with <reserved08707> renamed <image>, as transformers' converter does.
    base = json.loads(tokenizer.to_str())
    base["model"]["vocab"]["<image>"] = base["model"]["vocab"].pop("<reserved08707>")
    for added in base["added_tokens"]:
        if added["content"] == "<reserved08707>":
            added["content"] = "<image>"
    os.makedirs(base_model_dir, exist_ok=True)
    Path(base_model_dir, "tokenizer.json").write_text(json.dumps(base))
    Path(base_model_dir, "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "LlamaTokenizerFast", "bos_token": "<s>", "eos_token": "</s>", "legacy": False})
    )
    Path(base_model_dir, "special_tokens_map.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))
    return tokenizer


# ---------------------------------------------------------------------------------------------------------------------
# Language model
# ---------------------------------------------------------------------------------------------------------------------


def released_config(vocabulary_map, max_position_embeddings=4096, **decoder):
    """config.json of a trained WorldVLA model as the release writes it (transformers 4.48 `ChameleonXLLMXConfig`)."""
    decoder = {**TINY_DECODER, **decoder}
    vq_config = {
        "embed_dim": TINY_EMBED_DIM,
        "num_embeddings": IMAGE_CODEBOOK_SIZE,
        "double_latent": False,
        "latent_channels": TINY_DDCONFIG["z_channels"],
        "resolution": 512,
        "in_channels": 3,
        "base_channels": TINY_DDCONFIG["ch"],
        "channel_multiplier": TINY_DDCONFIG["ch_mult"],
        "num_res_blocks": TINY_DDCONFIG["num_res_blocks"],
        "attn_resolutions": None,
        "dropout": 0.0,
        "attn_type": "vanilla",
        "initializer_range": 0.02,
        "model_type": "chameleon_vqgan",
    }
    return {
        "_name_or_path": "../ckpts/starting_point",
        "architectures": [RELEASED_ARCHITECTURE],
        "model_type": "chameleon",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 0,
        "dropout": 0.05,
        "eos_token_id": 2,
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "mask_image_logits": False,
        "max_position_embeddings": max_position_embeddings,
        "mlp_bias": False,
        "model_parallel_size": 1,
        "num_key_value_heads": decoder["num_attention_heads"],
        "pad_token_id": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": None,
        "rope_theta": 10000.0,
        "swin_norm": False,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.48.0",
        "use_cache": True,
        "vocab_size": VOCAB_SIZE,
        "vocabulary_map": vocabulary_map,
        "vq_config": vq_config,
        "z_loss_weight": 1e-05,
        **decoder,
    }


def released_state_dict(config, seed=0, dtype=torch.bfloat16):
    """Random weights under the release's key names and shapes. Scales are large enough that greedy decoding has
    no near-ties; the QK-norm rows are (1, head_dim), shared by every head."""
    generator = torch.Generator().manual_seed(seed)
    hidden, inner = config["hidden_size"], config["intermediate_size"]
    head_dim = hidden // config["num_attention_heads"]
    kv_width = config["num_key_value_heads"] * head_dim

    def normal(*shape, std):
        return (torch.randn(*shape, generator=generator) * std).to(dtype)

    def near_one(*shape):
        return (1.0 + 0.2 * torch.randn(*shape, generator=generator)).to(dtype)

    weights = {"model.embed_tokens.weight": normal(config["vocab_size"], hidden, std=1.0)}
    for layer in range(config["num_hidden_layers"]):
        prefix = f"model.layers.{layer}."
        weights.update(
            {
                prefix + "self_attn.q_proj.weight": normal(hidden, hidden, std=0.3),
                prefix + "self_attn.k_proj.weight": normal(kv_width, hidden, std=0.3),
                prefix + "self_attn.v_proj.weight": normal(kv_width, hidden, std=0.3),
                prefix + "self_attn.o_proj.weight": normal(hidden, hidden, std=0.2),
                prefix + "self_attn.q_norm.weight": near_one(1, head_dim),
                prefix + "self_attn.q_norm.bias": normal(1, head_dim, std=0.2),
                prefix + "self_attn.k_norm.weight": near_one(1, head_dim),
                prefix + "self_attn.k_norm.bias": normal(1, head_dim, std=0.2),
                prefix + "mlp.gate_proj.weight": normal(inner, hidden, std=0.2),
                prefix + "mlp.up_proj.weight": normal(inner, hidden, std=0.2),
                prefix + "mlp.down_proj.weight": normal(hidden, inner, std=0.2),
                prefix + "input_layernorm.weight": near_one(hidden),
                prefix + "post_attention_layernorm.weight": near_one(hidden),
            }
        )
    weights["model.norm.weight"] = near_one(hidden)
    weights["lm_head.weight"] = normal(config["vocab_size"], hidden, std=1.0)
    return weights


def write_released_model(
    model_dir, vocabulary_map, seed=0, num_shards=2, drop_keys=(), extra_tensors=None, **config_overrides
):
    """A released-layout model folder: config.json, model-0000i-of-0000n.safetensors, model.safetensors.index.json.

    `drop_keys` leaves tensors out and `extra_tensors` ({name: tensor}) adds some, to test the converter's checks.
    Returns (config dict, {name: tensor} as written).
    """
    config = released_config(vocabulary_map, **config_overrides)
    weights = released_state_dict(config, seed=seed)
    for key in drop_keys:
        del weights[key]
    weights.update(extra_tensors or {})
    os.makedirs(model_dir, exist_ok=True)
    Path(model_dir, "config.json").write_text(json.dumps(config, indent=2))

    names = list(weights)
    per_shard = -(-len(names) // num_shards)
    weight_map = {}
    for index in range(num_shards):
        shard_name = f"model-{index + 1:05d}-of-{num_shards:05d}.safetensors"
        shard = {name: weights[name].contiguous() for name in names[index * per_shard : (index + 1) * per_shard]}
        save_file(shard, os.path.join(model_dir, shard_name), metadata={"format": "pt"})
        weight_map.update({name: shard_name for name in shard})
    total_size = sum(tensor.numel() * tensor.element_size() for tensor in weights.values())
    index = {"metadata": {"total_size": total_size}, "weight_map": weight_map}
    Path(model_dir, "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return config, weights


# ---------------------------------------------------------------------------------------------------------------------
# VQGAN
# ---------------------------------------------------------------------------------------------------------------------


def taming_vqgan_shapes(ddconfig, n_embed, embed_dim):
    """{key: shape} of taming's `VQModel` (Encoder, Decoder, VectorQuantizer2, quant convs), built from taming's
    construction rules (worldvla/model/chameleon_vae_ori/vqgan.py) rather than from this repository's model."""
    shapes = {}

    def conv(name, c_in, c_out, kernel):
        shapes[name + ".weight"] = (c_out, c_in, kernel, kernel)
        shapes[name + ".bias"] = (c_out,)

    def norm(name, channels):
        shapes[name + ".weight"] = (channels,)
        shapes[name + ".bias"] = (channels,)

    def resnet(name, c_in, c_out):
        norm(name + ".norm1", c_in)
        conv(name + ".conv1", c_in, c_out, 3)
        norm(name + ".norm2", c_out)
        conv(name + ".conv2", c_out, c_out, 3)
        if c_in != c_out:
            conv(name + ".nin_shortcut", c_in, c_out, 1)

    def attention(name, channels):
        norm(name + ".norm", channels)
        for part in ("q", "k", "v", "proj_out"):
            conv(f"{name}.{part}", channels, channels, 1)

    ch, ch_mult, blocks = ddconfig["ch"], ddconfig["ch_mult"], ddconfig["num_res_blocks"]
    z_channels, levels = ddconfig["z_channels"], len(ch_mult)
    conv("encoder.conv_in", ddconfig["in_channels"], ch, 3)
    in_mult = (1,) + tuple(ch_mult)
    for level in range(levels):
        block_in, block_out = ch * in_mult[level], ch * ch_mult[level]
        for block in range(blocks):
            resnet(f"encoder.down.{level}.block.{block}", block_in, block_out)
            block_in = block_out
        if level != levels - 1:
            conv(f"encoder.down.{level}.downsample.conv", block_in, block_in, 3)
    resnet("encoder.mid.block_1", block_in, block_in)
    attention("encoder.mid.attn_1", block_in)
    resnet("encoder.mid.block_2", block_in, block_in)
    norm("encoder.norm_out", block_in)
    conv("encoder.conv_out", block_in, z_channels, 3)

    block_in = ch * ch_mult[-1]
    conv("decoder.conv_in", z_channels, block_in, 3)
    resnet("decoder.mid.block_1", block_in, block_in)
    attention("decoder.mid.attn_1", block_in)
    resnet("decoder.mid.block_2", block_in, block_in)
    for level in reversed(range(levels)):
        block_out = ch * ch_mult[level]
        for block in range(blocks + 1):
            resnet(f"decoder.up.{level}.block.{block}", block_in, block_out)
            block_in = block_out
        if level != 0:
            conv(f"decoder.up.{level}.upsample.conv", block_in, block_in, 3)
    norm("decoder.norm_out", block_in)
    conv("decoder.conv_out", block_in, ddconfig["out_ch"], 3)

    shapes["quantize.embedding.weight"] = (n_embed, embed_dim)
    conv("quant_conv", z_channels, embed_dim, 1)
    conv("post_quant_conv", embed_dim, z_channels, 1)
    return shapes


def taming_vqgan_state_dict(seed=0, ddconfig=TINY_DDCONFIG, n_embed=IMAGE_CODEBOOK_SIZE, embed_dim=TINY_EMBED_DIM):
    """Random float32 taming weights plus the training-only `loss.*` entries (LPIPS and discriminator) the
    Lightning checkpoint also holds. Norms near 1 and convs at fan-in scale keep activations in a range where the
    codes spread over the codebook."""
    generator = torch.Generator().manual_seed(seed)
    state_dict = OrderedDict()
    for name, shape in taming_vqgan_shapes(ddconfig, n_embed, embed_dim).items():
        if ".norm" in name and name.endswith(".weight"):
            state_dict[name] = 1.0 + 0.1 * torch.randn(shape, generator=generator)
        elif name.endswith(".bias") or len(shape) == 1:
            state_dict[name] = 0.05 * torch.randn(shape, generator=generator)
        elif name == "quantize.embedding.weight":
            state_dict[name] = torch.randn(shape, generator=generator)
        else:
            fan_in = shape[1] * shape[2] * shape[3]
            state_dict[name] = torch.randn(shape, generator=generator) / fan_in**0.5
    state_dict["loss.logvar"] = torch.zeros(())
    state_dict["loss.perceptual_loss.net.slice1.0.weight"] = torch.randn(4, 3, 3, 3, generator=generator)
    state_dict["loss.discriminator.main.0.weight"] = torch.randn(4, 3, 4, 4, generator=generator)
    return state_dict


def write_vqgan_yaml(path, ddconfig=TINY_DDCONFIG, n_embed=IMAGE_CODEBOOK_SIZE, embed_dim=TINY_EMBED_DIM):
    """Meta's `vqgan.yaml` layout: taming's `model.params` with `ddconfig` and a `lossconfig`."""
    config = {
        "model": {
            "base_learning_rate": 4.5e-06,
            "target": "taming.models.vqgan.VQModel",
            "params": {
                "embed_dim": embed_dim,
                "n_embed": n_embed,
                "ddconfig": dict(ddconfig),
                "lossconfig": {
                    "target": "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator",
                    "params": {"disc_conditional": False, "disc_in_channels": 3, "disc_start": 0, "disc_weight": 0.75},
                },
            },
        }
    }
    Path(path).write_text(yaml.safe_dump(config))


@contextlib.contextmanager
def _importable_as(module_name, class_name):
    """Make a stand-in class picklable under `module_name.class_name`, the global a real Lightning or omegaconf
    checkpoint references, without those packages installed."""
    created = []
    parts = module_name.split(".")
    for depth in range(1, len(parts) + 1):
        name = ".".join(parts[:depth])
        if name not in sys.modules:
            sys.modules[name] = types.ModuleType(name)
            created.append(name)
    stand_in = type(class_name, (), {"__module__": module_name})
    setattr(sys.modules[module_name], class_name, stand_in)
    try:
        yield stand_in
    finally:
        delattr(sys.modules[module_name], class_name)
        for name in reversed(created):
            del sys.modules[name]


def lightning_checkpoint(state_dict):
    """The dict `torch.save` writes for a taming VQModel trained with (old) PyTorch Lightning, with the kinds of
    non-tensor objects such checkpoints carry: a callback state keyed by the callback class, a path, argparse and
    omegaconf hyper-parameters, optimizer state. Must be saved inside `lightning_globals()`."""
    import argparse as argparse_module

    callback_class = sys.modules["pytorch_lightning.callbacks.model_checkpoint"].ModelCheckpoint
    dict_config = sys.modules["omegaconf.dictconfig"].DictConfig()
    dict_config.__dict__.update({"_content": {"embed_dim": TINY_EMBED_DIM}, "_flags": {}})
    return {
        "epoch": 4,
        "global_step": 190000,
        "pytorch-lightning_version": "1.0.8",
        "callbacks": {
            callback_class: {"best_model_score": torch.tensor(0.5), "best_model_path": Path("logs/last.ckpt")}
        },
        "optimizer_states": [
            {"state": {0: {"exp_avg": torch.zeros(3)}}, "param_groups": [{"lr": 4.5e-6, "params": [0]}]}
        ],
        "lr_schedulers": [],
        "hparams_name": "args",
        "hyper_parameters": argparse_module.Namespace(base_learning_rate=4.5e-06, ckpt=None),
        "config": dict_config,
        "state_dict": state_dict,
    }


@contextlib.contextmanager
def lightning_globals():
    with _importable_as("pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint"):
        with _importable_as("omegaconf.dictconfig", "DictConfig"):
            yield


def write_vqgan_checkpoint(path, state_dict):
    with lightning_globals():
        torch.save(lightning_checkpoint(state_dict), path)


# ---------------------------------------------------------------------------------------------------------------------
# The whole release
# ---------------------------------------------------------------------------------------------------------------------


def write_release(
    root,
    suite="libero_spatial",
    image_size=256,
    seed=0,
    ddconfig=TINY_DDCONFIG,
    embed_dim=TINY_EMBED_DIM,
    **model_kwargs,
):
    """<root>/model_<size>/<suite>, <root>/chameleon/tokenizer, <root>/base_model, as the release lays them out.
    `model_kwargs` override the tiny decoder's config fields (hidden_size, num_hidden_layers, ...).

    Returns a dict with the three folders and what was written (config, weights, VQ state dict).
    """
    root = Path(root)
    tokenizer_dir, base_model_dir = root / "chameleon" / "tokenizer", root / "base_model"
    tokenizer = write_tokenizer_files(tokenizer_dir, base_model_dir)
    vq_state_dict = taming_vqgan_state_dict(seed=seed, ddconfig=ddconfig, embed_dim=embed_dim)
    write_vqgan_yaml(tokenizer_dir / "vqgan.yaml", ddconfig=ddconfig, embed_dim=embed_dim)
    write_vqgan_checkpoint(tokenizer_dir / "vqgan.ckpt", vq_state_dict)
    model_dir = root / f"model_{image_size}" / suite
    vocabulary_map = dict(tokenizer.get_vocab(with_added_tokens=True))
    vocabulary_map["<image>"] = vocabulary_map.pop("<reserved08707>")
    config, weights = write_released_model(model_dir, vocabulary_map, seed=seed, **model_kwargs)
    return {
        "model_dir": model_dir,
        "tokenizer_dir": tokenizer_dir,
        "base_model_dir": base_model_dir,
        "config": config,
        "weights": weights,
        "vq_state_dict": vq_state_dict,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description="Write a synthetic WorldVLA release (for trying or measuring the converter)."
    )
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--suite", default="libero_spatial")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--hidden-size", type=int, default=TINY_DECODER["hidden_size"])
    parser.add_argument("--intermediate-size", type=int, default=TINY_DECODER["intermediate_size"])
    parser.add_argument("--layers", type=int, default=TINY_DECODER["num_hidden_layers"])
    parser.add_argument("--heads", type=int, default=TINY_DECODER["num_attention_heads"])
    parser.add_argument("--full-size-vqgan", action="store_true", help="Meta's VQGAN widths (68.7M parameters)")
    args = parser.parse_args()
    vqgan = {"ddconfig": CHAMELEON_DDCONFIG, "embed_dim": CHAMELEON_EMBED_DIM} if args.full_size_vqgan else {}
    written = write_release(
        args.output_dir,
        suite=args.suite,
        image_size=args.image_size,
        hidden_size=args.hidden_size,
        intermediate_size=args.intermediate_size,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        **vqgan,
    )
    print(
        f"model: {written['model_dir']}\ntokenizer: {written['tokenizer_dir']}\nbase model: {written['base_model_dir']}"
    )
