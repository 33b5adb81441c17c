"""train.py end to end on a tiny WorldVLA (2 layers, 64-px frames) and small LIBERO-format HDF5 files."""

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import EvalPrediction

import train
import worldvla_data
import worldvla_results
import worldvla_training
from modeling_worldvla import WorldVLAForConditionalGeneration, safetensors_problem
from processing_worldvla import LIBERO_ACTION_STATISTICS
from scripts.build_small_checkpoint import build_small_worldvla

try:
    from tests.hub_server import hub_env, local_hub
    from tests.libero_hdf5_fixture import write_libero_folder, write_libero_hdf5
except ImportError:
    from hub_server import hub_env, local_hub
    from libero_hdf5_fixture import write_libero_folder, write_libero_hdf5

ROOT = Path(__file__).resolve().parent.parent
SUBPROCESS_ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A small data folder (2 tasks x 3 demos x 14 steps), a saved small checkpoint and a shared data cache."""
    root = tmp_path_factory.mktemp("train")
    write_libero_folder(root / "data", num_tasks=2, num_demos=3, num_steps=14)
    model, processor = build_small_worldvla(seed=0)
    model.save_pretrained(root / "base")
    processor.save_pretrained(root / "base")
    return root


def run_train(workspace, output_dir, *extra, model=None):
    source = ["--model", str(model or workspace / "base")]
    argv = [
        *source,
        "--data-dir", str(workspace / "data"),
        "--data-cache-dir", str(workspace / "cache"),
        "--output-dir", str(output_dir),
        "--per-device-train-batch-size", "4",
        "--global-batch-size", "8",
        "--learning-rate", "2e-3",
        "--logging-steps", "1",
        "--save-strategy", "no",
        "--eval-strategy", "no",
        "--dataloader-num-workers", "0",
        "--seed", "0",
        "--disable-tqdm", "true",
        *extra,
    ]
    trainer, metrics = train.main([str(a) for a in argv])
    return trainer, metrics


def training_losses(output_dir, folder="model"):
    summary = json.loads((Path(output_dir) / folder / "training_summary.json").read_text())
    return [entry for entry in summary["log_history"] if "loss" in entry]


def logits_of(model, input_ids):
    with torch.no_grad():
        return model.eval()(input_ids=input_ids).logits


@pytest.fixture(scope="module")
def full_run(workspace):
    output_dir = workspace / "full"
    run_train(workspace, output_dir, "--max-steps", 30)
    return output_dir


def test_recipe_defaults(workspace):
    model_args, data_args, args = train.parse_arguments(["--model", "x", "--data-dir", str(workspace / "data"), "--use-cpu"])
    assert (args.learning_rate, args.lr_scheduler_type, args.warmup_steps) == (5e-6, "constant_with_warmup", 0.01)
    assert (args.adam_beta1, args.adam_beta2, args.weight_decay, args.max_grad_norm) == (0.9, 0.95, 0.1, 4.0)
    assert args.num_train_epochs == 40 and args.per_device_train_batch_size * args.gradient_accumulation_steps == 32
    assert (model_args.residual_dropout, model_args.z_loss_weight, model_args.image_loss_weight) == (0.05, 1e-5, 0.04)
    assert model_args.lora_rank == 0 and data_args.val_split == "release" and data_args.action_stats == "checkpoint"
    _, scratch_data_args, _ = train.parse_arguments(["--from-scratch-config", "small", "--data-dir", str(workspace / "data"), "--use-cpu"])
    assert scratch_data_args.action_stats == "quantile"
    with pytest.raises(SystemExit):
        train.parse_arguments(["--from-scratch-config", "small", "--data-dir", str(workspace / "data"), "--action-stats", "checkpoint"])
    with pytest.raises(SystemExit):
        train.parse_arguments(["--model", "x", "--data-dir", str(workspace / "data"), "--per-device-train-batch-size", "5"])


def test_inputs_are_checked_before_any_model_is_loaded(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (["--model", "x/y", "--data-dir", str(tmp_path / "missing")], "no such folder"),
        (["--model", "x/y", "--data-dir", str(empty)], "no .hdf5 files in"),
        (["--model", str(tmp_path / "no-model"), "--data-dir", str(empty)], "no .hdf5 files in"),
    ]
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a_demo.hdf5").write_bytes(b"")
    cases += [
        (["--model", str(tmp_path / "no-model"), "--data-dir", str(tmp_path / "data")], f"--model {tmp_path / 'no-model'}: no such folder"),
        (["--model", "runs/a/b", "--data-dir", str(tmp_path / "data")], "not a Hub id of the form owner/name"),
        (["--model", "org/name", "--processor", "./proc", "--data-dir", str(tmp_path / "data")], "--processor ./proc: no such folder"),
    ]
    cases += [
        (["--model", "org/name", "--data-dir", str(tmp_path / "data"), "--replay-data-dir", str(empty)], "--replay-data-dir: no .hdf5 files in"),
        (["--from-scratch-config", "c.json", "--data-dir", str(tmp_path / "data"), "--replay-data-dir", str(tmp_path / "data")],
         "a model from scratch has none"),
        (["--model", "org/name", "--data-dir", str(tmp_path / "data"), "--replay-data-dir", str(tmp_path / "data"),
          "--replay-episodes-per-task", "0"], "--replay-episodes-per-task must be at least 1"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit):
            train.parse_arguments([*argv, "--use-cpu"])
        assert message in capsys.readouterr().err
    # A Hub id of the form owner/name passes (it is resolved when loaded).
    model_args, _, _ = train.parse_arguments(["--model", "org/name", "--data-dir", str(tmp_path / "data"), "--use-cpu"])
    assert model_args.model == "org/name"


def test_help_lists_the_options_without_importing_torch():
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    text = " ".join(result.stdout.split())
    assert "--lora-rank" in text and "--action-stats" in text and "--help-all" in text
    assert "Samples per optimizer step over all processes (paper: 32);" in text and "(default: 32)" in text
    assert "--max_steps MAX_STEPS" not in text  # a Trainer option, listed by --help-all
    probe = "import sys, train; print(sorted(m for m in ('torch', 'transformers.trainer', 'h5py') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120).stdout.strip() == "[]"


def test_help_all_lists_every_trainer_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.parse_arguments(["--help-all"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0 and "--lora-rank" in out and "--max_steps MAX_STEPS" in out and "--hub-model-id" in out


def test_the_device_decides_what_the_recipe_leaves_open(tmp_path):
    on_cpu = worldvla_training.WorldVLATrainingArguments(output_dir=str(tmp_path))
    assert on_cpu.use_cpu is (not torch.cuda.is_available())
    forced = worldvla_training.WorldVLATrainingArguments(output_dir=str(tmp_path), use_cpu=True)
    assert forced.use_cpu is True and forced.bf16 is False and forced.activation_checkpointing is False
    assert (forced.learning_rate, forced.adam_beta2, forced.max_grad_norm, forced.weight_decay) == (5e-6, 0.95, 4.0, 0.1)


def test_loss_goes_down_and_losses_are_logged(full_run):
    losses = training_losses(full_run)
    assert len(losses) == 30
    first, last = np.mean([e["loss"] for e in losses[:3]]), np.mean([e["loss"] for e in losses[-3:]])
    assert last < 0.75 * first, (first, last)
    assert all({"action_loss", "image_loss", "z_loss"} <= set(e) for e in losses)
    assert losses[-1]["action_loss"] < losses[0]["action_loss"] and losses[-1]["image_loss"] < losses[0]["image_loss"]
    assert not any(p.name.endswith((".incomplete", ".previous")) for p in full_run.iterdir())


def test_saved_model_loads_in_a_fresh_process(full_run, workspace):
    saved = {path.name for path in (full_run / "model").iterdir()}
    assert "training_args.bin" not in saved and not any(name.endswith((".bin", ".pt", ".pkl")) for name in saved)
    summary = json.loads((full_run / "model" / "training_summary.json").read_text())
    assert summary["training_arguments"]["learning_rate"] > 0
    script = f"""
import json, numpy as np, torch
from transformers import AutoModelForCausalLM, AutoProcessor
model = AutoModelForCausalLM.from_pretrained({str(full_run / "model")!r}, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained({str(full_run / "model")!r}, trust_remote_code=True)
frames = [np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)] * 2
inputs = processor(text="pick up the object number 0 and place it in the basket", images=frames)
actions = model.predict_action(**inputs, processor=processor)
print(json.dumps({{"class": type(model).__module__, "key": processor.default_unnorm_key,
                  "stats": processor.action_statistics[processor.default_unnorm_key],
                  "actions": np.asarray(actions).tolist(), "ids": inputs["input_ids"].tolist(),
                  "logit_sum": float(model(**inputs).logits.double().sum())}}))
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=workspace, env=SUBPROCESS_ENV, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded["class"].startswith("transformers_modules")  # the copied code files, not this checkout
    assert loaded["key"] == "data" and np.array(loaded["actions"]).shape == (1, 5, 7)
    summary = json.loads((full_run / "model" / "training_summary.json").read_text())
    assert loaded["stats"]["min"] == pytest.approx(summary["statistics"]["min"])
    assert set(loaded["stats"]) == {"min", "max", "data_min", "data_max", "q01", "q99", "mean", "std"}
    local = WorldVLAForConditionalGeneration.from_pretrained(full_run / "model")
    assert float(logits_of(local, torch.tensor(loaded["ids"])).double().sum()) == pytest.approx(loaded["logit_sum"], rel=1e-6)
    card = (full_run / "model" / "README.md").read_text()
    assert "## Recipe" in card and "## Data" in card and "constant_with_warmup" in card
    assert "images=[previous_frame, current_frame])" in card  # a third-person model's prompt


def test_resume_lands_on_the_same_step_and_weights(workspace):
    # Residual dropout stays on (0.05): the RNG state must be restored too.
    common = ("--max-steps", 8, "--save-strategy", "steps", "--save-steps", 4)
    run_train(workspace, workspace / "uninterrupted", *common)
    stopped = workspace / "uninterrupted" / "checkpoint-4"
    run_train(workspace, workspace / "resumed", *common, "--resume-from-checkpoint", stopped)
    state = json.loads((workspace / "resumed" / "checkpoint-8" / "trainer_state.json").read_text())
    assert state["global_step"] == 8
    expected = load_file(workspace / "uninterrupted" / "model" / "model.safetensors")
    resumed = load_file(workspace / "resumed" / "model" / "model.safetensors")
    assert all(torch.equal(expected[name], resumed[name]) for name in expected)
    losses = {e["step"]: e["loss"] for e in training_losses(workspace / "uninterrupted")}
    for entry in training_losses(workspace / "resumed"):
        assert entry["loss"] == pytest.approx(losses[entry["step"]], rel=1e-6)
    # Resuming did not train from scratch: the weights moved away from the checkpoint's.
    at_stop = load_file(stopped / "model.safetensors")
    assert not all(torch.equal(at_stop[name], resumed[name]) for name in at_stop)


def test_resume_last_skips_a_checkpoint_cut_while_saving(workspace, caplog):
    source = workspace / "uninterrupted"  # written by the test above: checkpoint-4 and checkpoint-8
    if not (source / "checkpoint-8").is_dir():
        run_train(workspace, source, "--max-steps", 8, "--save-strategy", "steps", "--save-steps", 4)
    crashed = workspace / "crashed"
    shutil.rmtree(crashed, ignore_errors=True)
    crashed.mkdir()
    for name in ("checkpoint-4", "checkpoint-8"):
        shutil.copytree(source / name, crashed / name)
    weights = crashed / "checkpoint-8" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # killed mid-write
    (crashed / "checkpoint-12").mkdir()  # killed before anything was written
    with caplog.at_level("WARNING", logger="train"):
        assert worldvla_training.last_complete_checkpoint(crashed) == str(crashed / "checkpoint-4")
    assert f"{weights}: " in caplog.text and "truncated" in caplog.text and "checkpoint-12: no trainer_state.json" in caplog.text
    assert worldvla_training.last_complete_checkpoint(workspace / "nothing-here") is None
    assert safetensors_problem(source / "checkpoint-8" / "model.safetensors") is None


def test_lora_adapter_reload_and_merge_give_identical_outputs(workspace):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    output_dir = workspace / "lora"
    run_train(workspace, output_dir, "--max-steps", 4, "--lora-rank", 4, "--lora-alpha", 8, "--merge-lora", "--save-strategy", "steps", "--save-steps", 4)
    assert (output_dir / "checkpoint-4" / "adapter_model.safetensors").is_file()
    assert not (output_dir / "checkpoint-4" / "README.md").exists()  # no template card in a checkpoint
    adapter_weights = load_file(output_dir / "adapter" / "adapter_model.safetensors")
    assert adapter_weights and all("lora_" in name for name in adapter_weights)
    targets = {name.split(".")[-3] for name in adapter_weights}
    assert targets == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    # The VQ is frozen and outside the model: the saved tokenizer is the base's, byte for byte.
    for folder in ("adapter", "model"):
        assert (output_dir / folder / "vqgan" / "model.safetensors").read_bytes() == (
            workspace / "base" / "vqgan" / "model.safetensors"
        ).read_bytes()

    ids = torch.tensor([[0, 5, 9, 300, 17, 42, 8, 250]])
    base = WorldVLAForConditionalGeneration.from_pretrained(workspace / "base")
    with_adapter = PeftModel.from_pretrained(WorldVLAForConditionalGeneration.from_pretrained(workspace / "base"), output_dir / "adapter")
    merged = AutoModelForCausalLM.from_pretrained(output_dir / "model", trust_remote_code=True)
    assert not torch.allclose(logits_of(base, ids), logits_of(with_adapter, ids), atol=1e-4)
    torch.testing.assert_close(logits_of(with_adapter, ids), logits_of(merged, ids), atol=1e-5, rtol=1e-5)
    assert "lora" not in " ".join(load_file(output_dir / "model" / "model.safetensors"))
    # Trained from a local folder, the adapter names it by absolute path (peft would record "<tmp>/base" as given).
    adapter_config = json.loads((output_dir / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str((workspace / "base").resolve())
    card = (output_dir / "adapter" / "README.md").read_text()
    assert "library_name: peft" in card and f"PeftModel.from_pretrained(base, {str((output_dir / 'adapter').resolve())!r})" in card


def test_two_processes_match_one(workspace):
    common = ["--max-steps", "6", "--residual-dropout", "0"]
    run_train(workspace, workspace / "one_process", *common)
    argv = [
        "--model", workspace / "base", "--data-dir", workspace / "data", "--data-cache-dir", workspace / "cache",
        "--output-dir", workspace / "two_processes", "--per-device-train-batch-size", 4, "--global-batch-size", 8,
        "--learning-rate", "2e-3", "--logging-steps", 1, "--save-strategy", "no", "--eval-strategy", "no", "--seed", 0,
        *common,
    ]
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", ROOT / "configs" / "accelerate_cpu_2proc.yaml",
               "--main_process_port", "29531", ROOT / "train.py", *argv]
    result = subprocess.run([str(c) for c in command], cwd=ROOT, env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((workspace / "two_processes" / "model" / "training_summary.json").read_text())
    assert summary["processes"] == 2
    two = [e["loss"] for e in summary["log_history"] if "loss" in e]
    one = [e["loss"] for e in training_losses(workspace / "one_process")]
    # Same samples per optimizer step (two ranks of 4, or 2 accumulated batches of 4): the same curve.
    assert len(two) == len(one) == 6
    np.testing.assert_allclose(two, one, rtol=1e-3)


def test_action_statistics_modes(workspace):
    args = worldvla_training.WorldVLATrainingArguments(output_dir=str(workspace / "stats"), use_cpu=True)
    for mode in ("minmax", "quantile", "checkpoint"):
        model, processor = build_small_worldvla(seed=0)
        data_args = train.DataArguments(data_dir=str(workspace / "data"), data_cache_dir=str(workspace / "cache"), action_stats=mode)
        train_set, evaluation, summary = worldvla_training.build_datasets(data_args, processor, model.config, args)
        stats = processor.action_statistics["data"]
        assert processor.default_unnorm_key == "data" and train_set.unnorm_key == "data"
        actions = np.concatenate([e.actions for e in train_set.episodes])
        expected = {
            "minmax": (actions.min(0), actions.max(0)),
            "quantile": (np.quantile(actions, 0.01, axis=0), np.quantile(actions, 0.99, axis=0)),
            "checkpoint": (LIBERO_ACTION_STATISTICS["min"], LIBERO_ACTION_STATISTICS["max"]),
        }[mode]
        assert stats["min"] == pytest.approx(list(expected[0])) and stats["max"] == pytest.approx(list(expected[1]))
        assert stats["data_min"] == pytest.approx(actions.min(0).tolist())
        assert stats["q99"] == pytest.approx(np.quantile(actions, 0.99, axis=0).tolist())
    # 2 tasks x 3 demos: nothing is held out (ceil(0.9 * 2) = 2 tasks, ceil(0.9 * 3) = 3 demos).
    assert evaluation == {} and summary["episodes"] == {"train": 6, "val_ind": 0, "val_ood": 0}
    assert summary["train_sample_kinds"] == {"action": 6 * (14 - 5 + 1), "world_model": 6 * 13}


def test_replay_adds_the_first_episodes_of_each_old_task_to_training_only(workspace, tmp_path):
    old_tasks = tmp_path / "old_tasks"
    for index in range(3):
        write_libero_hdf5(old_tasks / f"old_task_{index}_demo.hdf5", f"old instruction {index}", num_demos=4, num_steps=12, seed=10 + index)
    run_train(workspace, tmp_path / "run", "--max-steps", 1, "--replay-data-dir", old_tasks, "--replay-episodes-per-task", 2)
    summary = json.loads((tmp_path / "run" / "model" / "training_summary.json").read_text())
    assert summary["replay"] == {"data_dir": str(old_tasks), "tasks": 3, "episodes": 6, "episodes_per_task": 2}
    assert summary["episodes"] == {"train": 6 + 6, "val_ind": 0, "val_ood": 0}
    assert summary["train_sample_kinds"] == {"action": 6 * 10 + 6 * 8, "world_model": 6 * 13 + 6 * 11}
    assert "6 episodes of 3 tasks the base already knew (the first 2 of each file" in (tmp_path / "run" / "model" / "README.md").read_text()

    args = worldvla_training.WorldVLATrainingArguments(output_dir=str(tmp_path / "stats"), use_cpu=True)
    model, processor = build_small_worldvla(seed=0)
    data_args = train.DataArguments(
        data_dir=str(workspace / "data"), data_cache_dir=str(workspace / "cache"), action_stats="checkpoint",
        replay_data_dir=str(old_tasks), replay_episodes_per_task=2,
    )
    train_set, _, _ = worldvla_training.build_datasets(data_args, processor, model.config, args)
    replayed = [(e.task, e.demo) for e in train_set.episodes if e.task.startswith("old")]
    assert replayed == [(f"old_task_{t}", f"demo_{d}") for t in range(3) for d in range(2)]
    # A new task among the old ones is refused: it would be trained twice as often and named as known.
    data_args.replay_data_dir = str(workspace / "data")
    with pytest.raises(ValueError, match=r"tasks \['task_00', 'task_01'\] are in both --data-dir and --replay-data-dir"):
        worldvla_training.build_datasets(data_args, processor, model.config, args)


def test_quantile_bounds_survive_a_corrupted_value_and_name_it(caplog):
    rng = np.random.default_rng(0)
    episodes = [worldvla_data.Episode("task_a", f"demo_{i}", "x", np.zeros((40, 2, 2), np.int16), rng.uniform(-1, 1, (40, 7)))
                for i in range(5)]
    episodes[3].actions[17, 2] = 1e6
    _, processor = build_small_worldvla(seed=0)
    with caplog.at_level(logging.WARNING, logger="train"):
        quantile = worldvla_training.action_statistics(episodes, train.DataArguments(action_stats="quantile"), processor)
    minmax = worldvla_training.action_statistics(episodes, train.DataArguments(action_stats="minmax"), processor)
    assert "task_a_demo.hdf5, data/demo_3, actions, step 17, dimension 2: 1e+06" in caplog.text
    assert sum("action outlier" in record.message for record in caplog.records) == 1
    # min/max spreads the 256 bins over [-1, 1e6]: every real dz value falls in one bin; q01/q99 keeps them apart.
    processor.add_action_statistics("minmax", minmax)
    processor.add_action_statistics("quantile", quantile)
    dz = np.concatenate([e.actions for e in episodes])
    dz = dz[np.abs(dz[:, 2]) < 1]
    assert len(np.unique(processor.action_tokenizer.encode(dz, "minmax")[:, 2])) == 1
    assert len(np.unique(processor.action_tokenizer.encode(dz, "quantile")[:, 2])) > 100


def test_evaluation_metrics_on_known_predictions():
    model, processor = build_small_worldvla(seed=0)
    config = model.config
    action = np.array([0.5, -0.2, 0.1, 0.05, -0.1, 0.2, 1.0])
    sample = processor.build_action_sample("open the drawer", [np.zeros((4, 4), int)], np.stack([action] * 5), "libero")
    world = processor.build_world_model_sample([np.zeros((4, 4), int)], action[None], np.ones((4, 4), int), "libero")
    batch = processor.pad([sample, world])
    labels = batch["labels"]
    # Logits that put all mass on the next label: every prediction right.
    logits = torch.zeros(*labels.shape, config.vocab_size)
    targets = labels[:, 1:].clamp(min=0)
    logits[:, :-1].scatter_(-1, targets[..., None], 50.0)
    preprocess = worldvla_training.make_preprocess_logits_for_metrics(config)
    predictions = tuple(p.numpy() for p in preprocess((logits, torch.tensor(1.0)), labels))
    assert predictions[0].shape == labels.shape
    labelled = labels.numpy() != -100
    assert (predictions[0][labelled] == labels.numpy()[labelled]).all()
    metrics = worldvla_training.make_compute_metrics(processor, config, "libero")(EvalPrediction(predictions, labels.numpy()))
    assert metrics["action_token_accuracy"] == 1.0 and metrics["image_token_accuracy"] == 1.0
    assert metrics["action_l1"] == 0.0 and metrics["action_loss"] < 1e-6 and metrics["image_loss"] < 1e-6

    # One wrong bin of one action: accuracy 34/35, L1 = that bin's error / 35 values.
    wrong = [p.copy() for p in predictions]
    position = np.argwhere(labels.numpy()[0] > config.action_token_offset)[2][0]  # the dz bin of the first action
    wrong[0][0, position] += 10
    wrong[1][0, position] += 10
    metrics = worldvla_training.make_compute_metrics(processor, config, "libero")(EvalPrediction(tuple(wrong), labels.numpy()))
    assert metrics["action_token_accuracy"] == pytest.approx(34 / 35)
    step = (LIBERO_ACTION_STATISTICS["max"][2] - LIBERO_ACTION_STATISTICS["min"][2]) / 255
    assert metrics["action_l1"] == pytest.approx(10 * step / 35, rel=1e-6)


def test_evaluation_runs_on_both_validation_splits(tmp_path, workspace):
    write_libero_folder(tmp_path / "data", num_tasks=10, num_demos=10, num_steps=7)
    argv = ["--model", workspace / "base", "--data-dir", tmp_path / "data", "--data-cache-dir", tmp_path / "cache",
            "--output-dir", tmp_path / "out", "--max-steps", 2, "--per-device-train-batch-size", 4, "--global-batch-size", 4,
            "--save-strategy", "no", "--eval-strategy", "steps", "--eval-steps", 1, "--max-eval-samples", 8, "--disable-tqdm", "true"]
    _, metrics = train.main([str(a) for a in argv])
    for split in ("ind", "ood"):
        for name in ("loss", "action_token_accuracy", "action_l1", "image_token_accuracy", "action_loss", "image_loss"):
            assert np.isfinite(metrics[f"eval_{split}_{name}"])
    history = json.loads((tmp_path / "out" / "model" / "training_summary.json").read_text())["log_history"]
    assert sum("eval_ood_action_l1" in entry for entry in history) >= 2  # at steps 1 and 2, then the final one
    from PIL import Image

    assert Image.open(tmp_path / "out" / "model" / "training_curves.png").size == (1350, 360)


@pytest.mark.parametrize("kind, other", [("action", "image"), ("world_model", "action")])
def test_one_sample_kind_trains_and_validates_on_that_kind_only(tmp_path, workspace, kind, other):
    write_libero_folder(tmp_path / "data", num_tasks=1, num_demos=10, num_steps=7)
    argv = ["--model", workspace / "base", "--data-dir", tmp_path / "data", "--data-cache-dir", tmp_path / "cache",
            "--output-dir", tmp_path / "out", "--max-steps", 1, "--per-device-train-batch-size", 4, "--global-batch-size", 4,
            "--save-strategy", "no", "--eval-strategy", "no", "--val-split", "episodes", "--sample-kinds", kind,
            "--disable-tqdm", "true"]
    _, metrics = train.main([str(a) for a in argv])
    summary = json.loads((tmp_path / "out" / "model" / "training_summary.json").read_text())
    samples_per_demo = {"action": 7 - 5 + 1, "world_model": 7 - 1}[kind]  # the ablations' variants a and e
    assert summary["train_sample_kinds"] == {kind: 9 * samples_per_demo}
    assert summary["samples"] == {"train": 9 * samples_per_demo, "val_ind": samples_per_demo}
    own = "action" if kind == "action" else "image"
    assert np.isfinite(metrics[f"eval_ind_{own}_token_accuracy"]) and f"eval_ind_{other}_token_accuracy" not in metrics


def test_publish_folder_never_leaves_half_a_folder(tmp_path, monkeypatch):
    final = tmp_path / "model"
    final.mkdir()
    (final / "old.txt").write_text("old")

    def staged(content):
        staging = worldvla_results.staging_folder(final)
        staging.mkdir()
        (staging / "new.txt").write_text(content)
        return staging

    # A crash between the two renames: `model` is gone for a moment, the old one is whole under model.previous.
    real_rename, calls = Path.rename, []

    def rename_then_crash(self, target):
        calls.append(self.name)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed between the renames")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename_then_crash)
    with pytest.raises(KeyboardInterrupt):
        worldvla_results.publish_folder(staged("first"), final)
    monkeypatch.setattr(Path, "rename", real_rename)
    assert not final.exists() and (tmp_path / "model.previous" / "old.txt").read_text() == "old"
    # The next publish puts the old folder back first, then replaces it as a whole.
    shutil.rmtree(worldvla_results.staging_folder(final))
    worldvla_results.publish_folder(staged("second"), final)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert sorted(p.name for p in final.iterdir()) == ["new.txt"] and (final / "new.txt").read_text() == "second"


@pytest.fixture
def hub(tmp_path, monkeypatch):
    yield from local_hub(tmp_path, monkeypatch)


def test_push_to_hub_with_model_card_and_code(hub, workspace, tmp_path):
    run_train(workspace, tmp_path / "pushed", "--max-steps", 2, "--push-to-hub", "true", "--hub-model-id", "org/worldvla-ft")
    files = {p.relative_to(hub.repo_dir("org/worldvla-ft")).parts[-1] for p in hub.repo_dir("org/worldvla-ft").rglob("*") if p.is_file()}
    assert {"README.md", "config.json", "model.safetensors", "modeling_worldvla.py", "configuration_worldvla.py",
            "processing_worldvla.py", "processor_config.json"} <= files
    script = """
import json, torch
from transformers import AutoModelForCausalLM, AutoProcessor
model = AutoModelForCausalLM.from_pretrained("org/worldvla-ft", trust_remote_code=True)
processor = AutoProcessor.from_pretrained("org/worldvla-ft", trust_remote_code=True)
print(json.dumps({"key": processor.default_unnorm_key, "sum": float(sum(p.double().sum() for p in model.parameters()))}))
"""
    env = {**SUBPROCESS_ENV, **hub_env(hub.endpoint, tmp_path / "client-home")}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    local = WorldVLAForConditionalGeneration.from_pretrained(tmp_path / "pushed" / "model")
    assert loaded["key"] == "data"
    with torch.no_grad():
        assert loaded["sum"] == pytest.approx(float(sum(p.double().sum() for p in local.parameters())), rel=1e-9)


def test_lora_push_on_a_local_base_is_refused_before_training(workspace, tmp_path, capsys):
    with pytest.raises(SystemExit):
        run_train(workspace, tmp_path / "refused", "--lora-rank", 4, "--push-to-hub", "true", "--hub-model-id", "org/lora")
    assert "--base-model-id" in capsys.readouterr().err and not (tmp_path / "refused").exists()


def test_lora_adapter_pushed_loads_on_its_recorded_hub_base(hub, workspace, tmp_path):
    """Base on the Hub -> LoRA trained from its id -> adapter pushed; a fresh process loads the adapter on the base
    the adapter records (id and commit), as its model card shows, and gets the trainer's logits."""
    from peft import PeftModel
    from scripts.push_checkpoint import push_folder

    base_commit = push_folder(workspace / "base", "org/base")
    env = {**SUBPROCESS_ENV, **hub_env(hub.endpoint, tmp_path / "trainer-home")}
    argv = [sys.executable, str(ROOT / "train.py"), "--model", "org/base", "--data-dir", workspace / "data",
            "--data-cache-dir", workspace / "cache", "--output-dir", tmp_path / "lora", "--lora-rank", 4,
            "--per-device-train-batch-size", 4, "--global-batch-size", 4, "--learning-rate", "2e-3", "--max-steps", 2,
            "--save-strategy", "no", "--eval-strategy", "no", "--dataloader-num-workers", 0, "--disable-tqdm", "true",
            "--push-to-hub", "true", "--hub-model-id", "org/base-lora"]
    result = subprocess.run([str(a) for a in argv], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    adapter_config = json.loads((hub.repo_dir("org/base-lora").glob("commits/*/tree/adapter_config.json").__next__()).read_text())
    assert adapter_config["base_model_name_or_path"] == "org/base"
    assert adapter_config["revision"] == base_commit.oid
    card = (tmp_path / "lora" / "adapter" / "README.md").read_text()
    assert f"from_pretrained('org/base', revision={base_commit.oid!r}, trust_remote_code=True)" in card
    assert "PeftModel.from_pretrained(base, 'org/base-lora')" in card and "base_model: org/base" in card

    script = """
import json, torch
from huggingface_hub import hf_hub_download
from peft import PeftModel
from transformers import AutoModelForCausalLM
config = json.load(open(hf_hub_download("org/base-lora", "adapter_config.json")))
base = AutoModelForCausalLM.from_pretrained(config["base_model_name_or_path"], revision=config["revision"], trust_remote_code=True)
model = PeftModel.from_pretrained(base, "org/base-lora").eval()
with torch.no_grad():
    print(json.dumps(model(input_ids=torch.tensor([[0, 5, 9, 300, 17, 42, 8, 250]])).logits.tolist()))
"""
    loaded = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env={**env, **hub_env(hub.endpoint, tmp_path / "client-home")},
                            capture_output=True, text=True)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    local = PeftModel.from_pretrained(WorldVLAForConditionalGeneration.from_pretrained(workspace / "base"), tmp_path / "lora" / "adapter")
    expected = logits_of(local, torch.tensor([[0, 5, 9, 300, 17, 42, 8, 250]]))
    torch.testing.assert_close(torch.tensor(json.loads(loaded.stdout.strip().splitlines()[-1])), expected, atol=1e-5, rtol=1e-5)


def test_lora_adapter_and_merged_model_from_the_hub_predict_the_trainers_actions(hub, workspace, tmp_path):
    """One LoRA run, its adapter and its merged model pushed: the adapter loaded with peft on its Hub base and the
    merged model loaded by id predict the actions of the local merged model, with the statistics the run saved."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from processing_worldvla import WorldVLAProcessor
    from scripts.push_checkpoint import push_folder

    base_commit = push_folder(workspace / "base", "org/base-teach").oid
    run_train(workspace, tmp_path / "teach", "--max-steps", 2, "--lora-rank", 4, "--merge-lora", "true",
              "--base-model-id", "org/base-teach", "--base-model-revision", base_commit)
    push_folder(tmp_path / "teach" / "adapter", "org/teach-lora")
    push_folder(tmp_path / "teach" / "model", "org/teach-merged")

    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(2)]
    base = AutoModelForCausalLM.from_pretrained("org/base-teach", revision=base_commit, trust_remote_code=True)
    adapter = PeftModel.from_pretrained(base, "org/teach-lora").eval()
    adapter_processor = WorldVLAProcessor.from_pretrained("org/teach-lora")
    merged = AutoModelForCausalLM.from_pretrained("org/teach-merged", trust_remote_code=True).eval()
    merged_processor = WorldVLAProcessor.from_pretrained("org/teach-merged")
    local = WorldVLAForConditionalGeneration.from_pretrained(tmp_path / "teach" / "model").eval()
    assert adapter_processor.default_unnorm_key == merged_processor.default_unnorm_key == "data"

    inputs = adapter_processor(text="pick up the object number 1 and place it in the basket", images=frames)
    expected = local.predict_action(**inputs, processor=WorldVLAProcessor.from_pretrained(tmp_path / "teach" / "model"))
    np.testing.assert_array_equal(adapter.predict_action(**inputs, processor=adapter_processor), expected)
    np.testing.assert_array_equal(merged.predict_action(**inputs, processor=merged_processor), expected)
    with torch.no_grad(), adapter.disable_adapter():  # the adapter is trained: without it the logits move
        assert not torch.allclose(adapter(**inputs).logits, local(**inputs).logits)

    # As a policy (what eval_libero.py loads): the adapter's id alone, merged on the Hub base it records.
    from policy_worldvla import WorldVLAPolicy

    hub_policy = WorldVLAPolicy.from_pretrained("org/teach-lora", device="cpu")
    local_policy = WorldVLAPolicy.from_pretrained(tmp_path / "teach" / "model", device="cpu")
    instruction = "pick up the object number 1 and place it in the basket"
    np.testing.assert_array_equal(hub_policy.predict_action_chunk(frames[0], instruction),
                                  local_policy.predict_action_chunk(frames[0], instruction))
