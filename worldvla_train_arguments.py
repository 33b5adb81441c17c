"""The options of `train.py`, importable without torch or transformers, so that `python train.py --help` answers at
once: WorldVLA's own (`ModelArguments`, `DataArguments`) and the paper's recipe as defaults of transformers'
Trainer options (`TrainingRecipe`), which `worldvla_training.WorldVLATrainingArguments` completes with every other
`TrainingArguments` option.
"""

from dataclasses import dataclass, field

DEFAULT_LORA_TARGETS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
ACTION_STATS_MODES = ("checkpoint", "quantile", "minmax")


@dataclass
class ModelArguments:
    model: str | None = field(
        default=None, metadata={"help": "WorldVLA checkpoint to start from: a local folder or a Hub id (trust_remote_code)."}
    )
    from_scratch_config: str | None = field(
        default=None,
        metadata={"help": "Train from random weights instead: 'small' (scripts/build_small_checkpoint.py) or a config.json path (with --processor)."},
    )
    processor: str | None = field(default=None, metadata={"help": "Processor folder or Hub id; defaults to --model."})
    revision: str | None = field(default=None, metadata={"help": "Hub revision of --model."})
    lora_rank: int = field(default=0, metadata={"help": "LoRA rank; 0 = full fine-tuning."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling numerator (scale = alpha / rank)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA branch."})
    lora_target_modules: str = field(default=DEFAULT_LORA_TARGETS, metadata={"help": "Comma-separated module names to adapt."})
    merge_lora: bool = field(default=False, metadata={"help": "Also save the merged full model in output_dir/model."})
    base_model_id: str | None = field(
        default=None,
        metadata={
            "help": "Hub id the LoRA adapter records as its base (its `base_model_name_or_path`), for a base trained "
            "from a local folder and published under that id; default: --model's Hub id and commit, or its absolute path."
        },
    )
    base_model_revision: str | None = field(default=None, metadata={"help": "Revision of --base-model-id recorded with it."})
    wrist_camera: bool = field(
        default=False,
        metadata={"help": "Action prompts show each history step's wrist-camera frame after its third-person frame (RynnVLA-002's third view + wrist; demos need obs/eye_in_hand_rgb). Sets wrist_camera in the model config."},
    )
    max_position_embeddings: int | None = field(
        default=None, metadata={"help": "Longest sequence the model accepts; raise it when --wrist-camera lengthens the prompts of a checkpoint."}
    )
    residual_dropout: float = field(default=0.05, metadata={"help": "Dropout before each residual add (paper: 0.05)."})
    z_loss_weight: float = field(default=1e-5, metadata={"help": "Weight of mean(logsumexp^2) (paper: 1e-5)."})
    image_loss_weight: float = field(default=0.04, metadata={"help": "Loss weight of image-code targets (paper: 0.04)."})
    model_dtype: str = field(
        default="auto",
        metadata={"help": "Weights dtype: 'auto' = bfloat16 for LoRA on CUDA (frozen base), float32 otherwise (master weights of mixed precision)."},
    )
    attn_implementation: str = field(default="sdpa", metadata={"help": "'sdpa' or 'eager'."})


@dataclass
class DataArguments:
    data_dir: str = field(default=None, metadata={"help": "Folder of LIBERO-format .hdf5 files, one task per file."})
    dataset_key: str | None = field(
        default=None, metadata={"help": "Key of the new action statistics in the saved processor; default: the data folder's name."}
    )
    action_stats: str | None = field(
        default=None,
        metadata={
            "help": "Bounds of the 256 action bins: 'checkpoint' = the checkpoint's statistics (--unnorm-key; bins keep "
            "their meaning, as the release's fixed LIBERO bounds), 'quantile' = q01/q99 of the training actions, values "
            "beyond clipped (robust to outliers, as OpenVLA), 'minmax' = min/max of the training actions. Default: "
            "'checkpoint' when fine-tuning --model, 'quantile' from scratch."
        },
    )
    unnorm_key: str | None = field(default=None, metadata={"help": "Checkpoint statistics used with --action-stats checkpoint; default: the processor's default key."})
    val_split: str = field(
        default="release",
        metadata={
            "help": "Validation episodes held out: 'release' = the release's in-distribution episodes and "
            "out-of-distribution last task, 'episodes' = in-distribution episodes only (every task is trained), 'none'."
        },
    )
    sample_kinds: str = field(default="action,world_model", metadata={"help": "Sample kinds to train on: action, world_model or both."})
    data_cache_dir: str | None = field(default=None, metadata={"help": "Where the tokenised episodes are cached (default: the datasets cache)."})
    replay_data_dir: str | None = field(
        default=None,
        metadata={
            "help": "Folder of demonstrations of tasks the --model already knows (LIBERO-format, one task per file): "
            "the first --replay-episodes-per-task episodes of each join the training set, so that fine-tuning on "
            "--data-dir rehearses the old tasks instead of overwriting them. Validation stays on --data-dir."
        },
    )
    replay_episodes_per_task: int = field(default=5, metadata={"help": "Episodes of each --replay-data-dir task trained on."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Evaluate on the first N samples of each validation split (an even spread)."})


@dataclass
class TrainingRecipe:
    """The paper's recipe as defaults of transformers' TrainingArguments options; None: chosen by the device."""

    output_dir: str = field(default="runs/worldvla-finetune", metadata={"help": "Checkpoints and final outputs."})
    learning_rate: float = field(default=5e-6, metadata={"help": "Peak AdamW learning rate (paper: 5e-6)."})
    lr_scheduler_type: str = field(default="constant_with_warmup", metadata={"help": "Learning-rate schedule after the warm-up (paper: constant)."})
    warmup_steps: float = field(default=0.01, metadata={"help": "Warm-up steps, or a fraction of all steps when < 1 (paper: 1%%)."})
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW beta1."})
    adam_beta2: float = field(default=0.95, metadata={"help": "AdamW beta2 (paper: 0.95)."})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay (paper: 0.1)."})
    max_grad_norm: float = field(default=4.0, metadata={"help": "Gradient clipping norm (paper: 4)."})
    num_train_epochs: float = field(default=40.0, metadata={"help": "Epochs (paper: 40); --max-steps overrides."})
    per_device_train_batch_size: int = field(default=8, metadata={"help": "Training samples per process and forward pass."})
    per_device_eval_batch_size: int = field(default=8, metadata={"help": "Validation samples per process and forward pass."})
    global_batch_size: int = field(
        default=32,
        metadata={"help": "Samples per optimizer step over all processes (paper: 32); sets gradient_accumulation_steps = global / (per-device x processes). 0: use --gradient-accumulation-steps as given."},
    )
    bf16: bool | None = field(
        default=None, metadata={"help": "bf16 autocast; None: on CUDA with bf16 support (CPUs train in fp32).", "nargs": "?", "const": True}
    )
    activation_checkpointing: bool | None = field(
        default=None,
        metadata={"help": "Recompute layer activations in the backward pass; None: on CUDA (as the release).", "nargs": "?", "const": True},
    )
    ddp_find_unused_parameters: bool | None = field(default=False, metadata={"help": "Every parameter gets a gradient."})
    use_cpu: bool | None = field(
        default=None,
        metadata={"help": "Train on the CPU; None: without CUDA (multi-process CPU runs then use gloo).", "nargs": "?", "const": True},
    )
    eval_strategy: str = field(default="epoch", metadata={"help": "When to validate: 'no', 'steps' (--eval-steps) or 'epoch'."})
    save_strategy: str = field(default="epoch", metadata={"help": "When to write a checkpoint: 'no', 'steps' (--save-steps) or 'epoch'."})
    logging_steps: float = field(default=10, metadata={"help": "Optimizer steps between logged losses."})
