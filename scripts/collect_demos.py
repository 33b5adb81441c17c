"""Collects scripted-expert demonstrations as LIBERO-format HDF5 files (one per task).

    python scripts/collect_demos.py --suite libero_spatial --output-dir data/libero_spatial_scripted \
        --resolution 256 --extra-random 20

The expert runs without cameras over the benchmark's initial states (and `--extra-random N`
random resets per task); each successful episode is then replayed in a camera env from the same
initial state to render `agentview_rgb` and `eye_in_hand_rgb` at `--resolution`, after checking
that the replay reproduces the recorded states. Only successful episodes are kept. Files are named
like the official ones (`<task_name>_demo.hdf5`); rerunning resumes them, skipping initial states
already collected. See `libero_sim/demos.py` for the layout.
"""

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from libero_sim.demos import DemoWriter, check_replay_matches, file_attributes, make_camera_env, replay_with_cameras  # noqa: E402
from libero_sim.env import MAX_POLICY_STEPS, SUITES, get_suite, make_env, parse_task_ids, run_episode  # noqa: E402
from libero_sim.expert import ScriptedExpert  # noqa: E402

logger = logging.getLogger("collect_demos")

RANDOM_TRIAL = -1  # the `trial` attribute of demos from random resets


def collect_task(suite, task_id, args):
    """Collects one task's demos; returns (kept, attempted)."""
    from tqdm import tqdm

    task = suite.get_task(task_id)
    bddl_file = suite.get_task_bddl_file_path(task_id)
    writer = DemoWriter(
        Path(args.output_dir) / f"{task.name}_demo.hdf5",
        file_attributes(task, bddl_file, args.resolution),
        compression=args.compression,
    )
    collected = writer.collected_trials()
    initial_states = suite.get_task_init_states(task_id)
    fixed_trials = [t for t in range(min(args.trials, len(initial_states))) if t not in collected]
    extra = max(0, args.extra_random - collected.count(RANDOM_TRIAL))

    fast_env = make_env(bddl_file, camera_names=())
    camera_env = make_camera_env(bddl_file, args.resolution)
    expert = ScriptedExpert(fast_env)
    random_states = np.random.default_rng([args.seed, task_id])
    kept = attempted = 0
    jobs = [(trial, initial_states[trial]) for trial in fixed_trials] + [(RANDOM_TRIAL, None)] * extra
    try:
        for trial, initial_state in tqdm(jobs, desc=task.name[:40], unit="episode"):
            if initial_state is None:
                # A fresh random placement from the task's BDDL regions.
                np.random.seed(int(random_states.integers(2**31)))
                fast_env.reset()
                initial_state = fast_env.get_sim_state()
            attempted += 1
            episode = run_episode(fast_env, expert, initial_state, task.language, MAX_POLICY_STEPS[suite.name], record=True)
            if not episode.success:
                logger.info("Task %d trial %d: expert failed, not kept", task_id, trial)
                continue
            arrays = replay_with_cameras(camera_env, episode)
            check_replay_matches(episode.states, arrays["states"])
            writer.append(arrays, initial_state, trial)
            kept += 1
    finally:
        fast_env.close()
        camera_env.close()
        total = writer.finalize()
    logger.info("Task %d %s: kept %d of %d new episodes, %d demos in the file", task_id, task.name, kept, attempted, total)
    return kept, attempted


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", choices=SUITES, required=True)
    parser.add_argument("--tasks", default="all", help="comma-separated task ids, or 'all'")
    parser.add_argument("--trials", type=int, default=50, help="how many of the benchmark's initial states")
    parser.add_argument("--extra-random", type=int, default=0, help="additional episodes from random resets per task")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--resolution", type=int, choices=(128, 256, 512), default=256)
    parser.add_argument("--compression", choices=("gzip", "lzf"), default="gzip")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random resets")
    return parser.parse_args(argv)


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    suite = get_suite(args.suite)
    try:
        task_ids = parse_task_ids(args.tasks, suite.n_tasks)
    except ValueError as error:
        raise SystemExit(str(error)) from None
    totals = [collect_task(suite, task_id, args) for task_id in task_ids]
    kept, attempted = map(sum, zip(*totals))
    logger.info("Kept %d successful demos of %d episodes in %s", kept, attempted, args.output_dir)


if __name__ == "__main__":
    main()
