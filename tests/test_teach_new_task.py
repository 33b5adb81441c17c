"""scripts/teach_new_task.py: LoRA and full fine-tuning get the same data and budget, real train.py runs record their
cost, and the table reads what eval_libero.py writes."""
import json

import pytest

from eval_libero import write_summary
from scripts import teach_new_task as teach
from scripts.build_small_checkpoint import build_small_worldvla

try:
    from tests.libero_hdf5_fixture import write_libero_folder, write_libero_hdf5
except ImportError:
    from libero_hdf5_fixture import write_libero_folder, write_libero_hdf5


def option(command, name):
    return command[command.index(name) + 1] if name in command else None


def shared_options(command):
    """The command without what differs by design: output folder, learning rate and LoRA's options."""
    own = {"--output-dir", "--learning-rate", "--lora-rank", "--lora-alpha", "--merge-lora"}
    pairs = list(zip(command[2::2], command[3::2]))  # after the interpreter and train.py, options and their values
    assert all(name.startswith("--") for name, _ in pairs)
    return [pair for pair in pairs if pair[0] not in own]


@pytest.fixture(scope="module")
def wrist_base(tmp_path_factory):
    folder = tmp_path_factory.mktemp("teach") / "base"
    model, processor = build_small_worldvla(seed=0, wrist_camera=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def arguments(work, base, *extra):
    return teach.parse_args(["--work-dir", str(work), "--base", str(base), "--task", "libero_goal:8", "--task", "libero_90:9",
                             "--task", "libero_goal:1", "--data-dir", "data/teach", "--train-steps", "300", *extra])


def test_lora_and_full_fine_tuning_share_data_steps_batch_and_seed(tmp_path, wrist_base):
    commands = teach.stage_commands(arguments(tmp_path, wrist_base))
    (lora,), (full,) = commands["lora"], commands["full"]
    assert option(lora, "--lora-rank") == "32" and option(lora, "--merge-lora") == "true" and "--lora-rank" not in full
    assert (option(lora, "--learning-rate"), option(full, "--learning-rate")) == ("0.001", "0.0005")
    assert option(lora, "--output-dir") == str(tmp_path / "lora") and option(full, "--output-dir") == str(tmp_path / "full")
    assert shared_options(lora) == shared_options(full)
    for name, value in (("--model", str(wrist_base)), ("--data-dir", "data/teach"), ("--max-steps", "300"), ("--seed", "11")):
        assert option(lora, name) == option(full, name) == value
    assert "--replay-data-dir" not in lora
    replaying = teach.stage_commands(arguments(tmp_path, wrist_base, "--replay-data-dir", "data/old", "--replay-episodes-per-task", "4"))
    (lora,), (full,) = replaying["lora"], replaying["full"]
    assert option(lora, "--replay-data-dir") == option(full, "--replay-data-dir") == "data/old"
    assert option(lora, "--replay-episodes-per-task") == option(full, "--replay-episodes-per-task") == "4"
    assert shared_options(lora) == shared_options(full)

    # One demo and one evaluation command per suite, the demos rendered as the wrist base's prompts show them.
    demos = {option(command, "--suite"): command for command in commands["demos"]}
    assert sorted(demos) == ["libero_90", "libero_goal"] and option(demos["libero_goal"], "--tasks") == "8,1"
    assert all(option(c, "--cameras") == "agentview,eye_in_hand" and option(c, "--resolution") == "64" for c in demos.values())
    assert all(option(c, "--output-dir") == "data/teach" and option(c, "--trials") == "0" for c in demos.values())
    for stage, model in (("before", str(wrist_base)), ("after", str(tmp_path / "lora" / "model")),
                         ("full_after", str(tmp_path / "full" / "model"))):
        evaluations = {option(command, "--suite"): command for command in commands[stage]}
        assert sorted(evaluations) == ["libero_90", "libero_goal"]
        assert all(option(c, "--model") == model and option(c, "--trials") == "0-19" for c in evaluations.values())
    # Forgetting: both models on the base's own tasks, decoded with the base's statistics.
    base_eval, merged_eval = commands["forgetting"]
    assert option(base_eval, "--model") == str(wrist_base) and option(merged_eval, "--model") == str(tmp_path / "lora" / "model")
    key = json.loads((wrist_base / "processor_config.json").read_text())["default_unnorm_key"]
    assert all(option(c, "--unnorm-key") == key and option(c, "--suite") == "libero_spatial" for c in commands["forgetting"])
    assert all(option(c, "--tasks") == "all" and option(c, "--trials") == "0-4" for c in commands["forgetting"])
    chosen = teach.stage_commands(arguments(tmp_path, wrist_base, "--base-tasks", "0,3", "--base-trials", "0-19"))["forgetting"]
    assert all(option(c, "--tasks") == "0,3" and option(c, "--trials") == "0-19" for c in chosen)


def test_bad_requests_are_refused_with_the_reason(tmp_path, wrist_base, capsys):
    for argv, reason in (
        (["--work-dir", "w", "--base", "b", "--data-dir", "d"], "--task (at least once)"),
        (["--work-dir", "w", "--task", "libero_goal"], "'libero_goal': give SUITE:TASK_ID"),
        (["--work-dir", "w", "--task", "libero_100:3"], "give SUITE:TASK_ID"),
        (["--work-dir", "w", "--base", "b", "--data-dir", "d", "--task", "libero_goal:8", "--task", "libero_goal:8"], "a task is given twice"),
        (["--work-dir", "w", "--base", "b", "--data-dir", "d", "--task", "libero_goal:8", "--stages", "lora,train"], "unknown stages ['train']"),
    ):
        with pytest.raises(SystemExit):
            teach.parse_args(argv)
        assert reason in capsys.readouterr().err


def test_real_training_runs_record_their_cost_and_are_not_rerun(tmp_path, monkeypatch):
    base = tmp_path / "base"
    model, processor = build_small_worldvla(seed=1)
    model.save_pretrained(base)
    processor.save_pretrained(base)
    write_libero_folder(tmp_path / "data", num_tasks=2, num_demos=3, num_steps=14)
    write_libero_hdf5(tmp_path / "old" / "old_task_demo.hdf5", "an old instruction", num_demos=3, num_steps=12, seed=5)
    argv = ["--work-dir", str(tmp_path / "work"), "--base", str(base), "--task", "libero_goal:8", "--data-dir", str(tmp_path / "data"),
            "--stages", "lora,full", "--train-steps", "2", "--batch-size", "4", "--eval-steps", "2", "--lora-rank", "4",
            "--replay-data-dir", str(tmp_path / "old"), "--replay-episodes-per-task", "2"]
    payload = teach.main(argv)
    costs = [json.loads(line) for line in (tmp_path / "work" / "costs.jsonl").read_text().splitlines()]
    assert [record["run"] for record in costs] == ["lora", "full"]
    assert all(record["seconds"] > 0 and record["peak_rss_mb"] > 100 for record in costs)  # a torch process
    lora, full = payload["costs"]["lora"], payload["costs"]["full"]
    assert (lora["saved"], full["saved"]) == ("adapter", "full model") and lora["invocations"] == full["invocations"] == 1
    assert 0 < lora["weights_mb"] < full["weights_mb"] and lora["weights_mb"] < lora["folder_mb"]
    replay = {"data_dir": str(tmp_path / "old"), "tasks": 1, "episodes": 2, "episodes_per_task": 2}
    assert lora["replay"] == full["replay"] == replay
    table = (tmp_path / "work" / "teach.md").read_text()
    assert f"on 2 episodes of 1 task the base knew (the first 2 of each file of `{tmp_path / 'old'}`), rehearsed." in table
    assert f"| LoRA | {lora['wall_seconds'] / 60:.1f} | 1 | {lora['peak_rss_mb']:.0f} | adapter | {lora['weights_mb']:.2f} |" in table
    assert (tmp_path / "work" / "lora" / "adapter" / "adapter_config.json").is_file()
    assert (tmp_path / "work" / "lora" / "model" / "model.safetensors").is_file()

    teach.main(argv)  # both models exist: nothing trains again
    assert len((tmp_path / "work" / "costs.jsonl").read_text().splitlines()) == 2

    # Shipping, into a stand-in repository holding the base: the adapter names its base from the repository's root,
    # and loads on it from there as a policy.
    from policy_worldvla import WorldVLAPolicy

    monkeypatch.setattr(teach, "ROOT", tmp_path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match="nothing to ship"):
        teach.main([*argv, "--stages", "ship"])
    write_evaluation(tmp_path / "work" / "eval" / "lora" / "libero_goal", "libero_goal", {8: [True] * 3 + [False]})
    teach.main([*argv, "--stages", "ship", "--name", "taught"])
    shipped = tmp_path / "checkpoints" / "taught"
    assert json.loads((shipped / "adapter_config.json").read_text())["base_model_name_or_path"] == "base"
    assert (shipped / "teach.md").read_text() == (tmp_path / "work" / "teach.md").read_text()
    card = (shipped / "README.md").read_text()
    assert "from_pretrained('base', trust_remote_code=True)" in card and "PeftModel.from_pretrained(base, 'checkpoints/taught')" in card
    assert "python eval_libero.py --model checkpoints/taught --suite libero_goal --tasks 8 --trials 0-19" in card
    assert "| libero_goal 8 `task_8` | - | 3/4 (75%, 30-95%) |" in card
    assert not (tmp_path / "checkpoints" / "taught.incomplete").exists()
    policy = WorldVLAPolicy.from_pretrained("checkpoints/taught", device="cpu")
    assert policy.unnorm_key == "data"


def write_evaluation(folder, suite, outcomes):
    """eval_libero.py's own summary of episodes with these outcomes, {task id: [success, ...]}."""
    records = [{"task_id": task, "trial": trial, "status": "success" if success else "failure", "instruction": f"task {task}",
                "seconds": 10.0} for task, results in outcomes.items() for trial, success in enumerate(results)]
    folder.mkdir(parents=True)
    settings = {"policy": "worldvla", "model": "m", "suite": suite, "seed": 0, "decoding": "parallel", "dtype": "float32",
                "max_policy_steps": 300, "device": "cpu", "rendering": "egl"}
    write_summary(folder, records, settings, {task: f"task_{task}" for task in outcomes})


def test_the_table_reads_the_evaluations_on_disk(tmp_path):
    evaluations = tmp_path / "eval"
    write_evaluation(evaluations / "before" / "libero_goal", "libero_goal", {8: [False] * 20})
    write_evaluation(evaluations / "lora" / "libero_goal", "libero_goal", {8: [True] * 12 + [False] * 8})
    write_evaluation(evaluations / "before" / "libero_90", "libero_90", {9: [True] * 5 + [False] * 15})
    write_evaluation(evaluations / "lora" / "libero_90", "libero_90", {9: [True] * 10 + [False] * 10})
    write_evaluation(evaluations / "full" / "libero_90", "libero_90", {9: [True] * 14 + [False] * 6})
    write_evaluation(evaluations / "forgetting_base", "libero_spatial", {0: [True] * 11 + [False] * 9})
    write_evaluation(evaluations / "forgetting_lora", "libero_spatial", {0: [True] * 7 + [False] * 13})
    payload = teach.main(["--work-dir", str(tmp_path), "--summarize"])
    assert json.loads((tmp_path / "teach.json").read_text()) == json.loads(json.dumps(payload))
    rows = {(row["suite"], row["task"]): row for row in payload["new_tasks"]}
    assert rows[("libero_goal", 8)]["lora_gain_points"] == 60.0 and rows[("libero_goal", 8)]["targets_met"] is True
    assert rows[("libero_90", 9)]["lora_gain_points"] == 25.0 and rows[("libero_90", 9)]["targets_met"] is False  # gain < 30
    assert rows[("libero_goal", 8)]["full"] is None
    table = (tmp_path / "teach.md").read_text()
    assert "| libero_goal 8 `task_8` | 0/20 (0%, 0-16%) | 12/20 (60%, 39-78%) | - | +60 | yes |" in table
    assert "| libero_90 9 `task_9` | 5/20 (25%, 11-47%) | 10/20 (50%, 30-70%) | 14/20 (70%, 48-85%) | +25 | no |" in table
    assert "| libero_spatial | 11/20 (55%, 34-74%) | 7/20 (35%, 18-57%) |" in table
