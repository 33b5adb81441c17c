"""What `train.py` runs once its options are parsed: the model (fine-tuned in full or with LoRA, or from random
weights), the tokenised demonstrations, the Trainer with WorldVLA's losses and validation metrics, and the published
folders (weights, processor, model card, training summary and curves)."""

import json
import logging
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoProcessor, Trainer, TrainingArguments, set_seed
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

import worldvla_data
from configuration_worldvla import IGNORE_INDEX
from modeling_worldvla import safetensors_problem
from processing_worldvla import uses_wrist_camera, vq_fingerprint
from worldvla_cli import configure_logging
from worldvla_results import publish_folder, staging_folder
from worldvla_train_arguments import ACTION_STATS_MODES, TrainingRecipe

logger = logging.getLogger("train")
ROOT = Path(__file__).resolve().parent


@dataclass
class WorldVLATrainingArguments(TrainingRecipe, TrainingArguments):
    """transformers' TrainingArguments with the paper's recipe (`TrainingRecipe`) as defaults; the options the
    recipe leaves to the device (None) are set here: CPU training without CUDA, bf16 and activation checkpointing
    with it."""

    def __post_init__(self):
        on_cuda = torch.cuda.is_available()
        if self.use_cpu is None:
            self.use_cpu = not on_cuda
        on_cuda = on_cuda and not self.use_cpu
        if self.bf16 is None:
            self.bf16 = on_cuda and torch.cuda.is_bf16_supported()
        # Left None otherwise, so that the deprecated --gradient-checkpointing still decides.
        if self.activation_checkpointing is None and self.gradient_checkpointing is None and on_cuda:
            self.activation_checkpointing = True
        super().__post_init__()


# ---------------------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------------------


def load_model_and_processor(model_args, on_cuda):
    """(model, processor), with the recipe's dropout and loss weights written into the model config."""
    overrides = {
        "residual_dropout": model_args.residual_dropout,
        "z_loss_weight": model_args.z_loss_weight,
        "image_loss_weight": model_args.image_loss_weight,
        "use_cache": False,
    }
    if model_args.wrist_camera:
        overrides["wrist_camera"] = True
    if model_args.max_position_embeddings is not None:
        overrides["max_position_embeddings"] = model_args.max_position_embeddings
    if model_args.from_scratch_config == "small":
        sys.path.insert(0, str(ROOT))
        from scripts.build_small_checkpoint import build_small_worldvla

        model, processor = build_small_worldvla(**overrides)
    elif model_args.from_scratch_config is not None:
        if model_args.processor is None:
            raise ValueError("--from-scratch-config with a config.json needs --processor (the tokenizers and VQ)")
        from configuration_worldvla import WorldVLAConfig
        from modeling_worldvla import WorldVLAForConditionalGeneration

        config_file = Path(model_args.from_scratch_config)
        if config_file.is_dir():
            config_file = config_file / "config.json"
        if not config_file.is_file():
            raise FileNotFoundError(f"--from-scratch-config {model_args.from_scratch_config}: no such config file")
        config = WorldVLAConfig.from_dict({**json.loads(config_file.read_text()), **overrides})
        model = WorldVLAForConditionalGeneration(config)
        processor = AutoProcessor.from_pretrained(model_args.processor, trust_remote_code=True)
    else:
        dtype = torch.float32
        if model_args.model_dtype == "auto" and model_args.lora_rank > 0 and on_cuda:
            dtype = torch.bfloat16  # the frozen base needs no fp32 master copy
        elif model_args.model_dtype != "auto":
            dtype = getattr(torch, model_args.model_dtype)
        model = AutoModelForCausalLM.from_pretrained(
            model_args.model,
            revision=model_args.revision,
            trust_remote_code=True,
            dtype=dtype,
            attn_implementation=model_args.attn_implementation,
            **overrides,
        )
        processor = AutoProcessor.from_pretrained(
            model_args.processor or model_args.model, revision=model_args.revision, trust_remote_code=True
        )
    if model_args.wrist_camera and not hasattr(type(model.config), "cameras_per_step"):
        raise ValueError(
            f"{model_args.model}: its code files predate the wrist camera; copy this repository's configuration_worldvla.py, "
            "modeling_worldvla.py and processing_worldvla.py into it to train it with --wrist-camera"
        )
    processor.check_compatible(model.config)
    # The VQ lives in the processor, outside the trained model; it only encodes the data, in eval mode.
    processor.vq_model.requires_grad_(False).eval()
    if model_args.lora_rank > 0:
        from peft import LoraConfig, get_peft_model

        lora_config = LoraConfig(
            r=model_args.lora_rank,
            lora_alpha=model_args.lora_alpha,
            lora_dropout=model_args.lora_dropout,
            target_modules=[name.strip() for name in model_args.lora_target_modules.split(",") if name.strip()],
            task_type="CAUSAL_LM",
        )
        base_name, base_revision = adapter_base(model_args)
        model = get_peft_model(model, lora_config)
        # peft records the name the base was loaded under (a relative path, or the Hub id without its commit).
        model.peft_config["default"].base_model_name_or_path = base_name
        model.peft_config["default"].revision = base_revision
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info("%.2fM parameters, %.2fM trainable", sum(p.numel() for p in model.parameters()) / 1e6, trainable / 1e6)
    return model, processor


def adapter_base(model_args):
    """(name or path, revision) a LoRA adapter records as its base, so that it loads from anywhere: --base-model-id
    when given; else --model's absolute path when it is a local folder; else its Hub id and the commit loaded."""
    if model_args.base_model_id is not None:
        return model_args.base_model_id, model_args.base_model_revision
    if Path(model_args.model).exists():
        return str(Path(model_args.model).resolve()), None
    from transformers.utils.hub import cached_file, extract_commit_hash

    # The snapshot folder the config was just loaded from is named by its commit (a branch name would move).
    config_file = cached_file(model_args.model, "config.json", revision=model_args.revision)
    return model_args.model, extract_commit_hash(config_file, None) or model_args.revision


# ---------------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------------


def build_datasets(data_args, processor, config, training_args):
    """(train samples, {"ind": ..., "ood": ...} validation samples, summary dict); adds the statistics to the processor."""
    with training_args.main_process_first(desc="tokenising the demonstrations"):
        rows = worldvla_data.tokenised_episodes(
            data_args.data_dir, processor, data_args.data_cache_dir, wrist_camera=uses_wrist_camera(config)
        )
    episodes = worldvla_data.load_episodes(rows)
    splits = worldvla_data.split_episodes([episode.task for episode in episodes], data_args.val_split)
    by_split = {name: [e for e, s in zip(episodes, splits) if s == name] for name in ("train", "val_ind", "val_ood")}
    if not by_split["train"]:
        raise ValueError(f"no training episodes in {data_args.data_dir}")
    replay = replay_episodes(data_args, processor, config, training_args, new_tasks={episode.task for episode in episodes})
    by_split["train"] += replay

    dataset_key = data_args.dataset_key or Path(data_args.data_dir).resolve().name
    statistics = action_statistics(by_split["train"], data_args, processor)
    # The key always holds the bounds the bins were trained with, so predict_action un-normalises correctly.
    processor.add_action_statistics(dataset_key, statistics, make_default=True)

    kinds = tuple(kind.strip() for kind in data_args.sample_kinds.split(",") if kind.strip())

    def samples(split_episodes):
        return worldvla_data.WorldVLASamples(
            split_episodes, processor, dataset_key, config.history_frames, config.action_chunk_size, kinds,
            wrist_camera=uses_wrist_camera(config),
        )

    train = samples(by_split["train"])
    evaluation = {}
    for name, split in (("ind", "val_ind"), ("ood", "val_ood")):
        if by_split[split]:
            evaluation[name] = samples(by_split[split])
            if data_args.max_eval_samples:
                evaluation[name] = evenly_spread_subset(evaluation[name], data_args.max_eval_samples)
    summary = {
        "data_dir": str(data_args.data_dir),
        "task_files": len({episode.task for episode in episodes}),
        "dataset_key": dataset_key,
        "action_stats": data_args.action_stats,
        "statistics": statistics,
        "episodes": {name: len(split) for name, split in by_split.items()},
        "replay": {
            "data_dir": str(data_args.replay_data_dir),
            "tasks": len({episode.task for episode in replay}),
            "episodes": len(replay),
            "episodes_per_task": data_args.replay_episodes_per_task,
        } if replay else None,
        "samples": {"train": len(train), **{f"val_{name}": len(data) for name, data in evaluation.items()}},
        "train_sample_kinds": {kind: train.count(kind) for kind in kinds},
    }
    logger.info("data: %s", json.dumps({k: v for k, v in summary.items() if k != "statistics"}))
    return train, evaluation, summary


def replay_episodes(data_args, processor, config, training_args, new_tasks):
    """The first `replay_episodes_per_task` episodes of each task of `replay_data_dir` (in demo order: episodes the
    model was trained on, since every validation split holds out the last ones), or [] without a replay folder."""
    if data_args.replay_data_dir is None:
        return []
    with training_args.main_process_first(desc="tokenising the replay demonstrations"):
        rows = worldvla_data.tokenised_episodes(
            data_args.replay_data_dir, processor, data_args.data_cache_dir, wrist_camera=uses_wrist_camera(config)
        )
    tasks = rows["task"]
    shared = sorted(new_tasks & set(tasks))
    if shared:
        raise ValueError(f"tasks {shared} are in both --data-dir and --replay-data-dir: replay is for the model's old tasks")
    # Rows are chosen by their task names alone: only the kept episodes' codes are read into memory.
    kept, seen = [], {}
    for index, task in enumerate(tasks):
        seen[task] = seen.get(task, 0) + 1
        if seen[task] <= data_args.replay_episodes_per_task:
            kept.append(index)
    logger.info("replay: %d episodes of %d tasks from %s", len(kept), len(seen), data_args.replay_data_dir)
    return worldvla_data.load_episodes(rows.select(kept))


def action_statistics(train_episodes, data_args, processor):
    """Statistics of the training actions, with "min"/"max" set to the bounds the 256 bins will cover."""
    train_actions = np.concatenate([episode.expert_actions for episode in train_episodes])
    statistics = worldvla_data.compute_action_statistics(train_actions)
    statistics["data_min"], statistics["data_max"] = statistics["min"], statistics["max"]
    bounds = data_args.action_stats
    if data_args.action_stats == "checkpoint":
        source_key = data_args.unnorm_key or processor.default_unnorm_key
        low, high = processor.action_tokenizer.bounds(source_key)
        bounds = f"checkpoint {source_key!r}"
    elif data_args.action_stats == "quantile":
        low, high = np.asarray(statistics["q01"]), np.asarray(statistics["q99"])
        for outlier in worldvla_data.find_action_outliers(train_episodes, low, high):
            logger.warning("action outlier (clipped to the q01/q99 bins): %s", outlier)
    elif data_args.action_stats == "minmax":
        low, high = np.asarray(statistics["min"]), np.asarray(statistics["max"])
    else:
        raise ValueError(f"action_stats must be one of {ACTION_STATS_MODES}, got {data_args.action_stats!r}")
    clipped = ((train_actions < low) | (train_actions > high)).mean()
    logger.info("action bins from %s (%s); %.3f%% of action values clipped", np.round(low, 4).tolist(), bounds, 100 * clipped)
    statistics.update(min=np.asarray(low).tolist(), max=np.asarray(high).tolist())
    return statistics


def evenly_spread_subset(dataset, count):
    """`count` samples spread over the whole split (its action samples come before its world-model ones)."""
    if count >= len(dataset):
        return dataset
    return torch.utils.data.Subset(dataset, np.linspace(0, len(dataset) - 1, count).round().astype(int).tolist())


# ---------------------------------------------------------------------------------------------------------------------
# Trainer with the separate losses and the evaluation metrics
# ---------------------------------------------------------------------------------------------------------------------


class WorldVLATrainer(Trainer):
    """Trainer that logs the action and image losses next to the total loss."""

    EXTRA_LOSSES = ("action_loss", "image_loss", "z_loss")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._extra_loss_sums = torch.zeros(2 * len(self.EXTRA_LOSSES), device=self.args.device)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs, use_cache=False)
        if model.training:
            for index, name in enumerate(self.EXTRA_LOSSES):
                value = outputs.get(name)
                if value is not None:
                    self._extra_loss_sums[2 * index] += value.detach().float()
                    self._extra_loss_sums[2 * index + 1] += 1
        if return_outputs:
            return outputs.loss, {"loss": outputs.loss, "logits": outputs.logits}
        return outputs.loss

    def log(self, logs, start_time=None):
        if "loss" in logs:  # a training log: every process gets here together, so the reduce is safe
            sums = self.accelerator.reduce(self._extra_loss_sums, reduction="sum").tolist()
            for index, name in enumerate(self.EXTRA_LOSSES):
                if sums[2 * index + 1]:
                    logs[name] = round(sums[2 * index] / sums[2 * index + 1], 6)
            self._extra_loss_sums.zero_()
        super().log(logs, start_time)

    def _save(self, output_dir=None, state_dict=None):
        super()._save(output_dir, state_dict)
        # peft's save_pretrained writes its template model card into every checkpoint; the published folders get
        # the real one (model_card), checkpoints none.
        (Path(output_dir or self.args.output_dir) / "README.md").unlink(missing_ok=True)


def make_preprocess_logits_for_metrics(config):
    """(B, L, V) logits -> three (B, L) arrays aligned with the labels (position i: the prediction of token i):
    the argmax, the argmax among action bins, and the cross-entropy of the label token. Only these are kept
    across evaluation batches, never the logits."""
    bins = config.token_layout.action_bin_slice

    def preprocess_logits_for_metrics(logits, labels):
        if isinstance(logits, tuple):
            logits = logits[0]
        targets = labels[:, 1:].clamp(min=0)
        predicted, predicted_bin, cross_entropy = [], [], []
        for row_logits, row_targets in zip(logits[:, :-1], targets):  # a row at a time: fp32 logits stay small
            row_logits = row_logits.float()
            predicted.append(row_logits.argmax(-1))
            predicted_bin.append(row_logits[:, bins].argmax(-1) + bins.start)
            cross_entropy.append(row_logits.logsumexp(-1) - row_logits.gather(-1, row_targets[:, None]).squeeze(-1))
        pad = torch.full((labels.shape[0], 1), IGNORE_INDEX, device=labels.device)
        return (
            torch.cat([pad, torch.stack(predicted)], 1),
            torch.cat([pad, torch.stack(predicted_bin)], 1),
            torch.cat([pad.float(), torch.stack(cross_entropy)], 1),
        )

    return preprocess_logits_for_metrics


def make_compute_metrics(processor, config, unnorm_key):
    """Action-token accuracy, L1 of the decoded actions (un-normalised, teacher-forced, against the label's bin
    centre), image-token accuracy, and the mean cross-entropy on action bins and on image codes."""

    def compute_metrics(evaluation):
        predicted, predicted_bin, cross_entropy = evaluation.predictions
        labels = evaluation.label_ids
        is_action = config.token_layout.is_action_bin(labels)
        is_image = config.token_layout.is_image_code(labels)
        metrics = {}
        if is_action.any():
            metrics["action_token_accuracy"] = float((predicted[is_action] == labels[is_action]).mean())
            metrics["action_loss"] = float(cross_entropy[is_action].mean())
            # Row-major boolean indexing keeps each action's action_dim bins together and in order.
            true_bins = labels[is_action].reshape(-1, config.action_dim)
            predicted_bins = predicted_bin[is_action].reshape(-1, config.action_dim)
            true_actions = processor.decode_actions(true_bins, unnorm_key)
            predicted_actions = processor.decode_actions(predicted_bins, unnorm_key)
            metrics["action_l1"] = float(np.abs(predicted_actions - true_actions).mean())
        if is_image.any():
            metrics["image_token_accuracy"] = float((predicted[is_image] == labels[is_image]).mean())
            metrics["image_loss"] = float(cross_entropy[is_image].mean())
        return metrics

    return compute_metrics


# ---------------------------------------------------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------------------------------------------------


def model_card(model_args, data_args, training_args, summary, metrics, kind, repo, adapter_base=None, wrist_camera=False):
    recipe = {
        "learning_rate": training_args.learning_rate,
        "lr_scheduler_type": getattr(training_args.lr_scheduler_type, "value", training_args.lr_scheduler_type),
        "warmup_steps": training_args.warmup_steps,
        "adam_betas": [training_args.adam_beta1, training_args.adam_beta2],
        "weight_decay": training_args.weight_decay,
        "max_grad_norm": training_args.max_grad_norm,
        "global_batch_size": training_args.per_device_train_batch_size
        * training_args.gradient_accumulation_steps
        * training_args.world_size,
        "num_train_epochs": training_args.num_train_epochs,
        "max_steps": training_args.max_steps,
        "bf16": training_args.bf16,
        "activation_checkpointing": bool(training_args.activation_checkpointing),
        "residual_dropout": model_args.residual_dropout,
        "z_loss_weight": model_args.z_loss_weight,
        "image_loss_weight": model_args.image_loss_weight,
        "seed": training_args.seed,
    }
    if model_args.lora_rank:
        recipe["lora"] = {
            "rank": model_args.lora_rank,
            "alpha": model_args.lora_alpha,
            "dropout": model_args.lora_dropout,
            "target_modules": model_args.lora_target_modules,
            "merged": kind == "model",
        }
    base = model_args.model or f"random weights (--from-scratch-config {model_args.from_scratch_config})"
    front_matter = ["---", f"library_name: {'peft' if kind == 'adapter' else 'transformers'}", "pipeline_tag: robotics", "tags: [worldvla, vla, world-model, libero]"]
    hub_base = adapter_base[0] if adapter_base else model_args.model
    if hub_base and not Path(hub_base).exists():
        front_matter.append(f"base_model: {hub_base}")
    front_matter.append("---")
    # A wrist-camera model reads each history step's third-person frame, then its wrist frame (prompt_frames).
    images = "[previous_frame, previous_wrist_frame, current_frame, current_wrist_frame]" if wrist_camera else "[previous_frame, current_frame]"
    if kind == "adapter":
        base_name, base_revision = adapter_base
        revision = f", revision={base_revision!r}" if base_revision else ""
        use = f"""```python
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoProcessor
base = AutoModelForCausalLM.from_pretrained({base_name!r}{revision}, trust_remote_code=True)
model = PeftModel.from_pretrained(base, {repo!r})  # model.merge_and_unload() gives a plain WorldVLA
processor = AutoProcessor.from_pretrained({repo!r}, trust_remote_code=True)  # the new action statistics
inputs = processor(text=instruction, images={images})
actions = model.predict_action(**inputs, processor=processor)  # (1, K, 7), un-normalised
```"""
    else:
        use = f"""```python
from transformers import AutoModelForCausalLM, AutoProcessor
model = AutoModelForCausalLM.from_pretrained({repo!r}, trust_remote_code=True)
processor = AutoProcessor.from_pretrained({repo!r}, trust_remote_code=True)
inputs = processor(text=instruction, images={images})
actions = model.predict_action(**inputs, processor=processor)  # (1, K, 7), un-normalised
```"""
    replay = summary.get("replay")
    replay_line = "" if not replay else (
        f"\n- Replay: the training set also holds {replay['episodes']} episodes of {replay['tasks']} tasks the base "
        f"already knew (the first {replay['episodes_per_task']} of each file of `{replay['data_dir']}`), so that they are "
        "rehearsed rather than overwritten."
    )
    statistics = summary["statistics"]
    rows = "\n".join(
        f"| {name} | " + " | ".join(f"{value:.4f}" for value in statistics[name]) + " |"
        for name in ("min", "max", "q01", "q99", "mean", "std")
    )
    metric_lines = "\n".join(f"- {name}: {value:.4f}" for name, value in sorted(metrics.items()) if isinstance(value, float))
    return f"""{chr(10).join(front_matter)}

# WorldVLA {'fine-tuned' if model_args.model else 'trained from random weights'} on {summary['dataset_key']}

A WorldVLA ({'LoRA adapter' if kind == 'adapter' else 'full model'}) trained with `train.py` of this repository,
starting from {base}. WorldVLA (Cen et al., 2025) is one autoregressive model that predicts action chunks from an
instruction and images, and the next image from an image and an action.

## Data
- {summary['task_files']} LIBERO-format task files from `{summary['data_dir']}`; no-op actions dropped,
  third-person frames rotated 180 degrees.
- Episodes: {summary['episodes']}; samples: {summary['samples']}; training samples by kind:
  {summary['train_sample_kinds']}.{replay_line}
- Action statistics under the key `{summary['dataset_key']}` (the processor's default; `--action-stats
  {summary['action_stats']}`: min/max are the bounds the action bins were trained with):

| | dx | dy | dz | rx | ry | rz | gripper |
|---|---|---|---|---|---|---|---|
{rows}

## Recipe
```json
{json.dumps(recipe, indent=2)}
```

## Metrics (last evaluation)
{metric_lines or '- no evaluation yet (no validation split)'}

## Use
{use}
"""


def save_outputs(trainer, processor, model_args, data_args, training_args, summary, metrics, hub_repo_id):
    """Write adapter/ (LoRA) and model/ (full or merged) atomically; returns the folder to publish."""
    output_dir = Path(training_args.output_dir)
    is_lora = model_args.lora_rank > 0
    targets = (["adapter"] if is_lora else []) + (["model"] if not is_lora or model_args.merge_lora else [])
    for kind in targets:
        final = output_dir / kind
        staging = staging_folder(final)
        if trainer.is_world_process_zero() and staging.exists():
            shutil.rmtree(staging)
        trainer.accelerator.wait_for_everyone()
        if kind == "model" and is_lora:
            if trainer.is_world_process_zero():
                merged = trainer.accelerator.unwrap_model(trainer.model).merge_and_unload()
                merged.save_pretrained(staging)
        else:
            trainer.save_model(str(staging))  # every process: FSDP gathers the full state dict here
        if trainer.is_world_process_zero():
            processor.save_pretrained(staging)
            base = None
            if kind == "adapter":
                peft_config = trainer.accelerator.unwrap_model(trainer.model).peft_config["default"]
                base = (peft_config.base_model_name_or_path, peft_config.revision)
            repo = hub_repo_id or str(final.resolve())
            wrist_camera = uses_wrist_camera(trainer.accelerator.unwrap_model(trainer.model).config)
            card = model_card(model_args, data_args, training_args, summary, metrics, kind, repo, base, wrist_camera)
            (staging / "README.md").write_text(card)
            record = {
                **summary,
                "processes": training_args.world_size,
                "metrics": metrics,
                "log_history": trainer.state.log_history,
                "training_arguments": json.loads(training_args.to_json_string()),
            }
            (staging / "training_summary.json").write_text(json.dumps(record, indent=2))
            plot_training_curves(trainer.state.log_history, staging / "training_curves.png")
            # Trainer pickles its arguments next to the weights; a published checkpoint carries no pickle.
            (staging / "training_args.bin").unlink(missing_ok=True)
            publish_folder(staging, final)
            logger.info("saved %s", final)
        trainer.accelerator.wait_for_everyone()
    return output_dir / targets[-1]


def last_complete_checkpoint(output_dir):
    """The newest checkpoint-N that the Trainer finished (its trainer state is written last) with loadable
    weights; newer incomplete ones (a run killed while saving) are skipped with a warning."""
    found = []
    for path in Path(output_dir).glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
        suffix = path.name[len(PREFIX_CHECKPOINT_DIR) + 1 :]
        if path.is_dir() and suffix.isdigit():
            found.append((int(suffix), path))
    for _, path in sorted(found, reverse=True):
        problems = [] if (path / TRAINER_STATE_NAME).is_file() else [f"no {TRAINER_STATE_NAME}"]
        problems += [problem for weights in sorted(path.glob("*.safetensors")) if (problem := safetensors_problem(weights))]
        if not problems:
            return str(path)
        logger.warning("skipping incomplete checkpoint %s: %s", path, "; ".join(problems))
    return None


def plot_training_curves(log_history, path):
    """Training losses (total, action, image) and, per validation split, action-token accuracy and the L1 of the
    decoded actions, against the step; nothing is written when nothing was logged."""
    train_logs = [entry for entry in log_history if "loss" in entry]
    splits = sorted({key.split("_")[1] for entry in log_history for key in entry if key.startswith("eval_") and key.endswith("_action_l1")})
    if not train_logs and not splits:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(15, 4))
    for name in ("loss", "action_loss", "image_loss"):
        points = [(entry["step"], entry[name]) for entry in train_logs if name in entry]
        if points:
            axes[0].plot(*zip(*points), label=f"train {name}")
    for split in splits:
        for axis, metric in ((axes[0], "action_loss"), (axes[1], "action_token_accuracy"), (axes[2], "action_l1")):
            points = [(entry["step"], entry[f"eval_{split}_{metric}"]) for entry in log_history if f"eval_{split}_{metric}" in entry]
            if points:
                axis.plot(*zip(*points), "o-", label=f"validation ({split}) {metric}")
    for axis, title in zip(axes, ("loss (cross-entropy, nats)", "action token accuracy", "L1 of decoded actions")):
        axis.set_xlabel("optimizer step")
        axis.set_title(title)
        axis.grid(alpha=0.3)
        if axis.lines:
            axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def train(model_args, data_args, training_args):
    """Loads, trains, evaluates and publishes (and pushes with --push-to-hub); returns (trainer, final metrics)."""
    configure_logging(logging.INFO if training_args.should_log else logging.WARNING)
    push_to_hub = training_args.push_to_hub
    training_args.push_to_hub = False  # the Trainer would push every checkpoint; the final folder is pushed below
    set_seed(training_args.seed)

    model, processor = load_model_and_processor(model_args, torch.cuda.is_available())
    config = model.config
    train_dataset, eval_datasets, summary = build_datasets(data_args, processor, config, training_args)
    # What the saved model records of its processor, so that a processor of another run is refused at load.
    config.vq_fingerprint = vq_fingerprint(processor.vq_model)
    config.action_statistics_keys = [summary["dataset_key"]]
    if not eval_datasets and training_args.eval_strategy != "no":
        logger.info("no validation episodes: evaluation turned off")
        training_args.eval_strategy = "no"

    trainer = WorldVLATrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_datasets or None,
        data_collator=processor.pad,
        processing_class=processor,
        compute_metrics=make_compute_metrics(processor, config, summary["dataset_key"]),
        preprocess_logits_for_metrics=make_preprocess_logits_for_metrics(config),
    )
    resume = training_args.resume_from_checkpoint
    if resume in ("last", "latest", "true", "True"):
        resume = last_complete_checkpoint(training_args.output_dir)
        if resume is None:
            raise ValueError(f"--resume-from-checkpoint {training_args.resume_from_checkpoint}: no checkpoint in {training_args.output_dir}")
    train_result = trainer.train(resume_from_checkpoint=resume)
    metrics = {k: v for k, v in train_result.metrics.items() if isinstance(v, float)}
    for name, dataset in eval_datasets.items():
        metrics.update(trainer.evaluate(dataset, metric_key_prefix=f"eval_{name}"))
    trainer.log_metrics("final", metrics)

    hub_repo_id = (training_args.hub_model_id or Path(training_args.output_dir).name) if push_to_hub else None
    published = save_outputs(trainer, processor, model_args, data_args, training_args, summary, metrics, hub_repo_id)
    if hub_repo_id and trainer.is_world_process_zero():
        from scripts.push_checkpoint import push_folder

        push_folder(published, hub_repo_id, training_args.hub_token, bool(training_args.hub_private_repo), commit_message="Upload WorldVLA trained with train.py")
    return trainer, metrics

