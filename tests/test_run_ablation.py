"""scripts/run_ablation.py: each variant's stage commands differ from the shipped recipe's only by its row's options,
and the table reads what the tools wrote."""
import json

import pytest

from scripts import reproduce_checkpoint as reproduce
from scripts import run_ablation as ablation

SHARED = ["--work-dir", "runs/ablation", "--processor", "runs/vq/processor", "--data-dir", "data/spatial", "--seed", "3",
          "--train-steps", "500", "--layers", "2", "--hidden-size", "128"]


def option(command, name):
    return command[command.index(name) + 1] if name in command else None


def commands_of(variant):
    args = ablation.parse_args([*SHARED, "--variant", variant])
    return reproduce.stage_commands(reproduce.parse_args(ablation.reproduce_argv(args, variant)))


def test_every_variant_shares_data_tokenizer_size_budget_and_seed():
    for variant in ablation.VARIANTS:
        commands = commands_of(variant)
        init, train = commands["init"][0], commands["train"][0]
        assert option(init, "--processor") == "runs/vq/processor" and option(init, "--layers") == "2"
        assert option(init, "--hidden-size") == "128" and option(init, "--seed") == "3"
        assert option(train, "--data-dir") == "data/spatial" and option(train, "--max-steps") == "500"
        assert option(train, "--output-dir") == f"runs/ablation/{variant}/train"
        assert option(train, "--from-scratch-config") == f"runs/ablation/{variant}/init/config.json"
        assert all(option(demos, "--output-dir") == "data/spatial" for demos in commands["demos"])
        assert commands["vq"] == []


def test_each_variant_changes_only_its_own_options():
    def setting(variant):
        commands = commands_of(variant)
        init, train = commands["init"][0], commands["train"][0]
        return {
            "chunk": option(init, "--chunk-size"),
            "history": option(init, "--history-frames"),
            "causal": "--causal-action-mask" in init,
            "kinds": option(train, "--sample-kinds"),
            "decoding": option(commands["eval"][0], "--decoding") if commands["eval"] else "no policy",
            "diagnose": [command[1] for command in commands["diagnose"]],
        }

    both = ["scripts/diagnose_policy.py", "eval_world_model.py"]
    assert setting("a") == {"chunk": "1", "history": "2", "causal": False, "kinds": "action", "decoding": None,
                            "diagnose": ["scripts/diagnose_policy.py"]}
    assert setting("b") == {**setting("a"), "kinds": "action,world_model", "diagnose": both}
    assert setting("c") == {**setting("b"), "chunk": "5", "causal": True, "decoding": "sequential"}
    assert setting("d") == {**setting("c"), "causal": False, "decoding": None}
    assert setting("e") == {**setting("d"), "kinds": "world_model", "decoding": "no policy", "diagnose": ["eval_world_model.py"]}
    assert setting("d1") == {**setting("d"), "history": "1"}


def test_bad_requests_are_refused_with_the_reason(capsys):
    for argv, reason in (
        ([*SHARED, "--variant", "f"], "unknown variants ['f']"),
        (["--work-dir", "w", "--variant", "a"], "--processor and --data-dir are needed"),
        (["--work-dir", "w"], "give --variant"),
        ([*SHARED, "--variant", "a", "--summarize"], "give --variant"),
    ):
        with pytest.raises(SystemExit):
            ablation.parse_args(argv)
        assert reason in capsys.readouterr().err
    with pytest.raises(SystemExit):
        reproduce.parse_args(["--work-dir", "w", "--sample-kinds", "actions"])
    assert "--sample-kinds 'actions'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        reproduce.parse_args(["--work-dir", "w", "--continue-from", "m", "--causal-action-mask"])
    assert "starts a new model" in capsys.readouterr().err


def write_variant(root, variant, successes=None, episodes=None, accuracy=None, psnr=None):
    folder = root / variant
    if successes is not None:
        from eval_libero import wilson_interval

        (folder / "eval").mkdir(parents=True)
        task = {"success_rate": successes / episodes, "episodes": episodes, "successes": successes}
        summary = {"success_rate": successes / episodes, "successes": successes, "episodes": episodes,
                   "wilson_95": wilson_interval(successes, episodes), "tasks": {"0": task}}
        (folder / "eval" / "summary.json").write_text(json.dumps(summary))
    if accuracy is not None:
        (folder / "train" / "model").mkdir(parents=True)
        metrics = {"eval_ind_action_token_accuracy": accuracy, "eval_ind_action_l1": 0.05, "train_runtime": 100.0}
        (folder / "train" / "model" / "training_summary.json").write_text(json.dumps({"metrics": metrics}))
    if psnr is not None:
        (folder / "world_model").mkdir(parents=True)
        metrics = {h: {"prediction": {"psnr": p, "ssim": 80.0, "lpips": None, "fvd": None}} for h, p in zip(("10", "50"), psnr)}
        (folder / "world_model" / "summary.json").write_text(json.dumps({"metrics": metrics}))


def test_the_table_reads_every_variant_on_disk(tmp_path):
    write_variant(tmp_path, "a", successes=3, episodes=10, accuracy=0.5)
    write_variant(tmp_path, "d", successes=7, episodes=10, accuracy=0.6, psnr=(28.0, 23.5))
    write_variant(tmp_path, "e", psnr=(27.0, 22.25))
    (tmp_path / "c").mkdir()  # started, nothing finished yet
    rows = ablation.main(["--work-dir", str(tmp_path), "--summarize"])
    assert [row["variant"] for row in rows] == ["a", "c", "d", "e"]
    assert json.loads((tmp_path / "ablations.json").read_text()) == rows
    a, c, d, e = rows
    assert a["libero"]["successes"] == 3 and a["libero"]["per_task"] == {"0": 0.3} and a["paper_success"] == 62.8
    assert "libero" not in c and "libero" not in e and e["world_model"]["50"]["psnr"] == 22.25
    assert d["world_model_paper"]["50"]["psnr"] == 24.30
    table = (tmp_path / "ablations.md").read_text()
    assert "| a | action model only, K = 1 | 30.0% | 11-60% | 10 | 62.8 | 50.0 | 0.0500 |" in table
    assert "| c | action + world model, K = 5, causal mask | - | - | - | 54.0 | - | - |" in table
    assert "| d: action + world model, K = 5, action mask | 28.00 | 80.00 | 23.50 | 80.00 | 29.77 | 90.40 | 24.30 | 83.55 |" in table
    assert "| e: world model only | 27.00 | 80.00 | 22.25 | 80.00 | 29.62 | 90.73 | 23.98 | 83.41 |" in table
    with pytest.raises(SystemExit, match="no variant folder"):
        ablation.main(["--work-dir", str(tmp_path / "empty"), "--summarize"])


def test_the_causal_variant_builds_a_model_without_the_action_mask(tmp_path):
    import subprocess
    import sys

    from configuration_worldvla import WorldVLAConfig

    script = ablation.ROOT / "scripts" / "build_small_checkpoint.py"
    for folder, extra in (("causal", ["--causal-action-mask"]), ("masked", [])):
        subprocess.run([sys.executable, str(script), "--output-dir", str(tmp_path / folder), "--layers", "1", "--hidden-size", "32",
                        "--chunk-size", "5", *extra], check=True, capture_output=True)
    assert WorldVLAConfig.from_pretrained(tmp_path / "causal").use_action_attention_mask is False
    assert WorldVLAConfig.from_pretrained(tmp_path / "masked").use_action_attention_mask is True
