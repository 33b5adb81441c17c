"""scripts/reproduce_checkpoint.py: the stage commands of a first round and of a continued round, and shipping."""
import json
import shutil
from pathlib import Path

import pytest

from scripts import reproduce_checkpoint as reproduce

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "checkpoints" / "worldvla-libero-spatial-64"


def test_a_first_round_trains_from_scratch_and_a_continued_round_from_the_model():
    first = reproduce.stage_commands(reproduce.parse_args(["--work-dir", "runs/round1"]))
    assert [len(first[stage]) for stage in reproduce.STAGES[:-1]] == [2, 1, 1, 1, 1, 2]
    train = first["train"][0]
    assert train[train.index("--from-scratch-config") + 1] == "runs/round1/init/config.json" and "--model" not in train

    argv = ["--work-dir", "runs/round2", "--continue-from", "runs/round1/train/model", "--seed", "1", "--data-dir", "data/seed1",
            "--perturb", "0.05", "--close-rise", "0.003"]
    second = reproduce.stage_commands(reproduce.parse_args(argv))
    assert second["vq"] == [] and second["init"] == []
    train = second["train"][0]
    assert train[train.index("--model") + 1] == "runs/round1/train/model" and "--from-scratch-config" not in train
    assert train[train.index("--data-dir") + 1] == "data/seed1" and train[train.index("--seed") + 1] == "1"
    assert all(command[command.index("--seed") + 1] == "1" for command in second["demos"])
    assert all(command[command.index("--perturb") + 1] == "0.05" for command in second["demos"])
    assert all(command[command.index("--perturb") + 1] == "0.0" for command in first["demos"])
    assert all(command[command.index("--close-rise") + 1] == "0.003" for command in second["demos"])
    assert all(command[command.index("--close-rise") + 1] == "0.0" for command in first["demos"])


def test_tasks_restrict_the_demos_and_the_evaluation():
    def option(command, name):
        return command[command.index(name) + 1]

    every_task = reproduce.stage_commands(reproduce.parse_args(["--work-dir", "w"]))
    assert [option(c, "--tasks") for c in every_task["demos"]] == ["0,2,4,6,8", "1,3,5,7,9"]
    assert option(every_task["eval"][0], "--tasks") == "all"
    two_tasks = reproduce.stage_commands(reproduce.parse_args(["--work-dir", "w", "--tasks", "5,0", "--workers", "2"]))
    assert [option(c, "--tasks") for c in two_tasks["demos"]] == ["5", "0"]
    assert option(two_tasks["eval"][0], "--tasks") == "5,0"
    one_task = reproduce.stage_commands(reproduce.parse_args(["--work-dir", "w", "--tasks", "3"]))
    assert [option(c, "--tasks") for c in one_task["demos"]] == ["3"]  # one process: there is one file to write
    for bad in ("10", "two"):
        with pytest.raises(SystemExit):
            reproduce.parse_args(["--work-dir", "w", "--tasks", bad])


def test_a_tokenizer_trained_before_replaces_the_vq_stage(tmp_path):
    shipped_tokenizer = tmp_path / "worldvla-vq"
    (shipped_tokenizer / "vq_eval").mkdir(parents=True)
    args = reproduce.parse_args(["--work-dir", "runs/round1", "--processor", str(shipped_tokenizer)])
    commands = reproduce.stage_commands(args)
    assert commands["vq"] == []
    init = commands["init"][0]
    assert init[init.index("--processor") + 1] == str(shipped_tokenizer)
    assert reproduce.tokenizer_evaluation(args) == shipped_tokenizer / "vq_eval"
    train_vq_output = tmp_path / "vq64" / "processor"  # train_vq.py's layout: eval/ beside processor/
    train_vq_output.mkdir(parents=True)
    args = reproduce.parse_args(["--work-dir", "runs/round1", "--processor", str(train_vq_output)])
    assert reproduce.tokenizer_evaluation(args) == tmp_path / "vq64" / "eval"
    with pytest.raises(SystemExit):
        reproduce.parse_args(["--work-dir", "w", "--processor", str(shipped_tokenizer), "--continue-from", "m"])


def test_a_continued_round_finds_the_tokenizer_evaluation_up_its_chain_of_rounds(tmp_path):
    shipped = tmp_path / "checkpoints" / "specialist"
    (shipped / "vq_eval").mkdir(parents=True)
    unshipped = tmp_path / "round9"
    (unshipped / "train" / "model").mkdir(parents=True)
    argv = ["--work-dir", str(unshipped), "--continue-from", str(shipped), "--seed", "8"]
    args = reproduce.parse_args(argv)
    (unshipped / reproduce.ROUNDS_FILE).write_text(
        json.dumps({"rounds": reproduce.this_run_rounds(args, reproduce.stage_commands(args), argv)})
    )
    round10 = reproduce.parse_args(["--work-dir", str(tmp_path / "round10"), "--continue-from", str(unshipped / "train" / "model")])
    assert reproduce.tokenizer_evaluation(round10) == shipped / "vq_eval"  # round 9's model has none of its own
    assert reproduce.tokenizer_evaluation(args) == shipped / "vq_eval"


def test_shipping_a_continued_round_keeps_the_earlier_round(tmp_path, monkeypatch):
    earlier = tmp_path / "round1-model"
    shutil.copytree(SHIPPED, earlier)
    work = tmp_path / "round2"
    shutil.copytree(SHIPPED, work / "train" / "model", ignore=shutil.ignore_patterns("eval", "vq_eval", "previous"))
    trained_at = repr(str((work / "train" / "model").resolve()))
    (work / "train" / "model" / "README.md").write_text(
        f"# WorldVLA fine-tuned on libero_spatial\n\nmodel = AutoModelForCausalLM.from_pretrained({trained_at}, trust_remote_code=True)\n"
    )
    shutil.copytree(SHIPPED / "eval", work / "eval")
    monkeypatch.setattr(reproduce, "ROOT", tmp_path)

    argv = ["--work-dir", str(work), "--continue-from", str(earlier), "--seed", "1", "--stages", "ship"]
    reproduce.main(argv)

    shipped = tmp_path / "checkpoints" / "worldvla-libero-spatial-64"
    assert (shipped / "previous" / "README.md").read_text() == (earlier / "README.md").read_text()
    assert (shipped / "previous" / "eval" / "summary.json").read_bytes() == (earlier / "eval" / "summary.json").read_bytes()
    assert (shipped / "vq_eval" / "metrics.json").read_bytes() == (earlier / "vq_eval" / "metrics.json").read_bytes()
    card = (shipped / "README.md").read_text()
    assert "from_pretrained('checkpoints/worldvla-libero-spatial-64', trust_remote_code=True)" in card
    assert trained_at not in card
    earlier_rounds = json.loads((earlier / reproduce.ROUNDS_FILE).read_text())["rounds"]
    rounds = json.loads((shipped / reproduce.ROUNDS_FILE).read_text())["rounds"]
    this_round = f"python scripts/reproduce_checkpoint.py --work-dir {work} --continue-from {earlier} --seed 1"
    assert rounds[:-1] == earlier_rounds and rounds[-1]["command"] == this_round
    assert len(rounds[-1]["stages"]) == 2 + 1 + 1 + 2  # demos, train, eval, diagnose
    assert json.loads((work / reproduce.ROUNDS_FILE).read_text())["rounds"] == rounds
    # The card lists every round in order, each command followed by what it runs.
    positions = [card.index(f"### Round {n}\n\n```bash\n{r['command']}\n```") for n, r in enumerate(rounds, start=1)]
    assert positions == sorted(positions) and len(rounds) == len(earlier_rounds) + 1 >= 3
    stage_block = card.rsplit("which runs, stage by stage:\n\n```bash\n", 1)[1].split("\n```", 1)[0].splitlines()
    assert stage_block == rounds[-1]["stages"] and all(line.startswith("python ") for line in stage_block)
    summary = json.loads((work / "eval" / "summary.json").read_text())
    assert f"Success {summary['success_rate'] * 100:.1f}% over {summary['episodes']} episodes" in card


def test_the_rounds_of_a_model_come_from_its_folder_or_its_work_dir(tmp_path):
    shipped_rounds = json.loads((SHIPPED / reproduce.ROUNDS_FILE).read_text())["rounds"]
    assert reproduce.rounds_of(SHIPPED) == shipped_rounds and all(set(r) == {"command", "stages"} for r in shipped_rounds)
    argv = ["--work-dir", str(tmp_path / "round3"), "--continue-from", str(SHIPPED), "--seed", "2"]
    args = reproduce.parse_args(argv)
    (tmp_path / "round3").mkdir()
    (tmp_path / "round3" / reproduce.ROUNDS_FILE).write_text(
        json.dumps({"rounds": reproduce.this_run_rounds(args, reproduce.stage_commands(args), argv)})
    )
    continued = reproduce.rounds_of(tmp_path / "round3" / "train" / "model")
    assert continued[:-1] == shipped_rounds and continued[-1]["command"].endswith("--seed 2")

    elsewhere = tmp_path / "from-the-hub"
    assert reproduce.rounds_of(elsewhere) == [{"start": str(elsewhere)}]
    card = reproduce.rounds_markdown(reproduce.rounds_of(elsewhere) + continued[-1:])
    assert card.startswith(f"It starts from `{elsewhere}`, whose commands are not recorded here. Made in 1 round;")
