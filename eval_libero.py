"""Closed-loop LIBERO evaluation of WorldVLA (or of the scripted expert) with the paper's protocol.

    python eval_libero.py --model PATH_OR_HUB_ID --suite libero_spatial --output-dir out/spatial
    python eval_libero.py --policy scripted --suite libero_spatial --trials 5 --output-dir out/x

Protocol (WorldVLA, section 6 of the reference notes; implemented in `libero_sim.env`): the
benchmark's fixed initial states (`--trials` of the 50 per task), 10 waiting steps with
[0,0,0,0,0,0,-1], at most 220/280/300/520/400 policy steps for spatial/object/goal/10/90; the
third-person camera rendered at `model.config.image_size` and rotated 180 degrees, the last
`model.config.history_frames` frames as input; each predicted chunk executed open loop; success is
the environment's `done`. Actions are sent as decoded (no gripper binarisation).

Outputs in `--output-dir`: `episodes.jsonl` (one line per finished episode, appended with a single
fsync'd write; a rerun skips the episodes already there), `summary.json`, `results.md`, and with
`--save-video` one mp4 per episode in `videos/`. An episode that raises is recorded with status
"error" and its traceback, reported apart from failures, and retried by the next rerun.
"""

import argparse
import json
import logging
import multiprocessing
import os
import time
import traceback
from pathlib import Path

import numpy as np

from libero_sim.env import (
    MAX_POLICY_STEPS,
    SUITES,
    THIRD_PERSON_CAMERA,
    get_suite,
    make_env,
    parse_task_ids,
    run_episode,
)

logger = logging.getLogger("eval_libero")

EPISODES_FILE = "episodes.jsonl"
SUMMARY_FILE = "summary.json"
RESULTS_FILE = "results.md"
# The scripted expert needs no camera; its videos are rendered at this size.
SCRIPTED_VIDEO_RESOLUTION = 256
VIDEO_FPS = 20


# Policies ---------------------------------------------------------------------------------------
class WorldVLAPolicy:
    """Adapter from the evaluation loop to `model.predict_action` (trust_remote_code model)."""

    def __init__(self, model_id, revision=None, unnorm_key=None, device="cpu"):
        import torch
        from transformers import AutoModelForCausalLM, AutoProcessor

        self.torch = torch
        self.device = device
        self.unnorm_key = unnorm_key
        try:
            model = AutoModelForCausalLM.from_pretrained(model_id, revision=revision, trust_remote_code=True)
            self.processor = AutoProcessor.from_pretrained(model_id, revision=revision, trust_remote_code=True)
        except OSError as error:
            raise SystemExit(f"Could not load the model {model_id!r} (revision {revision}): {error}") from error
        self.model = model.to(device).eval()
        # Each query encodes its frames: on a GPU the VQ encoder must run there too (seconds per frame on a CPU).
        self.processor.vq_model.to(device)
        self.image_size = int(self.model.config.image_size)
        self.history_frames = int(self.model.config.history_frames)
        self.instruction = None

    def for_env(self, env):
        return self

    def reset(self, instruction):
        self.instruction = instruction

    def act(self, observation):
        """The next action chunk (K, 7) from the upright frames of the last env steps."""
        inputs = self.processor(text=self.instruction, images=observation["frames"], return_tensors="pt")
        with self.torch.no_grad():
            actions = self.model.predict_action(
                **inputs.to(self.device), processor=self.processor, unnorm_key=self.unnorm_key
            )
        return np.asarray(actions, dtype=np.float64).reshape(-1, 7)


class ScriptedPolicy:
    """The privileged-state expert; it needs the env, so one is made per environment."""

    image_size = None
    history_frames = 0

    def for_env(self, env):
        from libero_sim.expert import ScriptedExpert

        return ScriptedExpert(env)


def load_policy(config):
    if config["policy"] == "scripted":
        return ScriptedPolicy()
    return WorldVLAPolicy(config["model"], config["revision"], config["unnorm_key"], config["device"])


# Episodes ---------------------------------------------------------------------------------------
def episode_seed(seed, task_id, trial):
    """A per-episode seed that does not depend on which worker runs the episode."""
    return (seed * 1_000_003 + task_id * 1_009 + trial) % (2**32)


def run_task(config, policy, task_id, trials, report):
    """Runs `trials` of one task in one environment and calls `report(record)` after each."""
    suite = get_suite(config["suite"])
    task = suite.get_task(task_id)
    initial_states = suite.get_task_init_states(task_id)
    if policy.image_size is not None:
        camera_names, resolution = (THIRD_PERSON_CAMERA,), policy.image_size
    elif config["save_video"]:
        camera_names, resolution = (THIRD_PERSON_CAMERA,), SCRIPTED_VIDEO_RESOLUTION
    else:
        camera_names, resolution = (), SCRIPTED_VIDEO_RESOLUTION
    env = make_env(suite.get_task_bddl_file_path(task_id), camera_names=camera_names, resolution=resolution)
    episode_policy = policy.for_env(env)
    try:
        for trial in trials:
            record = {"suite": config["suite"], "task_id": task_id, "task_name": task.name, "trial": trial}
            start = time.time()
            try:
                np.random.seed(episode_seed(config["seed"], task_id, trial))
                if config["policy"] == "worldvla":
                    policy.torch.manual_seed(episode_seed(config["seed"], task_id, trial))
                result = run_episode(
                    env,
                    episode_policy,
                    initial_states[trial],
                    task.language,
                    config["max_steps"] or MAX_POLICY_STEPS[config["suite"]],
                    history_frames=policy.history_frames,
                    record=config["save_video"],
                )
                record.update(status="success" if result.success else "failure", success=result.success)
                record.update(steps=result.policy_steps, error=None)
                if config["save_video"]:
                    record["video"] = write_video(config["output_dir"], record, result.video_frames)
            except Exception:
                record.update(status="error", success=False, steps=None, error=traceback.format_exc())
            record["seconds"] = round(time.time() - start, 2)
            report(record)
    finally:
        env.close()


def write_video(output_dir, record, frames):
    import imageio

    video_dir = Path(output_dir) / "videos"
    video_dir.mkdir(parents=True, exist_ok=True)
    name = f"task{record['task_id']:02d}_trial{record['trial']:02d}_{record['status']}.mp4"
    temporary = video_dir / ("partial_" + name)
    imageio.mimwrite(temporary, frames, fps=VIDEO_FPS)
    os.replace(temporary, video_dir / name)
    return str(Path("videos") / name)


def worker_main(config, work_queue, result_queue):
    """Worker process: loads its own policy, then runs (task, trials) units until told to stop."""
    configure_logging()
    try:
        policy = load_policy(config)
    except BaseException:
        result_queue.put(("fatal", traceback.format_exc()))
        return
    while True:
        unit = work_queue.get()
        if unit is None:
            break
        task_id, trials = unit
        run_task(config, policy, task_id, trials, lambda record: result_queue.put(("record", record)))
    result_queue.put(("done", None))


# Results files ----------------------------------------------------------------------------------
def read_episodes(path):
    """Finished episode records. A truncated last line (a crash mid-write) is dropped from the
    file so that the next append starts on a fresh line."""
    if not path.exists():
        return []
    raw = path.read_bytes()
    records, good_bytes = [], 0
    for line in raw.splitlines(keepends=True):
        try:
            if not line.endswith(b"\n"):
                raise ValueError("unterminated line")
            records.append(json.loads(line))
            good_bytes += len(line)
        except ValueError:
            if good_bytes + len(line) < len(raw):
                logger.warning("Skipping a corrupted line in %s", path)
                good_bytes += len(line)
                continue
            logger.warning("Dropping a truncated last line of %s: its episode will be run again", path)
    if good_bytes < len(raw):
        with open(path, "r+b") as stream:
            stream.truncate(good_bytes)
            os.fsync(stream.fileno())
    return records


def append_episode(path, record):
    """Appends one JSON line with a single write, then fsyncs, so a line is whole or absent."""
    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(descriptor, line)
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def latest_by_episode(records):
    """The last record of each (task_id, trial)."""
    return {(record["task_id"], record["trial"]): record for record in records}


def summarize(records, config, task_names):
    """Per-task and per-suite counts; the success rate excludes episodes that errored."""
    latest = latest_by_episode(records)
    tasks = {}
    for task_id, task_name in task_names.items():
        episodes = [r for (t, _), r in latest.items() if t == task_id]
        successes = sum(r["status"] == "success" for r in episodes)
        failures = sum(r["status"] == "failure" for r in episodes)
        errors = sum(r["status"] == "error" for r in episodes)
        judged = successes + failures
        tasks[str(task_id)] = {
            "task_name": task_name,
            "episodes": len(episodes),
            "successes": successes,
            "failures": failures,
            "errors": errors,
            "success_rate": successes / judged if judged else None,
            "mean_seconds": float(np.mean([r["seconds"] for r in episodes])) if episodes else None,
        }
    successes = sum(t["successes"] for t in tasks.values())
    judged = successes + sum(t["failures"] for t in tasks.values())
    return {
        "config": {key: config[key] for key in ("policy", "model", "revision", "unnorm_key", "suite", "trials", "seed", "max_steps")},
        "suite": config["suite"],
        "success_rate": successes / judged if judged else None,
        "successes": successes,
        "judged_episodes": judged,
        "errors": sum(t["errors"] for t in tasks.values()),
        "tasks": tasks,
    }


def write_atomically(path, text):
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def results_table(summary):
    def rate(value):
        return "-" if value is None else f"{100 * value:.1f}%"

    lines = [
        f"# {summary['suite']}: {summary['config']['policy']} policy",
        "",
        "| task | name | success rate | successes | failures | errors | mean s/episode |",
        "|---|---|---|---|---|---|---|",
    ]
    for task_id, task in summary["tasks"].items():
        seconds = "-" if task["mean_seconds"] is None else f"{task['mean_seconds']:.1f}"
        lines.append(
            f"| {task_id} | {task['task_name']} | {rate(task['success_rate'])} | {task['successes']} "
            f"| {task['failures']} | {task['errors']} | {seconds} |"
        )
    lines.append(
        f"| **suite** | {summary['suite']} | **{rate(summary['success_rate'])}** | {summary['successes']} "
        f"| {summary['judged_episodes'] - summary['successes']} | {summary['errors']} | |"
    )
    return "\n".join(lines) + "\n"


# Driver -----------------------------------------------------------------------------------------
def work_units(pending, num_workers):
    """(task_id, trials) units: one per task, split so that every worker gets work."""
    by_task = {}
    for task_id, trial in pending:
        by_task.setdefault(task_id, []).append(trial)
    pieces = max(1, -(-num_workers // max(len(by_task), 1)))
    units = []
    for task_id, trials in by_task.items():
        size = -(-len(trials) // pieces)
        units += [(task_id, trials[i : i + size]) for i in range(0, len(trials), size)]
    return units


def evaluate(config):
    output_dir = Path(config["output_dir"])
    output_dir.mkdir(parents=True, exist_ok=True)
    episodes_path = output_dir / EPISODES_FILE
    suite = get_suite(config["suite"])
    task_ids = parse_task_ids(config["tasks"], suite.n_tasks)
    num_states = min(len(suite.get_task_init_states(t)) for t in task_ids)
    if not 1 <= config["trials"] <= num_states:
        raise ValueError(f"--trials must be between 1 and {num_states} (the benchmark's initial states).")
    task_names = {task_id: suite.get_task(task_id).name for task_id in task_ids}

    records = read_episodes(episodes_path)
    done = {key for key, r in latest_by_episode(records).items() if r["status"] in ("success", "failure")}
    pending = [(t, trial) for t in task_ids for trial in range(config["trials"]) if (t, trial) not in done]
    logger.info("%d episodes to run, %d already finished in %s", len(pending), len(done), episodes_path)

    from tqdm import tqdm

    progress = tqdm(total=len(pending), desc=config["suite"], unit="episode")
    wanted = {(t, trial) for t in task_ids for trial in range(config["trials"])}

    def report(record):
        append_episode(episodes_path, record)
        records.append(record)
        if record["status"] == "error":
            logger.error("Task %d trial %d raised:\n%s", record["task_id"], record["trial"], record["error"])
        judged = [r for k, r in latest_by_episode(records).items() if k in wanted and r["status"] != "error"]
        rate = np.mean([r["success"] for r in judged]) if judged else 0.0
        progress.set_postfix(success=f"{100 * rate:.1f}%")
        progress.update(1)

    units = work_units(pending, config["num_workers"])
    if config["num_workers"] == 1 or len(units) <= 1:
        policy = load_policy(config) if units else None
        for task_id, trials in units:
            run_task(config, policy, task_id, trials, report)
    else:
        run_in_workers(config, units, report)
    progress.close()

    relevant = [r for r in records if (r["task_id"], r["trial"]) in wanted]
    summary = summarize(relevant, config, task_names)
    write_atomically(output_dir / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
    table = results_table(summary)
    write_atomically(output_dir / RESULTS_FILE, table)
    return summary, table


def run_in_workers(config, units, report):
    context = multiprocessing.get_context("spawn")  # robosuite and OpenGL state must not be forked
    work_queue, result_queue = context.Queue(), context.Queue()
    num_workers = min(config["num_workers"], len(units))
    for unit in units:
        work_queue.put(unit)
    for _ in range(num_workers):
        work_queue.put(None)
    workers = [context.Process(target=worker_main, args=(config, work_queue, result_queue)) for _ in range(num_workers)]
    for worker in workers:
        worker.start()
    finished = 0
    try:
        while finished < num_workers:
            kind, payload = result_queue.get()
            if kind == "record":
                report(payload)
            elif kind == "fatal":
                raise RuntimeError(f"A worker could not load the policy:\n{payload}")
            else:
                finished += 1
    finally:
        for worker in workers:
            if worker.is_alive() and finished < num_workers:
                worker.terminate()
            worker.join()


def default_device():
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="local path or Hugging Face Hub id of a WorldVLA checkpoint")
    parser.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit) of --model")
    parser.add_argument("--unnorm-key", default=None, help="action statistics to un-normalise with (default: the processor's)")
    parser.add_argument("--policy", choices=("worldvla", "scripted"), default="worldvla")
    parser.add_argument("--suite", choices=SUITES, default="libero_spatial")
    parser.add_argument("--tasks", default="all", help="comma-separated task ids, or 'all'")
    parser.add_argument("--trials", type=int, default=50, help="initial states per task (the benchmark has 50)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", required=True, help="results folder; rerunning with it resumes")
    parser.add_argument("--save-video", action="store_true", help="write an mp4 per episode")
    parser.add_argument("--num-workers", type=int, default=1, help="episodes run in parallel processes")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument(
        "--max-steps",
        type=int,
        default=None,
        help="override the suite's policy-step limit (smoke tests only: reported numbers use the protocol's)",
    )
    args = parser.parse_args(argv)
    if args.policy == "worldvla" and not args.model:
        parser.error("--model is required with --policy worldvla")
    if args.num_workers < 1:
        parser.error("--num-workers must be at least 1")
    try:
        parse_task_ids(args.tasks, 90 if args.suite == "libero_90" else 10)
    except ValueError as error:
        parser.error(str(error))
    return args


def configure_logging():
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main(argv=None):
    configure_logging()
    args = parse_args(argv)
    config = vars(args).copy()
    if config["policy"] == "worldvla" and config["device"] == "auto":
        config["device"] = default_device()
    summary, table = evaluate(config)
    print(table)
    return summary


if __name__ == "__main__":
    main()
