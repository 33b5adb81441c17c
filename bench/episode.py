"""Benchmark: the cost of a LIBERO evaluation episode, part by part, and evaluation throughput with 1 or 2 workers.

Split (one process): closed-loop episodes of a WorldVLA checkpoint (default: the shipped one) through the code
`eval_libero.py` runs (`WorldVLAPolicy`, `libero_sim.env.make_env` with the policy's cameras only, `run_episode`),
timed from the outside (wrappers on the functions, the real code unchanged):

  reset        `reset_to_initial_state`: the scene rebuilt by `env.reset()` and the recorded state set;
  physics      `MjSim.step` of every control step, the 10 waiting steps included (MuJoCo integration);
  render       `MjSim.render`: the third-person camera at the model's resolution (offscreen OpenGL);
  VQ encode    `processor.encode_images` (each frame once);
  model        `model.generate_action_tokens`: prefill and decoding of every chunk;
  rest         the episode's time minus the parts above: robosuite's and LIBERO's Python per control step
               (controller, observables, reward and success checks), the policy's checks, history and
               un-normalisation, the protocol loop.

Throughput (`--workers`): `eval_libero.py` itself, as a subprocess, on the same episodes into a fresh folder, once
per `WORKERS:THREADS[:ENVS]` setting (parallel processes : torch threads of each : environments each process steps
in lockstep with batched queries, `--envs-per-worker`, default 1); episodes per hour from the wall time, model
loading included.

    python bench/episode.py                            # split of 2 episodes, then 1:2 and 2:1 on 4 episodes
    python bench/episode.py --workers none --episodes 1
    python bench/episode.py --workers 1:2,1:2:2,2:1 --throughput-trials 0,1,2,3   # batched environments too
    python bench/episode.py --json
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import libero_sim.env as libero_env  # noqa: E402  (before robosuite: it picks the rendering back end)
from worldvla_cli import HelpFormatter  # noqa: E402
from worldvla_results import read_jsonl  # noqa: E402

SHIPPED = ROOT / "checkpoints" / "worldvla-libero-spatial-64"
PARTS = ("reset", "physics", "render", "vq_encode", "model", "rest")
LABELS = {"reset": "reset", "physics": "physics", "render": "render", "vq_encode": "VQ encode", "model": "model", "rest": "rest (Python)"}


class EpisodeClock:
    """Accumulates the time spent in wrapped functions; a call made inside another timed call (the physics steps of
    a reset) counts for the outer one only, so the parts add up without overlap."""

    def __init__(self):
        self.seconds = dict.fromkeys(PARTS, 0.0)
        self.calls = dict.fromkeys(PARTS, 0)
        self._active = None
        self._restore = []

    def wrap(self, owner, name, part):
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            if self._active is not None:
                return original(*args, **kwargs)
            self._active = part
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[part] += time.perf_counter() - start
                self.calls[part] += 1
                self._active = None

        setattr(owner, name, timed)
        self._restore.append((owner, name, original))

    def remove(self):
        for owner, name, original in reversed(self._restore):
            setattr(owner, name, original)


def split_episodes(model, task_ids, trials, max_steps, threads):
    """Runs the episodes with every part timed; returns one record per episode."""
    import torch
    from robosuite.utils.binding_utils import MjSim
    from transformers.utils import logging as transformers_logging

    from eval_libero import LiberoWorldVLA, episode_seed
    from policy_worldvla import WorldVLAPolicy

    torch.set_num_threads(threads)
    transformers_logging.disable_progress_bar()  # the weight-loading bar
    suite = libero_env.get_suite("libero_spatial")
    worldvla = WorldVLAPolicy.from_pretrained(model, device="cpu")
    policy = LiberoWorldVLA(worldvla)
    records = []
    for task_id in task_ids:
        task = suite.get_task(task_id)
        initial_states = suite.get_task_init_states(task_id)
        env = libero_env.make_env(
            suite.get_task_bddl_file_path(task_id), camera_names=policy.camera_names, resolution=policy.image_size
        )
        try:
            for trial in trials:
                clock = EpisodeClock()
                clock.wrap(libero_env, "reset_to_initial_state", "reset")
                clock.wrap(MjSim, "step", "physics")
                clock.wrap(MjSim, "render", "render")
                clock.wrap(worldvla.processor, "encode_images", "vq_encode")
                clock.wrap(worldvla.model, "generate_action_tokens", "model")
                seed = episode_seed(0, task_id, trial)
                torch.manual_seed(seed)
                start = time.perf_counter()
                try:
                    result = libero_env.run_episode(
                        env, policy, initial_states[trial], task.language, max_steps or libero_env.MAX_POLICY_STEPS["libero_spatial"], seed=seed
                    )
                finally:
                    total = time.perf_counter() - start
                    clock.remove()
                seconds = dict(clock.seconds)
                seconds["rest"] = total - sum(seconds[part] for part in PARTS if part != "rest")
                records.append(
                    {
                        "task_id": task_id,
                        "trial": trial,
                        "success": result.success,
                        "policy_steps": result.policy_steps,
                        "control_steps": result.policy_steps + libero_env.NUM_WAIT_STEPS,
                        "queries": clock.calls["model"],
                        "frames_encoded": clock.calls["vq_encode"],
                        "physics_calls": clock.calls["physics"],
                        "render_calls": clock.calls["render"],
                        "seconds": {**seconds, "total": total},
                    }
                )
        finally:
            env.close()
    return records


def summarize_split(records):
    total = sum(record["seconds"]["total"] for record in records)
    steps = sum(record["control_steps"] for record in records)
    seconds = {part: sum(record["seconds"][part] for record in records) for part in PARTS}
    return {
        "episodes": len(records),
        "control_steps": steps,
        "seconds_per_episode": total / len(records),
        "episodes_per_hour": 3600 * len(records) / total,
        "ms_per_control_step": {part: 1e3 * seconds[part] / steps for part in PARTS} | {"total": 1e3 * total / steps},
        "share": {part: seconds[part] / total for part in PARTS},
    }


def throughput(model, setting, task_ids, trials, max_steps):
    """eval_libero.py with WORKERS:THREADS[:ENVS] on the episodes, into a fresh folder; episodes per hour of wall time."""
    workers, threads, envs = (list(map(int, setting.split(":"))) + [1])[:3]
    with tempfile.TemporaryDirectory() as output_dir:
        command = [
            sys.executable, str(ROOT / "eval_libero.py"), "--model", str(model), "--suite", "libero_spatial",
            "--tasks", ",".join(map(str, task_ids)), "--trials", ",".join(map(str, trials)) + ",",
            "--num-workers", str(workers), "--threads", str(threads), "--envs-per-worker", str(envs), "--device", "cpu",
            "--output-dir", output_dir,
        ]
        if max_steps:
            command += ["--max-steps", str(max_steps)]
        start = time.perf_counter()
        finished = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if finished.returncode != 0:
            raise SystemExit(f"eval_libero.py failed ({' '.join(command)}):\n{finished.stderr[-3000:]}")
        episodes = read_jsonl(Path(output_dir) / "episodes.jsonl")
    return {
        "workers": workers,
        "threads": threads,
        "envs_per_worker": envs,
        "episodes": len(episodes),
        "wall_s": wall,
        "episodes_per_hour": 3600 * len(episodes) / wall,
        "mean_episode_s": sum(episode["seconds"] for episode in episodes) / len(episodes),
    }


def print_tables(report):
    split = report["split"]
    if split:
        print(
            f"one episode, part by part: {split['episodes']} episode(s) of {report['model']}, {split['control_steps']} control "
            f"steps, {report['threads']} thread(s): {split['seconds_per_episode']:.1f} s per episode, "
            f"{split['episodes_per_hour']:.0f} episodes/hour in one process"
        )
        print("| part | ms per control step | share |")
        print("|---|---|---|")
        for part in PARTS:
            print(f"| {LABELS[part]} | {split['ms_per_control_step'][part]:.1f} | {split['share'][part]:.1%} |")
        print(f"| total | {split['ms_per_control_step']['total']:.1f} | 100% |")
    if report["throughput"]:
        print("\neval_libero.py on the same episodes (wall time, model loading included):")
        print("| workers | threads each | envs each | episodes | wall s | episodes/hour | mean episode s |")
        print("|---|---|---|---|---|---|---|")
        for run in report["throughput"]:
            print(
                f"| {run['workers']} | {run['threads']} | {run['envs_per_worker']} | {run['episodes']} | {run['wall_s']:.0f} | "
                f"{run['episodes_per_hour']:.0f} | {run['mean_episode_s']:.1f} |"
            )
        runs = report["throughput"]
        if len(runs) > 1:
            for run in runs[1:]:
                print(f"speed-up of {setting_name(run)} over {setting_name(runs[0])}: {run['episodes_per_hour'] / runs[0]['episodes_per_hour']:.2f}x")


def setting_name(run):
    return f"{run['workers']}:{run['threads']}:{run['envs_per_worker']}"


def parse_ids(spec, name):
    try:
        ids = [int(part) for part in spec.split(",") if part.strip()]
    except ValueError:
        raise SystemExit(f"{name} takes comma-separated integers, got {spec!r}") from None
    if not ids:
        raise SystemExit(f"{name} names nothing")
    return ids


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--model", default=str(SHIPPED), help="WorldVLA checkpoint folder or Hub id")
    parser.add_argument("--episodes", type=int, default=2, help="episodes timed part by part (task 0, states 0, 1, ...); 0: none")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads of the split")
    parser.add_argument("--workers", default="1:2,2:1", help="WORKERS:THREADS[:ENVS] settings of the throughput runs, or 'none'")
    parser.add_argument("--throughput-tasks", default="0,1", help="tasks of the throughput runs")
    parser.add_argument("--throughput-trials", default="0,1", help="initial states of each throughput task")
    parser.add_argument("--max-steps", type=int, default=None, help="policy-step limit (default: the protocol's 220)")
    parser.add_argument("--json", action="store_true", help="print one JSON line instead of tables")
    args = parser.parse_args()
    settings = [] if args.workers == "none" else args.workers.split(",")
    for setting in settings:
        if len(setting.split(":")) not in (2, 3) or not all(part.isdigit() and int(part) > 0 for part in setting.split(":")):
            parser.error(f"--workers takes WORKERS:THREADS[:ENVS] settings such as 1:2,2:1,1:2:2, got {setting!r}")
    if args.episodes < 0:
        parser.error("--episodes must be at least 0")
    records = split_episodes(args.model, [0], list(range(args.episodes)), args.max_steps, args.threads) if args.episodes else []
    report = {
        "model": args.model if args.model != str(SHIPPED) else "checkpoints/worldvla-libero-spatial-64",
        "threads": args.threads,
        "cpus": os.cpu_count(),
        "split": summarize_split(records) if records else None,
        "episodes": records,
        "throughput": [
            throughput(args.model, setting, parse_ids(args.throughput_tasks, "--throughput-tasks"), parse_ids(args.throughput_trials, "--throughput-trials"), args.max_steps)
            for setting in settings
        ],
    }
    if args.json:
        print(json.dumps(report))
    else:
        print_tables(report)


if __name__ == "__main__":
    main()
