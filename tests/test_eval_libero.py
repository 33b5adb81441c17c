"""eval_libero.py: results files, resume, a truncated JSONL line, and a WorldVLA checkpoint in the loop."""

import json
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("libero")

import eval_libero  # noqa: E402


def run(output_dir, trials):
    return eval_libero.main(["--policy", "scripted", "--suite", "libero_spatial", "--tasks", "0",
                             "--trials", str(trials), "--output-dir", str(output_dir)])


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("eval")
    summary = run(output_dir, trials=1)
    return output_dir, summary


def test_results_files(first_run):
    output_dir, summary = first_run
    records = lines(output_dir / "episodes.jsonl")
    assert len(records) == 1
    assert records[0]["status"] == "success" and records[0]["trial"] == 0 and records[0]["error"] is None
    assert records[0]["steps"] <= 220 and records[0]["seconds"] > 0
    on_disk = json.loads((output_dir / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert on_disk["tasks"]["0"]["success_rate"] == 1.0 and on_disk["success_rate"] == 1.0
    assert "| 0 | pick_up_the_black_bowl" in (output_dir / "results.md").read_text()


def test_rerun_skips_finished_and_recovers_a_truncated_line(first_run):
    output_dir, _ = first_run
    episodes = output_dir / "episodes.jsonl"
    finished = episodes.read_text()
    # A crash in the middle of writing the next episode's line.
    with open(episodes, "a") as stream:
        stream.write('{"task_id": 0, "trial": 1, "stat')
    summary = run(output_dir, trials=2)
    records = lines(episodes)  # every line parses again
    assert episodes.read_text().startswith(finished)  # the finished episode was not run again
    assert [(r["task_id"], r["trial"]) for r in records] == [(0, 0), (0, 1)]
    assert summary["tasks"]["0"]["episodes"] == 2


def test_crashing_episode_is_recorded_as_error(tmp_path, monkeypatch):
    def explode(*args, **kwargs):
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(eval_libero, "run_episode", explode)
    summary = run(tmp_path, trials=1)
    record = lines(tmp_path / "episodes.jsonl")[0]
    assert record["status"] == "error" and "simulated crash" in record["error"]
    assert summary["errors"] == 1 and summary["tasks"]["0"]["success_rate"] is None


def test_cli_errors_name_the_problem(capsys):
    with pytest.raises(SystemExit):
        eval_libero.parse_args(["--suite", "libero_spatial", "--output-dir", "x"])
    assert "--model is required" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        eval_libero.parse_args(["--policy", "scripted", "--tasks", "12", "--output-dir", "x"])
    assert "Bad task id 12" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        eval_libero.parse_args(["--policy", "scripted", "--suite", "libero_nope", "--output-dir", "x"])
    assert "invalid choice" in capsys.readouterr().err


def test_worldvla_checkpoint_runs_through_the_protocol(tmp_path, monkeypatch):
    """A small random WorldVLA (64-px frames) drives the simulator: its chunks are executed open loop, the first
    query sees one frame and the later ones the previous step's frame too."""
    from scripts.build_small_checkpoint import build_small_worldvla

    model, processor = build_small_worldvla(seed=0)
    model.save_pretrained(tmp_path / "checkpoint")
    processor.save_pretrained(tmp_path / "checkpoint")
    queries = []
    act = eval_libero.WorldVLAPolicy.act

    def recording_act(self, observation):
        queries.append([frame.shape for frame in observation["frames"]])
        return act(self, observation)

    monkeypatch.setattr(eval_libero.WorldVLAPolicy, "act", recording_act)
    summary = eval_libero.main([
        "--model", str(tmp_path / "checkpoint"), "--suite", "libero_spatial", "--tasks", "0", "--trials", "1",
        "--max-steps", "12", "--device", "cpu", "--output-dir", str(tmp_path / "eval"), "--save-video",
    ])
    record = lines(tmp_path / "eval" / "episodes.jsonl")[0]
    assert record["error"] is None and record["steps"] == 12
    assert summary["config"]["max_steps"] == 12 and summary["errors"] == 0
    assert queries[0] == [(64, 64, 3)]  # the first query: the current frame alone, as in the release
    assert queries[1:] == [[(64, 64, 3)] * 2] * 2  # K = 5: queries at steps 0, 5 and 10

    import imageio.v3 as iio

    video = iio.imread(tmp_path / "eval" / record["video"])
    assert video.shape == (1 + 10 + 12, 64, 64, 3)  # the reset, the 10 waiting steps, the 12 policy steps
