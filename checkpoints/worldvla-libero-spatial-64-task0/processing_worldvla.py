"""WorldVLA processor: text, images and actions to one token sequence, and back.

It bundles
  * the text tokenizer: Chameleon's BPE `tokenizer.json` for released checkpoints, or a small byte-level BPE
    that `build_text_tokenizer` trains on text the project owns (LIBERO's instructions, the prompt templates);
  * the VQ image tokenizer (`WorldVLAVQModel`, Chameleon's VQGAN, encoder and decoder), saved as safetensors
    in the `vqgan/` subfolder of the processor;
  * the action tokenizer: per-dimension min/max normalisation to [-1, 1], 256 uniform bins, decoding to bin
    centres, with statistics per dataset key saved in `processor_config.json`.

Sample formats (WorldVLA, section "training samples" of the paper and the release):
  action model: [BOS] "What action should the robot take to {instruction}?" [img t-1][img t] [SEP]
                (with `wrist_camera`: [img t-1][wrist t-1][img t][wrist t])
                then K x ([action start] 7 bins [action end]) [SEP] as the labelled answer;
  world model:  [BOS] "Generate the next image based on ... actions." [img t][action t] [SEP]
                then [img t+1] [SEP] as the labelled answer.
An image is [start][grid H][grid W] (W/16 codes, row end) x H/16 rows [end].
"""

import copy
import hashlib
import os
from collections.abc import Sequence

import numpy as np
import torch
from transformers import BatchFeature, PreTrainedTokenizerFast, ProcessorMixin

try:
    from .configuration_worldvla import IGNORE_INDEX, PROCESSOR_LAYOUT_FIELDS, WorldVLAConfig, WorldVLATokenLayout
    from .modeling_worldvla import WorldVLAVQModel
except ImportError:
    from configuration_worldvla import IGNORE_INDEX, PROCESSOR_LAYOUT_FIELDS, WorldVLAConfig, WorldVLATokenLayout
    from modeling_worldvla import WorldVLAVQModel

ACTION_PROMPT = "What action should the robot take to {instruction}?"
WORLD_MODEL_PROMPT = (
    "Generate the next image based on the provided sequence of historical images and corresponding actions."
)
VQ_SUBFOLDER = "vqgan"

# The release normalises every LIBERO suite with these bounds (dx, dy, dz, drot x3, gripper).
LIBERO_ACTION_STATISTICS = {
    "min": [-0.9375, -0.9375, -0.9375, -0.32571429, -0.375, -0.375, -1.0],
    "max": [0.9375, 0.9375, 0.9375, 0.375, 0.375, 0.375, 1.0],
}
DEFAULT_UNNORM_KEY = "libero"
NORMALIZATION_EPSILON = 1e-8


IMAGE_CONVENTIONS = ("opengl", "opencv")


def upright_frames(frames, convention="opengl"):
    """Frames (..., H, W, 3) turned upright. MuJoCo renders in the OpenGL convention (rows bottom-up, LIBERO's
    `macros_image_convention = "opengl"`, the official HDF5 files included): a 180-degree rotation, as the
    release does. "opencv" frames are already upright. The one orientation rule of the project: the policy's
    camera frames and the stored demos go through it alike."""
    if convention not in IMAGE_CONVENTIONS:
        raise ValueError(f"unknown image convention {convention!r}: expected one of {IMAGE_CONVENTIONS}")
    frames = np.asarray(frames)
    if convention == "opencv":
        return frames
    return np.ascontiguousarray(frames[..., ::-1, ::-1, :])


def vq_fingerprint(vq_model):
    """sha256 of a VQ model's weights: the identity of an image tokenizer (its codes change with any weight)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(vq_model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def history_indices(step, history_frames):
    """Steps whose frames an action sample at `step` sees, oldest first: the last `history_frames` steps that
    exist, so the first step of an episode has one frame and nothing is duplicated (the release's rule, used
    both to build training samples and by `WorldVLAPolicy` at run time)."""
    if step < 0 or history_frames < 1:
        raise ValueError(f"history of step {step} with {history_frames} frames")
    return range(max(0, step - history_frames + 1), step + 1)


def uses_wrist_camera(config):
    """Whether a model's action prompts show the wrist camera; configs of code files written before the option
    have no such field and never do."""
    return bool(getattr(config, "wrist_camera", False))


def prompt_frames(third_person, wrist=None):
    """The frames (or their codes) of an action prompt from those of its history steps, oldest first: each step's
    third-person frame, followed by its wrist frame for a model with `wrist_camera` (the one rule, used both to
    build training samples and by `WorldVLAPolicy`)."""
    third_person = list(third_person)
    if wrist is None:
        return third_person
    wrist = list(wrist)
    if len(wrist) != len(third_person):
        raise ValueError(f"{len(third_person)} third-person frames but {len(wrist)} wrist frames")
    return [frame for step in zip(third_person, wrist) for frame in step]


def build_text_tokenizer(texts, vocab_size=512):
    """A byte-level BPE tokenizer trained on `texts`, with `<s>` (BOS and padding) at id 0.

    Small models of this project use it instead of Chameleon's 65,536-entry tokenizer; byte-level, so any
    text encodes, and deterministic for the same texts.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(texts) + [ACTION_PROMPT, WORLD_MODEL_PROMPT], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", pad_token="<s>")


class ActionTokenizer:
    """Continuous actions <-> bin tokens, with min/max statistics per dataset key.

    normalise: x' = 2 (x - min) / (max - min + 1e-8) - 1, clipped to [-1, 1] (the release's epsilon: a value at
    `max` lands in bin n_bins - 1, as in the released models' training data, and max == min gives no NaN);
    bins: edges = linspace(-1, 1, n_bins), bin = digitize(x', edges) in 1..n_bins, token = offset + bin;
    decode: the centre of the bin (n_bins - 1 centres between consecutive edges, bin index clamped), then
    un-normalised with the same statistics.
    """

    def __init__(self, token_offset, n_bins, action_dim, statistics, default_key):
        self.token_offset = token_offset
        self.n_bins = n_bins
        self.action_dim = action_dim
        self.statistics = statistics
        self.default_key = default_key
        self.edges = np.linspace(-1.0, 1.0, n_bins)
        self.centres = (self.edges[:-1] + self.edges[1:]) / 2.0

    def bounds(self, key=None):
        key = self.default_key if key is None else key
        if key not in self.statistics:
            raise KeyError(
                f"unknown unnorm_key {key!r}: this checkpoint has action statistics for {sorted(self.statistics)}"
            )
        stats = self.statistics[key]
        low, high = np.asarray(stats["min"], dtype=np.float64), np.asarray(stats["max"], dtype=np.float64)
        return low, high

    def _check_actions(self, actions):
        actions = np.asarray(actions, dtype=np.float64)
        if actions.shape[-1:] != (self.action_dim,):
            raise ValueError(f"actions must have a last dimension of {self.action_dim}, got shape {actions.shape}")
        if not np.isfinite(actions).all():
            bad = np.argwhere(~np.isfinite(actions))[0].tolist()
            raise ValueError(f"actions contain NaN or inf (first at index {bad})")
        return actions

    def normalize(self, actions, key=None):
        actions = self._check_actions(actions)
        low, high = self.bounds(key)
        return np.clip(2.0 * (actions - low) / (high - low + NORMALIZATION_EPSILON) - 1.0, -1.0, 1.0)

    def unnormalize(self, normalised, key=None):
        low, high = self.bounds(key)
        return (np.asarray(normalised, dtype=np.float64) + 1.0) / 2.0 * (high - low + NORMALIZATION_EPSILON) + low

    def encode(self, actions, key=None):
        """Actions (..., action_dim) -> token ids (..., action_dim)."""
        return np.digitize(self.normalize(actions, key), self.edges) + self.token_offset

    def decode(self, tokens, key=None):
        """Token ids (..., action_dim) -> actions (..., action_dim), float64."""
        tokens = np.asarray(tokens)
        bins = tokens - self.token_offset
        if tokens.shape[-1:] != (self.action_dim,) or ((bins < 1) | (bins > self.n_bins)).any():
            raise ValueError(
                f"malformed action tokens: expected (..., {self.action_dim}) ids in "
                f"[{self.token_offset + 1}, {self.token_offset + self.n_bins}], got shape {tokens.shape} "
                f"with values in [{tokens.min()}, {tokens.max()}]"
            )
        normalised = self.centres[np.clip(bins - 1, 0, len(self.centres) - 1)]
        return self.unnormalize(normalised, key)


def _image_to_array(image) -> np.ndarray:
    # PIL images are recognised by their `mode` so that PIL stays an optional dependency.
    mode = getattr(image, "mode", None)
    if mode is not None and mode != "RGB":
        raise ValueError(f"Images must be RGB, got a PIL image of mode {mode!r}; use `image.convert('RGB')`.")
    return np.asarray(image)


def images_to_pixel_values(images) -> torch.Tensor:
    """uint8 RGB images -> float32 pixel values (N, 3, H, W) = x / 255 * 2 - 1, exactly [-1, 1].

    Args:
        images: one image or several of the same size. An image is a PIL image (mode RGB) or a uint8
            numpy array (H, W, 3); several are a list / tuple of those, or a uint8 array (N, H, W, 3).

    The scaling is computed in float64 and rounded once to float32, as Chameleon's
    `np.array(img) / 255.0 * 2 - 1` followed by `.float()`, so the values are bit-identical to its.
    """
    if isinstance(images, np.ndarray) and images.ndim == 4:
        batch = images
    else:
        if isinstance(images, np.ndarray) or not isinstance(images, Sequence):
            images = [images]
        if len(images) == 0:
            raise ValueError("`images` is empty: expected at least one image.")
        arrays = [_image_to_array(image) for image in images]
        shapes = sorted({array.shape for array in arrays})
        if len(shapes) != 1:
            raise ValueError(f"All images must have the same shape to form a batch, got shapes {shapes}.")
        batch = np.stack(arrays)  # mixed dtypes promote away from uint8 and fail the check below
    if batch.dtype != np.uint8:
        raise ValueError(f"Images must be uint8 arrays, got dtype {batch.dtype}.")
    if batch.ndim != 4 or batch.shape[-1] != 3:
        raise ValueError(
            f"Images must be RGB with channels last: (H, W, 3) each or (N, H, W, 3), got shape {batch.shape}."
        )
    pixel_values = torch.from_numpy(batch.astype(np.float64) / 255.0 * 2.0 - 1.0).to(torch.float32)
    return pixel_values.permute(0, 3, 1, 2).contiguous()  # (N, 3, H, W)


def pixel_values_to_images(pixel_values: torch.Tensor) -> np.ndarray:
    """Pixel values (N, 3, H, W) in [-1, 1] -> uint8 RGB images (N, H, W, 3): round((x + 1) / 2 * 255),
    values outside [-1, 1] clipped. Exact inverse of `images_to_pixel_values` on its outputs."""
    if not isinstance(pixel_values, torch.Tensor) or pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
        got = tuple(pixel_values.shape) if isinstance(pixel_values, torch.Tensor) else type(pixel_values)
        raise ValueError(f"`pixel_values` must be a tensor of shape (N, 3, H, W), got {got}.")
    if not pixel_values.is_floating_point():
        raise ValueError(f"`pixel_values` must be a float tensor, got dtype {pixel_values.dtype}.")
    values = pixel_values.detach().to(device="cpu", dtype=torch.float64).clamp(-1.0, 1.0)
    images = torch.round((values + 1.0) / 2.0 * 255.0).to(torch.uint8)
    return images.permute(0, 2, 3, 1).contiguous().numpy()


class WorldVLAProcessor(ProcessorMixin):
    r"""
    Builds WorldVLA sequences and reads them back.

    Args:
        tokenizer: the text tokenizer (BOS at `layout.bos_token_id`).
        vq_model (`WorldVLAVQModel`): the VQ image tokenizer, saved in the `vqgan/` subfolder.
        layout (`dict`): the token ids and sizes shared with the model (`WorldVLAConfig.processor_layout()`).
        action_statistics (`dict`): {dataset key: {"min": [...], "max": [...], optional "q01", "q99", ...}}.
        default_unnorm_key (`str`): the key used when none is given.
    """

    def __init__(
        self,
        tokenizer=None,
        vq_model=None,
        layout=None,
        action_statistics=None,
        default_unnorm_key=DEFAULT_UNNORM_KEY,
        chat_template=None,
    ):
        if vq_model is None:
            raise ValueError("WorldVLAProcessor needs its VQ image tokenizer (vq_model)")
        self.vq_model = vq_model.eval()
        self.layout = dict(WorldVLAConfig().processor_layout() if layout is None else layout)
        missing = [name for name in PROCESSOR_LAYOUT_FIELDS if name not in self.layout]
        if missing:
            raise ValueError(f"processor layout lacks {missing}")
        self.token_layout = WorldVLATokenLayout(**{name: self.layout[name] for name in PROCESSOR_LAYOUT_FIELDS})
        self.action_statistics = copy.deepcopy(
            {DEFAULT_UNNORM_KEY: LIBERO_ACTION_STATISTICS} if action_statistics is None else action_statistics
        )
        self.default_unnorm_key = default_unnorm_key
        for key, stats in self.action_statistics.items():
            self._check_statistics(key, stats)
        if default_unnorm_key not in self.action_statistics:
            raise ValueError(
                f"default_unnorm_key {default_unnorm_key!r} has no statistics (known: {sorted(self.action_statistics)})"
            )
        factor = vq_model.config.downsample_factor
        if factor != self.token_layout.image_patch_size or vq_model.config.num_embeddings != self.token_layout.image_codebook_size:
            raise ValueError(
                f"the VQ model (downsampling {factor}, {vq_model.config.num_embeddings} codes) does not match the "
                f"layout (image_patch_size {self.token_layout.image_patch_size}, "
                f"image_codebook_size {self.token_layout.image_codebook_size})"
            )
        super().__init__(tokenizer, chat_template=chat_template)

    @classmethod
    def from_config(cls, config, tokenizer, vq_model, action_statistics=None, default_unnorm_key=DEFAULT_UNNORM_KEY):
        return cls(tokenizer, vq_model, config.processor_layout(), action_statistics, default_unnorm_key)

    def _check_statistics(self, key, stats):
        for name in ("min", "max"):
            values = np.asarray(stats.get(name, []), dtype=np.float64)
            if values.shape != (self.token_layout.action_dim,) or not np.isfinite(values).all():
                raise ValueError(
                    f"action statistics {key!r}: {name!r} must be {self.token_layout.action_dim} finite numbers, "
                    f"got {stats.get(name)!r}"
                )
        if (np.asarray(stats["max"]) < np.asarray(stats["min"])).any():
            raise ValueError(f"action statistics {key!r}: max < min in some dimension")

    # ------------------------------------------------------------------------------------------------------------
    # Saving and loading: the VQ weights live in a subfolder, the rest in processor_config.json.
    # ------------------------------------------------------------------------------------------------------------

    def to_dict(self):
        output = {
            "layout": dict(self.layout),
            "action_statistics": copy.deepcopy(self.action_statistics),
            "default_unnorm_key": self.default_unnorm_key,
            "processor_class": self.__class__.__name__,
        }
        if getattr(self, "auto_map", None):
            output["auto_map"] = self.auto_map
        return output

    def save_pretrained(self, save_directory, push_to_hub=False, **kwargs):
        self.vq_model.save_pretrained(os.path.join(save_directory, VQ_SUBFOLDER))
        files = super().save_pretrained(save_directory)
        if push_to_hub:
            # `push_to_hub` saves into a fresh folder and uploads all of it, the VQ subfolder included.
            self.push_to_hub(kwargs.pop("repo_id", os.path.basename(os.path.normpath(save_directory))), **kwargs)
        return files

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """Load the text tokenizer, the VQ subfolder and `processor_config.json` of a folder or Hub repo.

        Each part is loaded by its own class, so nothing of the checkpoint's remote code runs here.
        """
        hub_kwargs = {
            name: kwargs[name]
            for name in ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder")
            if name in kwargs
        }
        subfolder = hub_kwargs.pop("subfolder", "")
        tokenizer = PreTrainedTokenizerFast.from_pretrained(pretrained_model_name_or_path, subfolder=subfolder, **hub_kwargs)
        vq_model = WorldVLAVQModel.from_pretrained(
            pretrained_model_name_or_path, subfolder=os.path.join(subfolder, VQ_SUBFOLDER) if subfolder else VQ_SUBFOLDER, **hub_kwargs
        )
        processor_dict, _ = cls.get_processor_dict(pretrained_model_name_or_path, subfolder=subfolder, **hub_kwargs)
        return cls(
            tokenizer,
            vq_model,
            layout=processor_dict["layout"],
            action_statistics=processor_dict["action_statistics"],
            default_unnorm_key=processor_dict["default_unnorm_key"],
        )

    def check_compatible(self, config, check_weights=False):
        """Raise if this processor does not belong to a model config: a token id or size differs, or what the
        model records of the processor it was trained with (`action_statistics_keys`; with `check_weights`,
        `vq_fingerprint`, the sha256 of the VQ weights) does not match. Checkpoints without those records are
        checked on the layout only."""
        expected = config.processor_layout()
        different = {name: (self.layout[name], value) for name, value in expected.items() if self.layout[name] != value}
        if different:
            raise ValueError(f"processor and model disagree on {different} (processor value, model value)")
        missing = [key for key in getattr(config, "action_statistics_keys", None) or () if key not in self.action_statistics]
        if missing:
            raise ValueError(
                f"the model was trained with action statistics {missing} that this processor lacks (it has "
                f"{sorted(self.action_statistics)}): load the processor saved with the model"
            )
        recorded = getattr(config, "vq_fingerprint", None)
        if check_weights and recorded and recorded != vq_fingerprint(self.vq_model):
            raise ValueError(
                "this processor's VQ image tokenizer is not the one the model was trained with (its weights' sha256 "
                f"differs from the model's vq_fingerprint {recorded[:12]}...): its codes would mean nothing to the "
                "model; load the processor saved with the model"
            )

    # ------------------------------------------------------------------------------------------------------------
    # Actions
    # ------------------------------------------------------------------------------------------------------------

    @property
    def action_tokenizer(self):
        return ActionTokenizer(
            self.token_layout.action_token_offset,
            self.token_layout.n_action_bins,
            self.token_layout.action_dim,
            self.action_statistics,
            self.default_unnorm_key,
        )

    def add_action_statistics(self, key, statistics, make_default=False):
        """Store statistics (at least "min" and "max" per dimension) under a dataset key."""
        statistics = {name: np.asarray(values, dtype=np.float64).tolist() for name, values in statistics.items()}
        self._check_statistics(key, statistics)
        self.action_statistics[key] = statistics
        if make_default:
            self.default_unnorm_key = key

    def action_to_token_ids(self, action, unnorm_key=None):
        """One action (action_dim,) -> [action start] bins [action end]."""
        return self.actions_to_token_ids(np.asarray(action)[None], unnorm_key)[0]

    def actions_to_token_ids(self, actions, unnorm_key=None):
        """Actions (N, action_dim) -> N blocks [action start] bins [action end], encoded in one pass."""
        start, end = self.token_layout.action_start_token_id, self.token_layout.action_end_token_id
        return [[start, *bins, end] for bins in self.action_tokenizer.encode(actions, unnorm_key).tolist()]

    def decode_actions(self, bin_tokens, unnorm_key=None):
        """Bin token ids (..., action_dim) -> continuous actions (..., action_dim)."""
        return self.action_tokenizer.decode(bin_tokens, unnorm_key)

    # ------------------------------------------------------------------------------------------------------------
    # Images
    # ------------------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def encode_images(self, images):
        """uint8 frames (image_size x image_size x 3 each) -> VQ codes (N, h, w), on the CPU."""
        pixel_values = images_to_pixel_values(images)
        size = self.token_layout.image_size
        if pixel_values.shape[-2:] != (size, size):
            height, width = pixel_values.shape[-2:]
            raise ValueError(
                f"frames are {height}x{width}, the model takes {size}x{size}: render or resize to its image_size"
            )
        return self.vq_model.encode(pixel_values.to(self.vq_model.device)).cpu()

    @torch.no_grad()
    def decode_image_codes(self, codes):
        """VQ codes (N, h, w) -> uint8 frames (N, H, W, 3)."""
        return pixel_values_to_images(self.vq_model.decode(torch.as_tensor(codes).to(self.vq_model.device)))

    def image_codes_to_token_ids(self, codes):
        """Codes (h, w) -> [start][grid H][grid W] (w codes, row end) x h [end]."""
        return self.token_layout.frame_token_ids(torch.as_tensor(codes).tolist())

    def image_tokens_to_codes(self, token_ids):
        """The inverse of `image_codes_to_token_ids`; a malformed sequence raises a ValueError saying where."""
        ids = torch.as_tensor(token_ids).long().flatten()
        layout, grid = self.token_layout, self.token_layout.image_grid_size
        if ids.numel() != layout.image_sequence_length:
            raise ValueError(f"malformed image tokens: {ids.numel()} tokens, a frame has {layout.image_sequence_length}")
        header = layout.frame_template[:3]
        if ids[:3].tolist() != header or int(ids[-1]) != layout.image_end_token_id:
            raise ValueError(
                f"malformed image tokens: header {ids[:3].tolist()} / end {int(ids[-1])}, expected {header} / "
                f"{layout.image_end_token_id}"
            )
        rows = ids[3:-1].view(grid, grid + 1)
        if (rows[:, -1] != layout.image_row_end_token_id).any():
            raise ValueError("malformed image tokens: a row does not end with the row-end token")
        if not layout.is_image_code(rows[:, :-1]).all():
            raise ValueError("malformed image tokens: a code position holds a token that is not a VQ code")
        return rows[:, :-1] - layout.image_token_offset

    def decode_image_tokens(self, token_ids):
        """Image token ids (N, tokens_per_frame) -> uint8 frames (N, H, W, 3)."""
        return self.decode_image_codes(torch.stack([self.image_tokens_to_codes(row) for row in token_ids]))

    # ------------------------------------------------------------------------------------------------------------
    # Samples
    # ------------------------------------------------------------------------------------------------------------

    def encode_text(self, text):
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        reserved = [i for i in ids if self.token_layout.is_image_code(i) or self.token_layout.is_action_bin(i)]
        if reserved:
            raise ValueError(f"text {text!r} encodes to image or action ids {reserved[:5]}")
        return ids

    def build_action_sample(self, instruction, image_codes, actions=None, unnorm_key=None):
        """Action-model sample: {"input_ids", "labels"} lists; the prompt alone when `actions` is None.

        `image_codes`: the history frames' VQ codes, oldest first; `actions`: (K, action_dim) continuous.
        """
        layout = self.token_layout
        prompt = [layout.bos_token_id, *self.encode_text(ACTION_PROMPT.format(instruction=instruction))]
        for codes in image_codes:
            prompt += self.image_codes_to_token_ids(codes)
        prompt.append(layout.separator_token_id)
        answer = []
        if actions is not None:
            actions = np.asarray(actions, dtype=np.float64)
            if actions.ndim != 2:
                raise ValueError(f"actions must have shape (K, {layout.action_dim}), got {actions.shape}")
            for block in self.actions_to_token_ids(actions, unnorm_key):
                answer += block
            answer.append(layout.separator_token_id)
        return {"input_ids": prompt + answer, "labels": [IGNORE_INDEX] * len(prompt) + answer}

    def build_world_model_sample(self, image_codes, actions, next_image_codes=None, unnorm_key=None):
        """World-model sample: N (frame, action) pairs then, as labels, the next frame and [SEP].

        `image_codes`: N frames' codes; `actions`: (N, action_dim). The prompt alone when `next_image_codes`
        is None.
        """
        layout = self.token_layout
        actions = np.asarray(actions, dtype=np.float64)
        if actions.ndim != 2 or len(actions) != len(image_codes):
            raise ValueError(
                f"a world-model sample pairs each of its {len(image_codes)} frames with one action: got actions "
                f"of shape {actions.shape}"
            )
        prompt = [layout.bos_token_id, *self.encode_text(WORLD_MODEL_PROMPT)]
        for codes, block in zip(image_codes, self.actions_to_token_ids(actions, unnorm_key)):
            prompt += self.image_codes_to_token_ids(codes) + block
        prompt.append(layout.separator_token_id)
        answer = []
        if next_image_codes is not None:
            answer = self.image_codes_to_token_ids(next_image_codes) + [layout.separator_token_id]
        return {"input_ids": prompt + answer, "labels": [IGNORE_INDEX] * len(prompt) + answer}

    def pad(self, samples, return_tensors="pt"):
        """Right-pad a list of samples ({"input_ids", optional "labels"}) into a batch with an attention mask."""
        longest = max(len(sample["input_ids"]) for sample in samples)
        pad_id = self.token_layout.pad_token_id
        batch = {"input_ids": [], "attention_mask": []}
        with_labels = all("labels" in sample for sample in samples)
        if with_labels:
            batch["labels"] = []
        for sample in samples:
            missing = longest - len(sample["input_ids"])
            batch["input_ids"].append(list(sample["input_ids"]) + [pad_id] * missing)
            batch["attention_mask"].append([1] * len(sample["input_ids"]) + [0] * missing)
            if with_labels:
                batch["labels"].append(list(sample["labels"]) + [IGNORE_INDEX] * missing)
        return BatchFeature(batch, tensor_type=return_tensors)

    def __call__(self, text=None, images=None, return_tensors="pt", **kwargs):
        """Action prompts for the policy.

        text: an instruction, or a list of B instructions; images: the history frames of one prompt (a list of
        uint8 (H, W, 3) arrays, oldest first; for a `wrist_camera` model each step's third-person frame then its
        wrist frame, `prompt_frames`), or a list of B such lists. Returns a right-padded BatchFeature
        with `input_ids` and `attention_mask`.
        """
        if text is None or images is None:
            raise ValueError("WorldVLAProcessor needs both text (the instruction) and images (the history frames)")
        if isinstance(text, str):
            text, images = [text], [images]
        if len(text) != len(images):
            raise ValueError(f"{len(text)} instructions for {len(images)} lists of frames")
        samples = []
        for instruction, frames in zip(text, images):
            if isinstance(frames, np.ndarray) and frames.ndim == 3:
                raise ValueError("images must be a list of history frames (oldest first), got a single frame")
            samples.append({"input_ids": self.build_action_sample(instruction, self.encode_images(frames))["input_ids"]})
        return self.pad(samples, return_tensors)

    def build_world_model_inputs_from_codes(self, image_codes, actions, unnorm_key=None):
        """World-model prompts for B frames' codes and actions (B, action_dim), one pair per prompt."""
        actions = np.asarray(actions, dtype=np.float64)
        if actions.ndim != 2 or len(actions) != len(image_codes):
            raise ValueError(f"{len(image_codes)} frames need actions of shape ({len(image_codes)}, 7), got {actions.shape}")
        samples = [
            {"input_ids": self.build_world_model_sample([codes], action[None], unnorm_key=unnorm_key)["input_ids"]}
            for codes, action in zip(image_codes, actions)
        ]
        return self.pad(samples)

    def build_world_model_inputs(self, images, actions, unnorm_key=None):
        """World-model prompts: one frame (H, W, 3) and one action (7,), or B frames and actions (B, 7)."""
        actions = np.asarray(actions, dtype=np.float64)
        if actions.ndim == 1:
            images, actions = [images], actions[None]
        return self.build_world_model_inputs_from_codes(list(self.encode_images(images)), actions, unnorm_key)

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)


WorldVLAProcessor.register_for_auto_class()
