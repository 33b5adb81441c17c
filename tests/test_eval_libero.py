"""eval_libero.py: results files and their settings, resume, a truncated JSONL line, errors counted as failures,
trial ranges and merging, LIBERO-PRO robustness runs, early failures for bad inputs, and a WorldVLA checkpoint in the
loop."""

import json
import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("libero")

import eval_libero  # noqa: E402


def run(output_dir, trials, *extra):
    return eval_libero.main(["--policy", "scripted", "--suite", "libero_spatial", "--tasks", "0",
                             "--trials", str(trials), "--output-dir", str(output_dir), *extra])


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
    assert on_disk["wilson_95"] == pytest.approx([0.2065, 1.0], abs=1e-4)  # 1 of 1: Wilson's closed form
    settings = json.loads((output_dir / "settings.json").read_text())
    assert settings["policy"] == "scripted" and settings["max_policy_steps"] == 220 and settings["rendering"]
    table = (output_dir / "results.md").read_text()
    assert "| 0 | pick_up_the_black_bowl" in table and "max_policy_steps: `220`" in table


def test_rerun_with_other_settings_is_refused(first_run):
    output_dir, _ = first_run
    with pytest.raises(SystemExit, match="max_steps"):
        run(output_dir, 1, "--max-steps", "30")


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

    monkeypatch.setattr(eval_libero, "Episode", explode)
    summary = run(tmp_path, trials=1)
    record = lines(tmp_path / "episodes.jsonl")[0]
    assert record["status"] == "error" and "simulated crash" in record["error"]
    # The paper's rule: an episode that raised is a failure in the headline rate, and is listed apart.
    assert summary["success_rate"] == 0.0 and summary["episodes"] == 1
    assert summary["errors"] == 1 and summary["success_rate_judged"] is None
    assert summary["tasks"]["0"]["error_trials"] == [0]
    assert "Episodes that raised (task: trials): 0: [0]" in (tmp_path / "results.md").read_text()


def test_an_empty_or_malformed_chunk_raises_instead_of_looping():
    from libero_sim import env as libero_env

    class Broken:
        def __init__(self, action):
            self.action = action

        def reset(self):
            pass

        def select_action(self, observation, instruction):
            return self.action

    suite = libero_env.get_suite("libero_spatial")
    env = libero_env.make_env(suite.get_task_bddl_file_path(0), camera_names=())
    try:
        for action in ([], [0.0] * 6, [float("nan")] * 7):
            with pytest.raises(ValueError, match="an action is 7 finite numbers"):
                libero_env.run_episode(env, Broken(action), suite.get_task_init_states(0)[0], "x", 5)
    finally:
        env.close()


def test_trial_specs():
    assert eval_libero.parse_trials("3", 50) == [0, 1, 2]
    assert eval_libero.parse_trials("40-42", 50) == [40, 41, 42]
    assert eval_libero.parse_trials("0,5,7", 50) == [0, 5, 7]
    assert eval_libero.parse_trials("7,", 50) == [7]
    with pytest.raises(ValueError, match="do not exist"):
        eval_libero.parse_trials("48-52", 50)
    with pytest.raises(ValueError, match="Bad --trials"):
        eval_libero.parse_trials("a-b", 50)


def test_split_runs_merge_into_one_summary(first_run, tmp_path):
    output_dir, _ = first_run
    run(tmp_path / "second", "1,")
    summary = eval_libero.main(["--merge", str(output_dir), str(tmp_path / "second"), "--output-dir", str(tmp_path / "all")])
    assert summary["episodes"] == 2 and summary["successes"] == 2
    assert sorted(r["trial"] for r in lines(tmp_path / "all" / "episodes.jsonl")) == [0, 1]
    with pytest.raises(SystemExit, match="no settings.json"):
        eval_libero.main(["--merge", str(tmp_path), "--output-dir", str(tmp_path / "x")])


def test_robustness_runs_the_suite_beside_its_libero_pro_variants(tmp_path):
    robustness = eval_libero.main(["--policy", "scripted", "--suite", "libero_spatial", "--perturbations", "lan,task",
                                   "--tasks", "0", "--trials", "1", "--output-dir", str(tmp_path)])
    assert [row["suite"] for row in robustness["suites"]] == ["libero_spatial", "libero_spatial_lan", "libero_spatial_task"]
    assert json.loads((tmp_path / "robustness.json").read_text()) == json.loads(json.dumps(robustness))
    assert [row["episodes"] for row in robustness["suites"]] == [1, 1, 1]
    instructions = {suite: lines(tmp_path / suite / "episodes.jsonl")[0]["instruction"] for suite in
                    ("libero_spatial", "libero_spatial_lan", "libero_spatial_task")}
    # The benchmark's instruction, LIBERO-PRO's paraphrase, and the other task's instruction.
    assert instructions == {
        "libero_spatial": "pick up the black bowl between the plate and the ramekin and place it on the plate",
        "libero_spatial_lan": "lift the black bowl between the plate and ramekin and set it on the plate",
        "libero_spatial_task": "Pick the akita black bowl not between the plate and the ramekin and place it on the plate",
    }
    settings = json.loads((tmp_path / "libero_spatial_lan" / "settings.json").read_text())
    assert settings["suite"] == "libero_spatial_lan" and settings["max_policy_steps"] == 220
    table = (tmp_path / "robustness.md").read_text()
    assert "| libero_spatial_lan | paraphrased instruction |" in table
    assert "| 0 | lift the black bowl between the plate and ramekin" in (tmp_path / "libero_spatial_lan" / "results.md").read_text()


def test_robustness_rows_and_change_from_base():
    def summary(suite, successes, episodes):
        return {"settings": {"policy": "worldvla", "suite": suite}, "success_rate": successes / episodes,
                "wilson_95": eval_libero.wilson_interval(successes, episodes), "successes": successes,
                "episodes": episodes, "errors": 0}

    robustness = eval_libero.robustness_summary(
        "libero_object", {"libero_object": summary("libero_object", 5, 10), "libero_object_swap": summary("libero_object_swap", 1, 10)}
    )
    base, swap = robustness["suites"]
    assert base["perturbation"] is None and base["change_from_base_points"] == 0
    assert swap["perturbation"] == "swap" and swap["what_changes"] == "object positions"
    assert swap["change_from_base_points"] == pytest.approx(-40.0)
    assert robustness["settings"] == {"policy": "worldvla"}
    table = eval_libero.robustness_table(robustness)
    assert "| libero_object_swap | object positions | 10.0% | 2-40% | 1 / 10 | 0 | -40.0 |" in table
    assert eval_libero.parse_perturbations("all") == ["swap", "object", "lan", "task"]
    with pytest.raises(ValueError, match="'env' unknown"):
        eval_libero.parse_perturbations("swap,env")


def test_cli_errors_name_the_problem(capsys):
    for argv, message in (
        (["--suite", "libero_spatial"], "--model is required"),
        (["--policy", "scripted", "--tasks", "12"], "Bad task id 12"),
        (["--policy", "scripted", "--suite", "libero_nope"], "invalid choice"),
        (["--model", "./no/such/folder"], "no such folder"),
        (["--policy", "scripted", "--trials", "0-60"], "do not exist"),
        (["--policy", "scripted", "--suite", "libero_90", "--perturbations", "all"], "--perturbations needs --suite one of libero_spatial"),
        (["--policy", "scripted", "--suite", "libero_goal", "--perturbations", "env"], "Bad --perturbations 'env'"),
        (["--policy", "scripted", "--gripper-hold", "3"], "--gripper-hold applies to a WorldVLA policy"),
        (["--model", "any/model", "--gripper-hold", "0"], "--gripper-hold must be at least 1"),
        (["--model", "any/model", "--gripper-hold-direction", "release"], "--gripper-hold-direction needs --gripper-hold above 1"),
    ):
        with pytest.raises(SystemExit):
            eval_libero.parse_args([*argv, "--output-dir", "x"])
        assert message in capsys.readouterr().err


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    from scripts.build_small_checkpoint import build_small_worldvla

    folder = tmp_path_factory.mktemp("checkpoint")
    model, processor = build_small_worldvla(seed=0)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def record_queries(checkpoint, monkeypatch):
    """(queries, encoded), filled as the evaluation runs: the frames of each action prompt, the images of each VQ
    call. Patched on the classes of the checkpoint's own code (trust_remote_code), which the evaluation loads."""
    from policy_worldvla import WorldVLAPolicy

    loaded = WorldVLAPolicy.from_pretrained(str(checkpoint), device="cpu")
    model_class, processor_class = type(loaded.model), type(loaded.processor)
    queries, encoded = [], []
    generate_action_tokens, encode_images = model_class.generate_action_tokens, processor_class.encode_images

    def recording_generate(self, input_ids, attention_mask=None, decoding="parallel"):
        queries.append((input_ids == self.config.token_layout.image_start_token_id).sum(-1).tolist())
        return generate_action_tokens(self, input_ids, attention_mask, decoding=decoding)

    def recording_encode(self, images):
        encoded.append([np.array(image) for image in images])
        return encode_images(self, images)

    monkeypatch.setattr(model_class, "generate_action_tokens", recording_generate)
    monkeypatch.setattr(processor_class, "encode_images", recording_encode)
    return queries, encoded


def test_a_bad_unnorm_key_stops_before_the_first_episode(small_checkpoint, tmp_path):
    with pytest.raises(SystemExit, match="unnorm_key 'bridge' has no action statistics"):
        eval_libero.main(["--model", str(small_checkpoint), "--unnorm-key", "bridge", "--tasks", "0", "--trials", "1",
                          "--device", "cpu", "--output-dir", str(tmp_path / "eval")])
    assert not (tmp_path / "eval" / "episodes.jsonl").exists()


def test_worldvla_checkpoint_runs_through_the_protocol(small_checkpoint, tmp_path, monkeypatch):
    """A small random WorldVLA (64-px frames) drives the simulator through WorldVLAPolicy: its chunks are executed
    open loop, the first query sees one frame and the later ones the previous step's frame too, and every frame
    a query sees is encoded once."""
    queries, encoded = record_queries(small_checkpoint, monkeypatch)
    summary = eval_libero.main([
        "--model", str(small_checkpoint), "--suite", "libero_spatial", "--tasks", "0", "--trials", "1",
        "--max-steps", "12", "--device", "cpu", "--output-dir", str(tmp_path / "eval"), "--save-video",
    ])
    record = lines(tmp_path / "eval" / "episodes.jsonl")[0]
    assert record["error"] is None and record["steps"] == 12
    assert summary["settings"]["max_steps"] == 12 and summary["errors"] == 0
    assert summary["settings"]["unnorm_key"] == "libero"
    assert queries == [[1], [2], [2]]  # K = 5: queries at steps 0, 5 and 10, of one frame, then two
    assert [len(images) for images in encoded] == [1, 2, 2]  # steps 4 and 5, then 9 and 10: none of them seen before

    import imageio.v3 as iio

    video = iio.imread(tmp_path / "eval" / record["video"])
    assert video.shape == (1 + 10 + 12, 64, 64, 3)  # the reset, the 10 waiting steps, the 12 policy steps


def test_environments_stepped_in_lockstep_give_the_episodes_run_one_by_one(small_checkpoint, tmp_path):
    """--envs-per-worker 2: the two episodes of each group step together, their queries batched; every frame of
    every episode (the saved videos) and every outcome equal those of the episodes run one at a time."""
    import imageio.v3 as iio

    runs = {}
    for envs in (1, 2):
        output_dir = tmp_path / f"envs{envs}"
        eval_libero.main([
            "--model", str(small_checkpoint), "--suite", "libero_spatial", "--tasks", "0", "--trials", "0-2",
            "--max-steps", "12", "--device", "cpu", "--output-dir", str(output_dir), "--save-video",
            "--envs-per-worker", str(envs),
        ])
        records = sorted(lines(output_dir / "episodes.jsonl"), key=lambda record: record["trial"])
        runs[envs] = [(r["trial"], r["status"], r["steps"], iio.imread(output_dir / r["video"])) for r in records]
        assert json.loads((output_dir / "settings.json").read_text())["envs_per_worker"] == envs
    assert [run[:3] for run in runs[1]] == [run[:3] for run in runs[2]] == [(t, "failure", 12) for t in (0, 1, 2)]
    for (_, _, _, alone), (_, _, _, batched) in zip(runs[1], runs[2]):
        assert alone.shape == (23, 64, 64, 3)
        np.testing.assert_array_equal(alone, batched)
    assert not np.array_equal(runs[1][0][3], runs[1][1][3])  # the trials' scenes differ: the comparison has teeth


def test_a_wrist_camera_checkpoint_sees_both_cameras_in_the_protocol(tmp_path, monkeypatch):
    """A `wrist_camera` model gets each step's wrist frame beside the third-person one from the simulator: its
    queries hold two frames per history step and each frame is encoded once."""
    from scripts.build_small_checkpoint import build_small_worldvla

    model, processor = build_small_worldvla(seed=0, wrist_camera=True)
    model.save_pretrained(tmp_path / "wrist")
    processor.save_pretrained(tmp_path / "wrist")
    queries, encoded = record_queries(tmp_path / "wrist", monkeypatch)
    summary = eval_libero.main([
        "--model", str(tmp_path / "wrist"), "--suite", "libero_spatial", "--tasks", "0", "--trials", "1",
        "--max-steps", "6", "--device", "cpu", "--output-dir", str(tmp_path / "eval"),
    ])
    assert summary["errors"] == 0 and lines(tmp_path / "eval" / "episodes.jsonl")[0]["steps"] == 6
    assert queries == [[2], [4]]  # steps 0 and 5: one step of two cameras, then two steps
    assert [len(images) for images in encoded] == [2, 4]  # steps 4 and 5, each camera once
    third_person, wrist = encoded[0]
    assert third_person.shape == wrist.shape == (64, 64, 3) and np.abs(third_person.astype(int) - wrist).mean() > 10


def one_short_episode(checkpoint, output_dir):
    """eval_libero.py's arguments for task 0, state 1, five policy steps on the CPU."""
    return ["--model", str(checkpoint), "--tasks", "0", "--trials", "1", "--max-steps", "5", "--device", "cpu",
            "--output-dir", str(output_dir)]


def test_the_gripper_hold_reaches_the_policy_and_the_settings(small_checkpoint, tmp_path):
    """--gripper-hold and its direction are recorded with the episodes; a rerun with another hold or direction into
    the same folder is refused, and a folder written before the options existed reads as 1, both."""
    output_dir = tmp_path / "eval"
    args = one_short_episode(small_checkpoint, output_dir)
    summary = eval_libero.main([*args, "--gripper-hold", "3"])
    assert summary["settings"]["gripper_hold"] == 3 and summary["errors"] == 0
    with pytest.raises(SystemExit, match=r"'gripper_hold': \(3, 1\)"):
        eval_libero.main(args)
    with pytest.raises(SystemExit, match=r"'gripper_hold_direction': \('both', 'release'\)"):
        eval_libero.main([*args, "--gripper-hold", "3", "--gripper-hold-direction", "release"])
    settings = json.loads((output_dir / "settings.json").read_text())
    del settings["gripper_hold"], settings["gripper_hold_direction"]
    (output_dir / "settings.json").write_text(json.dumps(settings))
    assert eval_libero.main(args)["episodes"] == 1  # resumed: the episode is not run again
    release_dir = tmp_path / "release"
    summary = eval_libero.main([*one_short_episode(small_checkpoint, release_dir), "--gripper-hold", "2", "--gripper-hold-direction", "release"])
    assert summary["settings"]["gripper_hold_direction"] == "release" and summary["errors"] == 0


def test_the_action_bin_window_reaches_the_decoder_and_the_settings(small_checkpoint, tmp_path):
    """--action-bin-window overrides the checkpoint's config for the episodes, is recorded, and a rerun with the
    checkpoint's own window (1) into the same folder is refused; trace_episode.py records the window it ran."""
    from scripts import trace_episode

    output_dir = tmp_path / "eval"
    args = one_short_episode(small_checkpoint, output_dir)
    summary = eval_libero.main([*args, "--action-bin-window", "9"])
    assert summary["settings"]["action_bin_window"] == 9 and summary["errors"] == 0
    with pytest.raises(SystemExit, match=r"'action_bin_window': \(9, 1\)"):
        eval_libero.main(args)
    trace = trace_episode.main(["--model", str(small_checkpoint), "--max-steps", "5", "--action-bin-window", "9",
                                "--gripper-hold", "2", "--gripper-hold-direction", "release", "--output", str(tmp_path / "trace.json")])
    assert trace["policy_steps"] == 5
    settings = json.loads((tmp_path / "trace.json").read_text())["settings"]
    assert settings["action_bin_window"] == 9 and settings["gripper_hold"] == 2 and settings["gripper_hold_direction"] == "release"
