"""Re-renders LIBERO-format demonstrations in the simulator at a native resolution (the release's data recipe).

    python scripts/regenerate_demos.py --suite libero_spatial --input-dir LIBERO/datasets/libero_spatial \\
        --output-dir data/libero_spatial_256_regenerated --resolution 256 --workers 2

The official LIBERO files store 128-px frames (upside-down); resizing them to 256 px blurs what a 256-px
evaluation renders sharply. As the authors' data pipeline does, each demo is instead replayed from its first
state: `NUM_WAIT_STEPS` settling steps with the gripper open (objects start slightly above the table), then its
actions with the no-op steps left out (`worldvla_data.kept_steps`, the rule training applies), rendering the
third-person and wrist cameras at `--resolution` before each action. A replay that does not reach the task's
success is not kept, and one that succeeds stops there. The regenerated demos hold the actions executed (no
settling rows: demo attribute `settling_steps`) and the rest of the layout of `libero_sim/demos.py`; perturbed
demos (`collect_demos.py --perturb`) keep their `expert_actions` on the same steps.

Demos collected here carry the seed of their scene's reset (`reset_seed`), which places the fixtures the
MuJoCo state does not hold; official demos do not, so their fixtures stand where an unseeded reset puts them.

Task files are matched to the installed suite by name (`<task_name>_demo.hdf5`) and processed in parallel
(`--workers`, one task per process). Writing is crash-safe and resumable: each kept demo records its source
(`source_demo`), each failed one is listed in `<task_name>_demo.regeneration.json`, and a rerun skips both.
`<output-dir>/regeneration.json` sums up what was kept per task.
"""

import argparse
import json
import logging
import multiprocessing
import sys
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from libero_sim.demos import DemoRecorder, DemoWriter, file_attributes, make_camera_env  # noqa: E402
from libero_sim.env import (  # noqa: E402
    CLASSIC_SUITES,
    NUM_WAIT_STEPS,
    THIRD_PERSON_CAMERA,
    WAIT_ACTION,
    WRIST_CAMERA,
    get_suite,
    reset_to_initial_state,
)
from worldvla_cli import HelpFormatter, configure_logging  # noqa: E402
from worldvla_data import EXPERT_ACTIONS, LiberoDataError, check_actions, demo_number, kept_steps, open_libero_file  # noqa: E402
from worldvla_results import write_json_atomically  # noqa: E402

logger = logging.getLogger("regenerate_demos")

CAMERAS = {"agentview": (THIRD_PERSON_CAMERA,), "agentview,eye_in_hand": (THIRD_PERSON_CAMERA, WRIST_CAMERA)}


def failures_path(output_file):
    return Path(str(output_file).removesuffix(".hdf5") + ".regeneration.json")


def read_source_demo(group, where):
    """(first state, actions, expert actions or None, reset seed or None) of a demo group, validated like training
    input (`worldvla_data.check_actions`)."""
    missing = [key for key in ("actions", "states") if key not in group]
    if missing:
        raise LiberoDataError(f"{where}: missing {missing} (a replay needs the actions and the first state)")
    actions = np.asarray(group["actions"][()], dtype=np.float64)
    check_actions(actions, where)
    expert_actions = None
    if EXPERT_ACTIONS in group:
        expert_actions = np.asarray(group[EXPERT_ACTIONS][()], dtype=np.float64)
        check_actions(expert_actions, where, EXPERT_ACTIONS)
    reset_seed = group.attrs.get("reset_seed")
    return group["states"][0], actions, expert_actions, None if reset_seed is None else int(reset_seed)


def replay_without_noops(recorder, first_state, actions, expert_actions, reset_seed):
    """Settles the scene, executes the kept actions until success; returns the demo's arrays or None."""
    keep = kept_steps(actions, actions if expert_actions is None else expert_actions)
    reset_to_initial_state(recorder, first_state, reset_seed)
    recorder.step_unrecorded(WAIT_ACTION, NUM_WAIT_STEPS)
    steps = np.flatnonzero(keep)
    for count, step in enumerate(steps, start=1):
        _, _, done, _ = recorder.step(actions[step])
        if done:
            arrays = recorder.arrays()
            if expert_actions is not None:
                arrays[EXPERT_ACTIONS] = np.asarray(expert_actions[steps[:count]], dtype=np.float64)
            return arrays
    return None


def refuse_other_rendering(output_file, resolution, cameras):
    """A file already regenerated with other cameras or another resolution is not appended to."""
    if not output_file.exists():
        return
    with h5py.File(output_file, "r") as file:
        existing = json.loads(file["data"].attrs["env_args"])["env_kwargs"]
    existing = (existing["camera_names"], existing["camera_heights"])
    if existing != (list(CAMERAS[cameras]), resolution):
        raise SystemExit(
            f"{output_file} holds demos rendered by cameras {existing[0]} at {existing[1]} px: "
            "regenerate into another --output-dir"
        )


def regenerate_task(job):
    """Regenerates one task file; returns its summary row."""
    from tqdm import tqdm

    configure_logging()
    suite_name, task_id, source_file, output_dir, resolution, cameras = job
    suite = get_suite(suite_name)
    task = suite.get_task(task_id)
    bddl_file = suite.get_task_bddl_file_path(task_id)
    output_file = Path(output_dir) / f"{task.name}_demo.hdf5"
    writer = DemoWriter(output_file, file_attributes(task, bddl_file, resolution, CAMERAS[cameras]))
    failures_file = failures_path(output_file)
    failures = json.loads(failures_file.read_text()) if failures_file.exists() else {}
    done = {name.decode() if isinstance(name, bytes) else str(name) for name in writer.collected_attributes("source_demo")}
    with open_libero_file(source_file) as source:  # every pending demo checked before any is rendered
        names = sorted((name for name in source["data"] if demo_number(name) is not None), key=demo_number)
        pending = {
            name: (read_source_demo(source["data"][name], f"{source_file}, data/{name}"), dict(source["data"][name].attrs))
            for name in names if name not in done and name not in failures
        }
    env = make_camera_env(bddl_file, resolution, CAMERAS[cameras]) if pending else None
    try:
        for name, ((first_state, actions, expert_actions, reset_seed), source_attributes) in tqdm(
            pending.items(), desc=task.name[:40], unit="demo"
        ):
            arrays = replay_without_noops(DemoRecorder(env), first_state, actions, expert_actions, reset_seed)
            if arrays is None:
                failures[name] = "the replay did not reach the task's success"
                write_json_atomically(failures_file, failures)
                logger.info("Task %d %s: replay failed, not kept", task_id, name)
                continue
            extra = {"source_demo": name, "settling_steps": NUM_WAIT_STEPS}
            for key in ("random_reset", "perturbation_rate"):
                if key in source_attributes:
                    extra[key] = source_attributes[key]
            writer.append(arrays, first_state, int(source_attributes.get("trial", -1)), reset_seed=reset_seed, **extra)
    finally:
        if env is not None:
            env.close()
        total = writer.finalize()
    row = {"task_id": task_id, "task": task.name, "source_demos": len(names), "kept": total, "failed": len(failures)}
    logger.info("Task %d %s: %d of %d demos kept", task_id, task.name, total, len(names))
    return row


def task_jobs(args):
    """One job per task of the suite whose file is in --input-dir."""
    suite = get_suite(args.suite)
    jobs = []
    for task_id in range(suite.n_tasks):
        source_file = Path(args.input_dir) / f"{suite.get_task(task_id).name}_demo.hdf5"
        if source_file.exists():
            refuse_other_rendering(Path(args.output_dir) / source_file.name, args.resolution, args.cameras)
            jobs.append((args.suite, task_id, str(source_file), args.output_dir, args.resolution, args.cameras))
    if not jobs:
        raise SystemExit(f"{args.input_dir}: no <task_name>_demo.hdf5 file of a {args.suite} task")
    return jobs


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--suite", choices=CLASSIC_SUITES, required=True, help="the suite the demos belong to")
    parser.add_argument("--input-dir", required=True, help="LIBERO-format .hdf5 files, one per task")
    parser.add_argument("--output-dir", required=True, help="where the regenerated files go (not --input-dir)")
    parser.add_argument("--resolution", type=int, choices=(64, 128, 256, 512), default=256, help="camera height and width, rendered natively")
    parser.add_argument("--cameras", choices=tuple(CAMERAS), default="agentview,eye_in_hand")
    parser.add_argument("--workers", type=int, default=1, help="task files regenerated in parallel processes")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if Path(args.input_dir).resolve() == Path(args.output_dir).resolve():
        parser.error("--output-dir must differ from --input-dir: the regenerated files have the same names")
    return args


def main(argv=None):
    configure_logging()
    args = parse_args(argv)
    jobs = task_jobs(args)
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    try:
        if args.workers == 1 or len(jobs) == 1:
            rows = [regenerate_task(job) for job in jobs]
        else:
            # robosuite and OpenGL state must not be forked
            with multiprocessing.get_context("spawn").Pool(min(args.workers, len(jobs))) as pool:
                rows = pool.map(regenerate_task, jobs, chunksize=1)
    except LiberoDataError as error:
        raise SystemExit(str(error)) from None
    summary = {"suite": args.suite, "input_dir": str(args.input_dir), "resolution": args.resolution,
               "cameras": args.cameras, "tasks": rows}
    write_json_atomically(Path(args.output_dir) / "regeneration.json", summary)
    logger.info("Regenerated demos kept per task:\n%s", "\n".join(
        f"  task {row['task_id']}: {row['kept']} of {row['source_demos']}  {row['task']}" for row in rows))
    return summary


if __name__ == "__main__":
    main()
