"""WorldVLA configuration.

WorldVLA (Cen et al., 2025, "WorldVLA: Towards Autoregressive Action World Model") is one Chameleon-style
autoregressive transformer that is both a vision-language-action policy and an action-conditioned world
model. Text, VQ image codes and discretised actions share one vocabulary; every id of that layout lives
in `WorldVLAConfig`, nothing else in the repository writes a token id down, and `WorldVLATokenLayout`
(`config.token_layout`) holds all the arithmetic on those ids (which ids are codes or bins, frame lengths).

`WorldVLAVQConfig` describes the VQGAN image tokenizer (Chameleon's taming-transformers VQModel) that the
processor carries; it is a separate model because the released language model holds no VQ weights.
"""

import math
from dataclasses import asdict, dataclass, fields

from transformers import PretrainedConfig
from transformers.activations import ACT2FN

# Label of positions the loss ignores (prompt tokens, padding); the value transformers and torch use.
IGNORE_INDEX = -100

# The released checkpoints' layout (ids of Chameleon's 65,536-entry vocabulary).
RELEASED_TOKEN_LAYOUT = {
    "bos_token_id": 0,
    "pad_token_id": 0,
    "separator_token_id": 8710,
    "image_token_offset": 4,
    "image_codebook_size": 8192,
    "image_end_token_id": 8196,
    "image_start_token_id": 8197,
    "image_row_end_token_id": 8803,
    "image_grid_token_offset": 8804,
    "action_start_token_id": 10004,
    "action_token_offset": 10005,
    "action_end_token_id": 15004,
}

# Grid tokens count the side in units of 32 px (8812 = 8804 + 256 / 32); they must cover 512 px images.
IMAGE_GRID_UNIT = 32
MAX_IMAGE_GRID = 16

# The fields that place each id range of `WorldVLATokenLayout.id_ranges`, for error messages.
RANGE_FIELDS = {
    "image codes": "`image_token_offset`, `image_codebook_size`",
    "image grid tokens": "`image_grid_token_offset`",
    "action bins": "`action_token_offset`, `n_action_bins`",
}


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class WorldVLATokenLayout:
    r"""
    The token ids and sizes that model, processor, training and conversion must agree on, and all the arithmetic
    on them: which ids are image codes or action bins, how long a frame or an action is, how a frame is written.

    Build it with `config.token_layout` or `WorldVLATokenLayout(**layout_dict)`; `to_dict()` is the dict form a
    processor saves (`WorldVLAConfig.processor_layout()`). Invalid layouts raise a ValueError naming the field.

    A frame of `h x w` codes is `[image start][grid h][grid w] (w codes, row end) x h [image end]`; an action is
    `[action start] action_dim bins [action end]`; VQ code `c` is id `image_token_offset + c`; action bin `b`
    (1-based, 1..n_action_bins) is id `action_token_offset + b`.
    """

    bos_token_id: int
    pad_token_id: int
    separator_token_id: int
    image_token_offset: int
    image_codebook_size: int
    image_end_token_id: int
    image_start_token_id: int
    image_row_end_token_id: int
    image_grid_token_offset: int
    action_start_token_id: int
    action_token_offset: int
    action_end_token_id: int
    n_action_bins: int
    action_dim: int
    image_size: int
    image_patch_size: int

    def __post_init__(self):
        for field in fields(self):
            value = getattr(self, field.name)
            if not _is_int(value):
                raise ValueError(f"`{field.name}` must be an integer (not a bool), got {value!r}")
        for name in ("image_codebook_size", "action_dim", "image_size", "image_patch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1, got {getattr(self, name)}")
        if self.n_action_bins < 2:
            raise ValueError(f"`n_action_bins` must be >= 2 (one bin encodes nothing), got {self.n_action_bins}")
        if self.image_size % IMAGE_GRID_UNIT or not 0 < self.image_size <= IMAGE_GRID_UNIT * MAX_IMAGE_GRID:
            raise ValueError(
                f"`image_size` must be a multiple of {IMAGE_GRID_UNIT} up to {IMAGE_GRID_UNIT * MAX_IMAGE_GRID} (the "
                f"grid tokens count the side in units of {IMAGE_GRID_UNIT} px), got {self.image_size}"
            )
        if self.image_size % self.image_patch_size:
            raise ValueError(
                f"`image_size` ({self.image_size}) must be divisible by `image_patch_size` ({self.image_patch_size}), "
                "the pixels one VQ code covers: change one of them (the VQGAN fixes the patch size)"
            )

        ranges = self.id_ranges()
        for name, (start, stop) in ranges.items():
            if start < 0:
                raise ValueError(f"the {name} ({RANGE_FIELDS[name]}) would start at id {start}: ids are >= 0")
        names = list(ranges)
        for i, first in enumerate(names):
            for second in names[i + 1 :]:
                (a0, a1), (b0, b1) = ranges[first], ranges[second]
                if a0 < b1 and b0 < a1:
                    raise ValueError(
                        f"the {first} [{a0}, {a1}) and the {second} [{b0}, {b1}) overlap: move one of them "
                        f"({RANGE_FIELDS[first]} or {RANGE_FIELDS[second]})"
                    )
        structural = self.structural_token_ids()
        for name, token_id in {**structural, "bos_token_id": self.bos_token_id}.items():
            if token_id < 0:
                raise ValueError(f"`{name}` must be an id >= 0, got {token_id}")
            for range_name, (start, stop) in ranges.items():
                if start <= token_id < stop:
                    raise ValueError(
                        f"`{name}` ({token_id}) falls inside the {range_name} [{start}, {stop}): move it, or the "
                        f"range ({RANGE_FIELDS[range_name]})"
                    )
        if len(set(structural.values())) != len(structural):
            raise ValueError(f"the special token ids must be distinct, give each its own id: {structural}")
        # Padding positions are scanned for image and action tokens when the action mask is built.
        if self.pad_token_id != self.bos_token_id and (
            self.pad_token_id in structural.values()
            or any(start <= self.pad_token_id < stop for start, stop in ranges.values())
        ):
            raise ValueError(
                f"`pad_token_id` ({self.pad_token_id}) must not be an image, action or separator token: use the BOS id"
            )

    @classmethod
    def from_config(cls, config):
        return cls(**{field.name: getattr(config, field.name) for field in fields(cls)})

    def to_dict(self):
        return asdict(self)

    def structural_token_ids(self):
        """{field name: id} of the single special tokens other than BOS and padding."""
        names = (
            "separator_token_id",
            "image_start_token_id",
            "image_end_token_id",
            "image_row_end_token_id",
            "action_start_token_id",
            "action_end_token_id",
        )
        return {name: getattr(self, name) for name in names}

    def id_ranges(self):
        """{name: (first id, last id + 1)} of the image codes, grid tokens and action bins."""
        return {
            "image codes": (self.image_code_slice.start, self.image_code_slice.stop),
            "image grid tokens": (self.image_grid_token_offset, self.image_grid_token_offset + MAX_IMAGE_GRID + 1),
            "action bins": (self.action_bin_slice.start, self.action_bin_slice.stop),
        }

    @property
    def largest_token_id(self):
        singles = [self.bos_token_id, self.pad_token_id, *self.structural_token_ids().values()]
        return max(singles + [stop - 1 for _, stop in self.id_ranges().values()])

    @property
    def image_code_slice(self):
        """Ids of the VQ codes, to index logits: `logits[..., layout.image_code_slice]`."""
        return slice(self.image_token_offset, self.image_token_offset + self.image_codebook_size)

    @property
    def first_action_bin_id(self):
        """Id of bin 1 (bins are 1-based, so `action_token_offset` itself is no bin)."""
        return self.action_token_offset + 1

    @property
    def action_bin_slice(self):
        """Ids of the action bins, to index logits: `logits[..., layout.action_bin_slice]`."""
        return slice(self.first_action_bin_id, self.first_action_bin_id + self.n_action_bins)

    def is_image_code(self, ids):
        """True where `ids` (an int, a numpy array or a tensor) are VQ codes."""
        return (ids >= self.image_code_slice.start) & (ids < self.image_code_slice.stop)

    def is_action_bin(self, ids):
        """True where `ids` (an int, a numpy array or a tensor) are action bins."""
        return (ids >= self.action_bin_slice.start) & (ids < self.action_bin_slice.stop)

    @property
    def image_grid_size(self):
        """VQ codes along one side of a frame."""
        return self.image_size // self.image_patch_size

    @property
    def image_sequence_length(self):
        """Tokens of one frame: start, two grid tokens, rows of codes each closed by a row end, end."""
        return 3 + self.image_grid_size * (self.image_grid_size + 1) + 1

    @property
    def action_block_length(self):
        """Tokens of one action: start, `action_dim` bins, end."""
        return self.action_dim + 2

    def image_grid_token_id(self, side):
        """The grid token of a frame side of `side` pixels."""
        return self.image_grid_token_offset + side // IMAGE_GRID_UNIT

    def frame_token_ids(self, codes):
        """VQ codes (h, w) (nested lists, a numpy array or a tensor) -> the frame's token ids, a list."""
        rows = [[int(code) for code in row] for row in codes]
        height, width = len(rows), len(rows[0])
        ids = [
            self.image_start_token_id,
            self.image_grid_token_id(height * self.image_patch_size),
            self.image_grid_token_id(width * self.image_patch_size),
        ]
        for row in rows:
            ids += [self.image_token_offset + code for code in row]
            ids.append(self.image_row_end_token_id)
        ids.append(self.image_end_token_id)
        return ids

    @property
    def frame_template(self):
        """Token ids of an `image_size` frame, None where a VQ code goes (`image_sequence_length` entries)."""
        grid, grid_token = self.image_grid_size, self.image_grid_token_id(self.image_size)
        row = [None] * grid + [self.image_row_end_token_id]
        return [self.image_start_token_id, grid_token, grid_token] + row * grid + [self.image_end_token_id]


# What a processor must agree on with its model to build and read sequences.
PROCESSOR_LAYOUT_FIELDS = tuple(field.name for field in fields(WorldVLATokenLayout))


class WorldVLAVQConfig(PretrainedConfig):
    r"""
    Configuration of [`WorldVLAVQModel`], Chameleon's VQGAN image tokenizer (encoder, quantizer, decoder).

    Quantizer:
        embed_dim (`int`, defaults to 256):
            Size of one codebook vector (taming `embed_dim`); the width of `quant_conv`'s output.
        num_embeddings (`int`, defaults to 8192):
            Number of codebook vectors, hence of distinct image codes (taming `n_embed`).

    Encoder and decoder (taming `ddconfig`):
        latent_channels (`int`, defaults to 256):
            Channels of the latent between the encoder / decoder and `quant_conv` / `post_quant_conv`
            (taming `z_channels`).
        double_latent (`bool`, defaults to `False`):
            Taming's `double_z` (the encoder outputting `2 * latent_channels`, for KL autoencoders). Kept for
            parity with `ChameleonVQVAEConfig`; a VQGAN quantizes a single latent, so only `False` is valid.
        in_channels (`int`, defaults to 3):
            Channels of the input images (taming `in_channels`). The pixel helpers handle RGB only.
        out_channels (`int`, defaults to 3):
            Channels of the decoded images (taming `out_ch`).
        base_channels (`int`, defaults to 128):
            Channels of the first level; level `i` has `base_channels * channel_multiplier[i]` (taming `ch`).
        channel_multiplier (`list[int]`, defaults to `[1, 1, 2, 2, 4]`):
            One multiplier per resolution level (taming `ch_mult`). Each level but the last halves the
            resolution, so images shrink by `2 ** (len(channel_multiplier) - 1)`: 16 for the default.
        num_res_blocks (`int`, defaults to 2):
            Residual blocks per encoder level; each decoder level has one more (taming `num_res_blocks`).
        attn_resolutions (`list[int]`, defaults to `[]`):
            Feature-map sizes, counted from `resolution`, at which each residual block of a level is
            followed by a self-attention block (taming `attn_resolutions`). Meta's VQGAN has none: only
            the two middle stages (`encoder.mid.attn_1`, `decoder.mid.attn_1`) attend.
        resolution (`int`, defaults to 256):
            Nominal input size, used only to decide which levels match `attn_resolutions` (taming
            `resolution`). Images of any size divisible by the downsample factor are accepted.
        dropout (`float`, defaults to 0.0):
            Dropout inside the residual blocks (taming `dropout`).
        norm_num_groups (`int`, defaults to 32):
            Groups of every GroupNorm. Taming fixes 32; it must divide every channel count, so tiny test
            configurations may use fewer.

    Example:

    ```python
    >>> config = WorldVLAVQConfig()  # Meta's VQGAN: 256 x 256 pixels -> 16 x 16 codes
    >>> config.downsample_factor
    16
    ```
    """

    model_type = "worldvla_vqgan"

    def __init__(
        self,
        embed_dim: int = 256,
        num_embeddings: int = 8192,
        latent_channels: int = 256,
        double_latent: bool = False,
        in_channels: int = 3,
        out_channels: int = 3,
        base_channels: int = 128,
        channel_multiplier: list[int] | tuple[int, ...] = (1, 1, 2, 2, 4),
        num_res_blocks: int = 2,
        attn_resolutions: list[int] | tuple[int, ...] = (),
        resolution: int = 256,
        dropout: float = 0.0,
        norm_num_groups: int = 32,
        **kwargs,
    ):
        self.embed_dim = embed_dim
        self.num_embeddings = num_embeddings
        self.latent_channels = latent_channels
        self.double_latent = double_latent
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.base_channels = base_channels
        # Lists, not tuples, so that the config survives a JSON round trip unchanged.
        self.channel_multiplier = list(channel_multiplier)
        self.num_res_blocks = num_res_blocks
        self.attn_resolutions = list(attn_resolutions)
        self.resolution = resolution
        self.dropout = dropout
        self.norm_num_groups = norm_num_groups
        self._validate()
        super().__init__(**kwargs)

    @property
    def downsample_factor(self) -> int:
        """How many pixels one code covers along each side: 16 for Meta's VQGAN."""
        return 2 ** (len(self.channel_multiplier) - 1)

    def _validate(self) -> None:
        positive_ints = {
            "embed_dim": self.embed_dim,
            "num_embeddings": self.num_embeddings,
            "latent_channels": self.latent_channels,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "base_channels": self.base_channels,
            "num_res_blocks": self.num_res_blocks,
            "resolution": self.resolution,
            "norm_num_groups": self.norm_num_groups,
        }
        for name, value in positive_ints.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
        if self.double_latent is not False:
            raise ValueError(
                f"`double_latent` must be False for a VQGAN, got {self.double_latent!r}: a doubled latent "
                "(mean and log-variance) belongs to KL autoencoders, and `quant_conv` takes `latent_channels`."
            )
        if not self.channel_multiplier or not all(
            isinstance(m, int) and not isinstance(m, bool) and m >= 1 for m in self.channel_multiplier
        ):
            raise ValueError(
                "`channel_multiplier` must be a non-empty list of positive integers (one per resolution "
                f"level, e.g. [1, 1, 2, 2, 4]), got {self.channel_multiplier!r}."
            )
        if not all(isinstance(r, int) and not isinstance(r, bool) and r >= 1 for r in self.attn_resolutions):
            raise ValueError(
                "`attn_resolutions` must be a list of positive integers (feature-map sizes counted from "
                f"`resolution`; [] for Meta's VQGAN), got {self.attn_resolutions!r}."
            )
        if not isinstance(self.dropout, (int, float)) or isinstance(self.dropout, bool) or not 0 <= self.dropout < 1:
            raise ValueError(f"`dropout` must be a number in [0, 1), got {self.dropout!r}.")
        if self.resolution % self.downsample_factor != 0:
            raise ValueError(
                f"`resolution` ({self.resolution}) must be divisible by the downsample factor "
                f"{self.downsample_factor} (2 ** (len(channel_multiplier) - 1))."
            )
        level_resolutions = [self.resolution // 2**level for level in range(len(self.channel_multiplier))]
        unmatched = [r for r in self.attn_resolutions if r not in level_resolutions]
        if unmatched:
            raise ValueError(
                f"`attn_resolutions` {unmatched} match no level: with `resolution` {self.resolution} the levels "
                f"have sizes {level_resolutions}, and attention is added where a size is listed."
            )
        # Every GroupNorm sits on a level's width or on the width of the first level.
        channel_counts = sorted({self.base_channels * m for m in self.channel_multiplier} | {self.base_channels})
        indivisible = [c for c in channel_counts if c % self.norm_num_groups != 0]
        if indivisible:
            raise ValueError(
                f"`norm_num_groups` ({self.norm_num_groups}) must divide every channel count of the network "
                f"{channel_counts}; it does not divide {indivisible}. Use fewer groups or change "
                "`base_channels` / `channel_multiplier`."
            )




class WorldVLAConfig(PretrainedConfig):
    r"""
    Configuration of [`WorldVLAForConditionalGeneration`].

    Decoder (Chameleon-7B defaults):
        vocab_size (`int`, 65536): size of the shared text / image / action vocabulary.
        hidden_size (`int`, 4096), intermediate_size (`int`, 11008): widths of the residual stream and the SwiGLU MLP.
        num_hidden_layers (`int`, 32), num_attention_heads (`int`, 32), num_key_value_heads (`int`, 32).
        max_position_embeddings (`int`, 4096): longest sequence (prompt plus generated tokens) the model accepts.
        rms_norm_eps (`float`, 1e-5), rope_theta (`float`, 10000.0).
        use_qk_norm (`bool`, True): Chameleon's per-head LayerNorm on queries and keys.
        attention_bias (`bool`, False), mlp_bias (`bool`, False), hidden_act (`str`, "silu").
        attention_dropout (`float`, 0.0).
        residual_dropout (`float`, 0.05): dropout on the attention and MLP outputs before each residual add
            (training only), as in the release.
        initializer_range (`float`, 0.02), tie_word_embeddings (`bool`, False).

    Token layout (defaults are the released ids; a small model may use `compact_token_layout`; `token_layout` gives
    them as one `WorldVLATokenLayout`):
        bos_token_id (0), pad_token_id (0): padding positions carry label -100 and attention mask 0.
        separator_token_id (8710): ends every turn; also the end-of-sequence id for generation.
        image_start_token_id (8197), image_end_token_id (8196), image_row_end_token_id (8803).
        image_grid_token_offset (8804): the grid token of a side of `s` pixels is `offset + s / 32`.
        image_token_offset (4), image_codebook_size (8192): VQ code `c` is token `offset + c`.
        action_start_token_id (10004), action_end_token_id (15004).
        action_token_offset (10005): action bin `b` (1-based, 1..n_action_bins) is token `offset + b`.

    Actions and images:
        action_dim (`int`, 7): (dx, dy, dz, drot x3, gripper).
        n_action_bins (`int`, 256): uniform bins over the normalised range [-1, 1].
        action_chunk_size (`int`, 5): actions predicted per query (K; 10 for LIBERO-10).
        history_frames (`int`, 2): frames in an action prompt (the previous and the current).
        wrist_camera (`bool`, False): each history step of an action prompt shows the third-person frame followed
            by the wrist camera's frame (RynnVLA-002's third view + wrist layout); False is WorldVLA's third-person
            camera only. World-model samples always use the third-person camera.
        image_size (`int`, 256): side of the square frames the model sees (256 or 512 for the release).
        image_patch_size (`int`, 16): pixels per VQ code along a side (the VQGAN's downsampling).

    Training:
        image_loss_weight (`float`, 0.04): cross-entropy weight of image-code targets (the paper's alpha).
        z_loss_weight (`float`, 1e-5): weight of mean(logsumexp(logits)^2) over labelled positions.
        loss_chunk_size (`int`, 1024): labelled positions per chunk when computing the loss, so that fp32
            logits are never held for the whole batch.

    Ablation:
        use_action_attention_mask (`bool`, True): True is WorldVLA's rule (an action block after the last image
            does not see earlier action blocks); False is a plain causal mask.

    Decoding:
        action_bin_window (`int`, 1): an action bin is decoded as the most likely bin inside the window of this many
            neighbouring bins that holds the most probability; 1 is the plain argmax, the release's greedy decoding.
            With 256 bins a broad mode spreads its probability over many bins while a saturated action (+-1, the
            gripper's or a clipped motion's) puts all of its own into one: a wider window stops a small narrow
            mode from beating a likelier broad one.

    Runtime:
        use_cache (`bool`, True): whether forward passes return a KV cache by default. Training turns it off; a
            saved config always says True, so that no training setting reaches a published checkpoint.

    Every field is checked when the config is built or loaded (types, ranges, a token layout inside the vocabulary
    and a context that holds the longest sample); a ValueError names the field and what to change.
    """

    model_type = "worldvla"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(
        self,
        vocab_size=65536,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=None,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        use_qk_norm=True,
        attention_bias=False,
        mlp_bias=False,
        hidden_act="silu",
        attention_dropout=0.0,
        residual_dropout=0.05,
        initializer_range=0.02,
        tie_word_embeddings=False,
        bos_token_id=RELEASED_TOKEN_LAYOUT["bos_token_id"],
        pad_token_id=RELEASED_TOKEN_LAYOUT["pad_token_id"],
        separator_token_id=RELEASED_TOKEN_LAYOUT["separator_token_id"],
        image_start_token_id=RELEASED_TOKEN_LAYOUT["image_start_token_id"],
        image_end_token_id=RELEASED_TOKEN_LAYOUT["image_end_token_id"],
        image_row_end_token_id=RELEASED_TOKEN_LAYOUT["image_row_end_token_id"],
        image_grid_token_offset=RELEASED_TOKEN_LAYOUT["image_grid_token_offset"],
        image_token_offset=RELEASED_TOKEN_LAYOUT["image_token_offset"],
        image_codebook_size=RELEASED_TOKEN_LAYOUT["image_codebook_size"],
        action_start_token_id=RELEASED_TOKEN_LAYOUT["action_start_token_id"],
        action_end_token_id=RELEASED_TOKEN_LAYOUT["action_end_token_id"],
        action_token_offset=RELEASED_TOKEN_LAYOUT["action_token_offset"],
        action_dim=7,
        n_action_bins=256,
        action_chunk_size=5,
        history_frames=2,
        wrist_camera=False,
        image_size=256,
        image_patch_size=16,
        image_loss_weight=0.04,
        z_loss_weight=1e-5,
        loss_chunk_size=1024,
        use_action_attention_mask=True,
        action_bin_window=1,
        use_cache=True,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_attention_heads if num_key_value_heads is None else num_key_value_heads
        self.max_position_embeddings = max_position_embeddings
        self.rms_norm_eps = rms_norm_eps
        self.rope_theta = rope_theta
        self.use_qk_norm = use_qk_norm
        self.attention_bias = attention_bias
        self.mlp_bias = mlp_bias
        self.hidden_act = hidden_act
        self.attention_dropout = attention_dropout
        self.residual_dropout = residual_dropout
        self.initializer_range = initializer_range

        self.separator_token_id = separator_token_id
        self.image_start_token_id = image_start_token_id
        self.image_end_token_id = image_end_token_id
        self.image_row_end_token_id = image_row_end_token_id
        self.image_grid_token_offset = image_grid_token_offset
        self.image_token_offset = image_token_offset
        self.image_codebook_size = image_codebook_size
        self.action_start_token_id = action_start_token_id
        self.action_end_token_id = action_end_token_id
        self.action_token_offset = action_token_offset

        self.action_dim = action_dim
        self.n_action_bins = n_action_bins
        self.action_chunk_size = action_chunk_size
        self.history_frames = history_frames
        self.wrist_camera = wrist_camera
        self.image_size = image_size
        self.image_patch_size = image_patch_size

        self.image_loss_weight = image_loss_weight
        self.z_loss_weight = z_loss_weight
        self.loss_chunk_size = loss_chunk_size
        self.use_action_attention_mask = use_action_attention_mask
        self.action_bin_window = action_bin_window
        self.use_cache = use_cache

        kwargs.setdefault("eos_token_id", separator_token_id)
        super().__init__(
            bos_token_id=bos_token_id,
            pad_token_id=pad_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )
        self.validate_worldvla()

    @staticmethod
    def compact_token_layout(text_vocab_size, image_codebook_size, n_action_bins=256):
        """Token ids for a small model: text ids first, then specials, image codes and action bins.

        Returns a dict of config keyword arguments, `vocab_size` included. BOS and padding are id 0, so the
        text tokenizer must put its BOS there (the project's own tokenizer does).
        """
        next_id = text_vocab_size
        layout = {"bos_token_id": 0, "pad_token_id": 0}
        for name in ("separator_token_id", "image_start_token_id", "image_end_token_id", "image_row_end_token_id"):
            layout[name] = next_id
            next_id += 1
        layout["image_grid_token_offset"] = next_id
        next_id += MAX_IMAGE_GRID + 1
        layout["image_token_offset"] = next_id
        layout["image_codebook_size"] = image_codebook_size
        next_id += image_codebook_size
        layout["action_start_token_id"] = next_id
        layout["action_end_token_id"] = next_id + 1
        layout["action_token_offset"] = next_id + 1  # bin b is offset + b, b >= 1: no clash with the end id
        layout["n_action_bins"] = n_action_bins
        layout["vocab_size"] = next_id + 2 + n_action_bins
        return layout

    @classmethod
    def from_dict(cls, config_dict, **kwargs):
        # `from_pretrained(..., residual_dropout=...)` sets overrides after `__init__` has validated the file's values.
        loaded = super().from_dict(config_dict, **kwargs)
        (loaded[0] if isinstance(loaded, tuple) else loaded).validate_worldvla()
        return loaded

    def to_dict(self):
        output = super().to_dict()
        # `use_cache` is a runtime switch (train.py turns it off for training): a saved or published config always
        # generates with the cache.
        output["use_cache"] = True
        return output

    @property
    def token_layout(self):
        """The token ids and sizes as a `WorldVLATokenLayout` (built on each access: it follows edits of the config)."""
        return WorldVLATokenLayout.from_config(self)

    @property
    def head_dim(self):
        return self.hidden_size // self.num_attention_heads

    @property
    def image_grid_size(self):
        """VQ codes along one side of a frame."""
        return self.token_layout.image_grid_size

    @property
    def image_sequence_length(self):
        """Tokens of one frame: start, two grid tokens, rows of codes each closed by a row end, end."""
        return self.token_layout.image_sequence_length

    @property
    def action_block_length(self):
        """Tokens of one action: start, `action_dim` bins, end."""
        return self.token_layout.action_block_length

    @property
    def cameras_per_step(self):
        """Frames an action prompt shows per history step: the third-person camera, and the wrist camera's."""
        return 2 if self.wrist_camera else 1

    @property
    def longest_sample_length(self):
        """Tokens of the longest training sample, its prompt text left out: an action sample ([BOS], the history
        frames, [SEP], K action blocks, [SEP]) or a world-model sample ([BOS], frame, action, [SEP], frame, [SEP])."""
        frame, block = self.image_sequence_length, self.action_block_length
        action_sample = 1 + self.history_frames * self.cameras_per_step * frame + 1 + self.action_chunk_size * block + 1
        world_model_sample = 1 + frame + block + 1 + frame + 1
        return max(action_sample, world_model_sample)

    def processor_layout(self):
        """The token ids and sizes a `WorldVLAProcessor` is built from (see `PROCESSOR_LAYOUT_FIELDS`)."""
        return self.token_layout.to_dict()

    def image_grid_token_id(self, side):
        return self.token_layout.image_grid_token_id(side)

    def validate_worldvla(self):
        """Raise a ValueError naming the first invalid field and what to change."""
        positive_ints = (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "max_position_embeddings",
            "action_chunk_size",
            "history_frames",
            "loss_chunk_size",
        )
        for name in positive_ints:
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"`{name}` must be an integer >= 1 (not a bool), got {value!r}")
        booleans = (
            "use_qk_norm",
            "attention_bias",
            "mlp_bias",
            "use_action_attention_mask",
            "wrist_camera",
            "use_cache",
            "tie_word_embeddings",
        )
        for name in booleans:
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"`{name}` must be True or False, got {getattr(self, name)!r}")
        if self.hidden_act not in ACT2FN:
            raise ValueError(
                f"`hidden_act` must be one of transformers' activations (e.g. 'silu'), got {self.hidden_act!r}"
            )
        for name in ("residual_dropout", "attention_dropout"):
            value = getattr(self, name)
            if not _is_number(value) or not 0 <= value < 1:
                raise ValueError(f"`{name}` must be a probability in [0, 1), got {value!r}")
        for name in ("rms_norm_eps", "rope_theta"):
            value = getattr(self, name)
            if not _is_number(value) or value <= 0:
                raise ValueError(f"`{name}` must be a number > 0, got {value!r}")
        for name in ("image_loss_weight", "z_loss_weight", "initializer_range"):
            value = getattr(self, name)
            if not _is_number(value) or value < 0:
                raise ValueError(f"`{name}` must be a finite number >= 0, got {value!r}")
        window = self.action_bin_window
        if not _is_int(window) or window < 1 or window % 2 == 0 or window > self.n_action_bins:
            raise ValueError(
                f"`action_bin_window` must be an odd integer from 1 (plain argmax) to `n_action_bins` "
                f"({self.n_action_bins}), got {window!r}"
            )
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"`hidden_size` ({self.hidden_size}) must be divisible by `num_attention_heads` "
                f"({self.num_attention_heads})"
            )
        if self.head_dim % 2:
            raise ValueError(
                f"the head size `hidden_size / num_attention_heads` ({self.head_dim}) must be even: rotary embeddings "
                "rotate pairs of channels"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"`num_attention_heads` ({self.num_attention_heads}) must be a multiple of `num_key_value_heads` "
                f"({self.num_key_value_heads})"
            )

        layout = self.token_layout
        if layout.largest_token_id >= self.vocab_size:
            raise ValueError(
                f"the token layout uses ids up to {layout.largest_token_id}, outside the vocabulary: raise "
                f"`vocab_size` ({self.vocab_size}) to at least {layout.largest_token_id + 1} or move the ids "
                "(`WorldVLAConfig.compact_token_layout` gives a layout and its vocab_size)"
            )
        if self.longest_sample_length > self.max_position_embeddings:
            raise ValueError(
                f"`max_position_embeddings` ({self.max_position_embeddings}) is shorter than the longest sample even "
                f"without its text: {self.longest_sample_length} tokens (an action sample has `history_frames` = "
                f"{self.history_frames} steps of {self.cameras_per_step} frame(s) of {self.image_sequence_length} tokens and `action_chunk_size` = "
                f"{self.action_chunk_size} actions of {self.action_block_length}; a world-model sample two frames and "
                "an action). Raise `max_position_embeddings` to that plus the longest prompt text, or lower "
                "`history_frames`, `action_chunk_size` or `image_size`."
            )


WorldVLAConfig.register_for_auto_class()
