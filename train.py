"""Fine-tune WorldVLA on LIBERO-format HDF5 demonstrations with the Hugging Face Trainer.

Full fine-tuning or LoRA (peft), one process or many (`accelerate launch`, DDP or FSDP), defaults = the paper's
recipe (Cen et al., 2025, section "training"; reference notes section 5): AdamW lr 5e-6 constant after a 1%
warm-up, betas (0.9, 0.95), weight decay 0.1, gradient clipping 4, global batch 32, 40 epochs, residual
dropout 0.05, z-loss 1e-5, image-token loss weight 0.04, action and world-model samples mixed.

    python train.py --model path/or/hub-id --data-dir demos/ --output-dir runs/ft --lora-rank 32
    accelerate launch --config_file configs/accelerate_fsdp.yaml train.py --model ... --data-dir ...

Outputs under --output-dir: Trainer checkpoints (`checkpoint-N/`, resumable with --resume-from-checkpoint),
`model/` (the full model, or the merged one with --merge-lora, with the processor holding the new action
statistics, the code files and a model card) and, with LoRA, `adapter/`. Each is written to a temporary
folder and renamed when complete. See docs/training.md.
"""

import sys
from pathlib import Path

from transformers import HfArgumentParser

from worldvla_cli import HelpFormatter
from worldvla_train_arguments import ACTION_STATS_MODES, DataArguments, ModelArguments, TrainingRecipe

HELP_EPILOG = """Every other option of transformers' TrainingArguments is taken too (--max-steps, --seed, --eval-steps,
--save-steps, --resume-from-checkpoint, --push-to-hub, --hub-model-id, ...): `python train.py --help-all` lists
them all (it first imports transformers' Trainer, which takes several seconds)."""


def parse_arguments(argv=None):
    """(model, data, training arguments), checked; --help lists WorldVLA's options and the recipe's defaults
    without importing torch, --help-all every Trainer option."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if {"-h", "--help"} & set(argv):
        parser = HfArgumentParser(
            (ModelArguments, DataArguments, TrainingRecipe), description=__doc__, epilog=HELP_EPILOG, formatter_class=HelpFormatter
        )
        parser.parse_args(["--help"])
    # Imported only now: they bring torch and transformers' Trainer, seconds that --help need not wait for.
    import worldvla_data
    from policy_worldvla import missing_local_checkpoint
    from worldvla_training import WorldVLATrainingArguments

    parser = HfArgumentParser(
        (ModelArguments, DataArguments, WorldVLATrainingArguments), description=__doc__, formatter_class=HelpFormatter
    )
    if "--help-all" in argv:
        parser.parse_args(["--help"])
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    if (model_args.model is None) == (model_args.from_scratch_config is None):
        parser.error("give exactly one of --model and --from-scratch-config")
    if data_args.data_dir is None:
        parser.error("--data-dir is required")
    if model_args.lora_rank > 0 and model_args.model is None:
        parser.error("--lora-rank adapts a trained --model; a model trained from scratch is trained in full")
    # Inputs are checked here, before a model is loaded: a mistake costs a second, not a 7B load.
    for option, folder in (("--data-dir", data_args.data_dir), ("--replay-data-dir", data_args.replay_data_dir)):
        if folder is None:
            continue
        try:
            worldvla_data.list_task_files(folder)
        except worldvla_data.LiberoDataError as error:
            parser.error(f"{option}: {error}")
    if data_args.replay_data_dir is not None:
        if model_args.model is None:
            parser.error("--replay-data-dir rehearses the tasks a trained --model knows; a model from scratch has none")
        if data_args.replay_episodes_per_task < 1:
            parser.error(f"--replay-episodes-per-task must be at least 1, got {data_args.replay_episodes_per_task}")
    for option, value in (("--model", model_args.model), ("--processor", model_args.processor)):
        if value is not None and missing_local_checkpoint(value):
            parser.error(f"{option} {missing_local_checkpoint(value)}")
    if data_args.action_stats is None:
        data_args.action_stats = "checkpoint" if model_args.model is not None else "quantile"
    if data_args.action_stats not in ACTION_STATS_MODES:
        parser.error(f"--action-stats must be one of {ACTION_STATS_MODES}, got {data_args.action_stats!r}")
    if data_args.action_stats == "checkpoint" and model_args.model is None:
        parser.error("--action-stats checkpoint needs --model (a model trained from scratch has no statistics yet)")
    if model_args.lora_rank > 0 and training_args.push_to_hub and model_args.base_model_id is None and Path(model_args.model or "").exists():
        parser.error(
            f"--push-to-hub of a LoRA adapter on the local base {model_args.model}: the pushed adapter could not find "
            "its base anywhere else; publish the base and name it with --base-model-id (and --base-model-revision)"
        )
    if data_args.val_split not in worldvla_data.VALIDATION_SPLITS:
        parser.error(f"--val-split must be one of {worldvla_data.VALIDATION_SPLITS}, got {data_args.val_split!r}")
    if training_args.global_batch_size:
        per_step = training_args.per_device_train_batch_size * training_args.world_size
        if training_args.global_batch_size % per_step:
            parser.error(
                f"--global-batch-size {training_args.global_batch_size} is not a multiple of per-device batch "
                f"{training_args.per_device_train_batch_size} x {training_args.world_size} processes"
            )
        training_args.gradient_accumulation_steps = training_args.global_batch_size // per_step
    if training_args.activation_checkpointing and training_args.activation_checkpointing_kwargs is None:
        # Non-reentrant: gradients flow to LoRA weights without marking the frozen embeddings' outputs.
        training_args.activation_checkpointing_kwargs = {"use_reentrant": False}
    return model_args, data_args, training_args


def main(argv=None):
    model_args, data_args, training_args = parse_arguments(argv)
    from worldvla_training import train

    return train(model_args, data_args, training_args)


if __name__ == "__main__":
    main()
