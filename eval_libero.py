"""Closed-loop LIBERO evaluation of WorldVLA (or of the scripted expert) with the paper's protocol.

    python eval_libero.py --model PATH_OR_HUB_ID --suite libero_spatial --output-dir runs/eval/spatial
    python eval_libero.py --policy scripted --suite libero_spatial --trials 5 --output-dir runs/eval/expert
    python eval_libero.py --merge runs/eval/a runs/eval/b --output-dir runs/eval/all   # split runs, one summary
    python eval_libero.py --model M --suite libero_spatial --perturbations all --output-dir runs/eval/pro  # LIBERO-PRO

Protocol (WorldVLA, section 6 of the reference notes; implemented in `libero_sim.env.Episode`): the
benchmark's fixed initial states (`--trials`), 10 waiting steps with [0,0,0,0,0,0,-1], at most
220/280/300/520/400 policy steps for spatial/object/goal/10/90; the third-person camera rendered at
`model.config.image_size` and turned upright (with the wrist camera's for a `wrist_camera` model); `WorldVLAPolicy` (policy_worldvla.py) keeps the history and
executes each predicted chunk open loop; success is the environment's `done`. Actions are sent as decoded.

Outputs in `--output-dir`: `settings.json` (what decides outcomes: model, revision, un-normalisation key,
suite, seed, step limit, ...; rerunning into the folder with other settings is an error), `episodes.jsonl` (one
line per finished episode, appended with a single fsync'd write; a rerun skips finished episodes and retries
those that raised), `summary.json`, `results.md` (per-task table with Wilson 95% intervals), and with
`--save-video` one mp4 per episode in `videos/`. The headline success rate counts an episode that raised as a
failure, as the paper does; such episodes are listed apart too. The model is loaded before the first episode,
so a bad path or --unnorm-key stops the run at once with a nonzero exit.

Throughput: `--num-workers N` runs episodes in N processes, each loading the model; `--envs-per-worker M` has
each process step M environments of one task in lockstep (M initial states at a time), the queries due at a step
batched into one forward: on a GPU, M episodes for about the price of one. Outcomes depend on neither: every
frame of every episode is the same as when the episodes run one by one (tested).

Robustness (LIBERO-PRO, whose perturbed suites the installed LIBERO package ships): `--suite libero_spatial_swap`
(object positions), `_object` (object appearance), `_lan` (paraphrased instructions) or `_task` (another task in the
same scene) evaluates one variant with its base suite's protocol and step limit; the instruction given is the one
the variant's BDDL file writes where it rewrote it (`libero_sim.env.task_instruction`), recorded in every episode.
`--perturbations swap,lan` (or `all`) runs the base suite and those variants into `<output-dir>/<suite>/` and writes
`robustness.json` and `robustness.md`, the base suite beside its variants with the change in points.
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
    PERTURBATIONS,
    PERTURBED_BASE_SUITES,
    CLASSIC_SUITES,
    PERTURBED_SUITES,
    SUITES,
    THIRD_PERSON_CAMERA,
    WRIST_CAMERA,
    Episode,
    get_suite,
    make_env,
    max_policy_steps,
    parse_task_ids,
    task_instruction,
    third_person_frame,
    wrist_frame,
)
from policy_worldvla import GRIPPER_HOLD_DIRECTIONS, missing_local_checkpoint, select_actions
from worldvla_cli import HelpFormatter, configure_logging
from worldvla_results import append_jsonl, read_jsonl, write_text_atomically

logger = logging.getLogger("eval_libero")

EPISODES_FILE = "episodes.jsonl"
SUMMARY_FILE = "summary.json"
SETTINGS_FILE = "settings.json"
RESULTS_FILE = "results.md"
# The scripted expert needs no camera; its videos are rendered at this size.
SCRIPTED_VIDEO_RESOLUTION = 256
VIDEO_FPS = 20


# Policies ---------------------------------------------------------------------------------------
class LiberoWorldVLA:
    """A `WorldVLAPolicy` fed with the upright third-person frame of each LIBERO observation, and the wrist
    camera's for a model with `wrist_camera`."""

    def __init__(self, policy):
        self.policy = policy
        self.image_size = policy.image_size
        self.camera_names = (THIRD_PERSON_CAMERA, WRIST_CAMERA) if policy.wrist_camera else (THIRD_PERSON_CAMERA,)

    def for_env(self, env):
        return LiberoWorldVLA(self.policy.for_another_env())

    def reset(self):
        self.policy.reset()

    def select_action(self, observation, instruction):
        wrist = wrist_frame(observation) if self.policy.wrist_camera else None
        return self.policy.select_action(third_person_frame(observation), instruction, wrist_frame=wrist)

    @staticmethod
    def select_actions(env_policies, observations, instruction):
        """One action per environment; the chunks due at this step are predicted in one batched forward."""
        policies = [env_policy.policy for env_policy in env_policies]
        frames = [third_person_frame(observation) for observation in observations]
        wrists = [wrist_frame(observation) for observation in observations] if policies[0].wrist_camera else None
        return select_actions(policies, frames, instruction, wrist_frames=wrists)


class ScriptedPolicy:
    """The privileged-state expert; it needs the env, so one is made per environment."""

    image_size = None

    def for_env(self, env):
        from libero_sim.expert import ScriptedExpert

        return ScriptedExpert(env)

    @staticmethod
    def select_actions(env_policies, observations, instruction):
        return [env_policy.select_action(observation, instruction) for env_policy, observation in zip(env_policies, observations)]


def load_policy(config):
    """The policy of `config`; a model that cannot be loaded, or an --unnorm-key it lacks, stops the run."""
    if config["policy"] == "scripted":
        return ScriptedPolicy()
    import torch

    from policy_worldvla import WorldVLAPolicy

    if config.get("threads"):
        torch.set_num_threads(config["threads"])
    try:
        policy = WorldVLAPolicy.from_pretrained(
            config["model"],
            revision=config["revision"],
            device=config["device"],
            unnorm_key=config["unnorm_key"],
            n_action_steps=config["n_action_steps"],
            decoding=config["decoding"],
            gripper_hold=1 if config.get("gripper_hold") is None else config["gripper_hold"],
            gripper_hold_direction=config.get("gripper_hold_direction") or "both",
            dtype=getattr(torch, config["dtype"]),
            **({} if config.get("action_bin_window") is None else {"action_bin_window": config["action_bin_window"]}),
        )
    except OSError as error:
        raise SystemExit(f"Could not load the model {config['model']!r} (revision {config['revision']}): {error}") from error
    except ValueError as error:
        raise SystemExit(f"The model {config['model']!r} cannot run as configured: {error}") from error
    return LiberoWorldVLA(policy)


# Episodes ---------------------------------------------------------------------------------------
def episode_seed(seed, task_id, trial):
    """A per-episode seed that does not depend on which worker runs the episode."""
    return (seed * 1_000_003 + task_id * 1_009 + trial) % (2**32)


def seed_episode(seed, uses_torch):
    """Seeds numpy (the scene's reset) and, for a model, torch, before an episode."""
    np.random.seed(seed)
    if uses_torch:
        import torch

        torch.manual_seed(seed)


def run_task(config, policy, task_id, trials, report):
    """Runs `trials` of one task and calls `report(record)` after each episode: in groups of
    `config["envs_per_worker"]` environments stepped in lockstep, their policy queries batched."""
    suite = get_suite(config["suite"])
    instruction = task_instruction(config["suite"], task_id)
    task = {"suite": config["suite"], "task_id": task_id, "task_name": suite.get_task(task_id).name, "instruction": instruction}
    initial_states = suite.get_task_init_states(task_id)
    if policy.image_size is not None:
        camera_names, resolution = policy.camera_names, policy.image_size
    elif config["save_video"]:
        camera_names, resolution = (THIRD_PERSON_CAMERA,), SCRIPTED_VIDEO_RESOLUTION
    else:
        camera_names, resolution = (), SCRIPTED_VIDEO_RESOLUTION
    envs = []
    try:
        for _ in range(min(config.get("envs_per_worker", 1), len(trials))):
            envs.append(make_env(suite.get_task_bddl_file_path(task_id), camera_names=camera_names, resolution=resolution))
        env_policies = [policy.for_env(env) for env in envs]
        for first in range(0, len(trials), len(envs)):
            group = trials[first : first + len(envs)]
            run_in_lockstep(config, policy, envs, env_policies, task, [initial_states[trial] for trial in group], group, report)
    finally:
        for env in envs:
            env.close()


def run_in_lockstep(config, policy, envs, env_policies, task, initial_states, trials, report):
    """One episode per trial, environment i running trials[i]; all step together until each is finished.

    An episode that raises is recorded as an error and the others go on; a batched query that raises
    fails the episodes it was for. `seconds` is the wall time from the group's start to the episode's end."""
    start = time.time()
    max_steps = config["max_steps"] or max_policy_steps(config["suite"])
    records = [dict(task, trial=trial) for trial in trials]
    episodes = [None] * len(trials)

    def finish(i, error=None):
        episode, record = episodes[i], records[i]
        if error is None:
            record.update(status="success" if episode.result.success else "failure", success=episode.result.success)
            record.update(steps=episode.result.policy_steps, error=None)
            if config["save_video"]:
                record["video"] = write_video(config["output_dir"], record, episode.result.video_frames)
        else:
            record.update(status="error", success=False, steps=None, error=error)
        record["seconds"] = round(time.time() - start, 2)
        episodes[i] = None
        report(record)

    for i, (env, env_policy, initial_state) in enumerate(zip(envs, env_policies, initial_states)):
        try:
            seed = episode_seed(config["seed"], task["task_id"], trials[i])
            seed_episode(seed, uses_torch=config["policy"] == "worldvla")
            episodes[i] = Episode(env, initial_state, max_steps, record=config["save_video"], seed=seed)
            env_policy.reset()
        except Exception:
            finish(i, traceback.format_exc())
    while active := [i for i, episode in enumerate(episodes) if episode is not None]:
        try:
            actions = policy.select_actions([env_policies[i] for i in active], [episodes[i].observation for i in active], task["instruction"])
        except Exception:
            error = traceback.format_exc()
            for i in active:
                finish(i, error)
            continue
        for i, action in zip(active, actions):
            try:
                episodes[i].step(action)
            except Exception:
                finish(i, traceback.format_exc())
                continue
            if episodes[i].finished:
                finish(i)


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
def latest_by_episode(records):
    """The last record of each (task_id, trial)."""
    return {(record["task_id"], record["trial"]): record for record in records}


def summarize(records, settings, task_names):
    """Per-task and per-suite counts. The headline success rate counts an episode that raised as a failure, as
    the paper does; errors are also counted apart, and `success_rate_judged` leaves them out."""
    latest = latest_by_episode(records)
    tasks = {}
    for task_id, task_name in task_names.items():
        episodes = [r for (t, _), r in latest.items() if t == task_id]
        successes = sum(r["status"] == "success" for r in episodes)
        failures = sum(r["status"] == "failure" for r in episodes)
        errors = sum(r["status"] == "error" for r in episodes)
        tasks[str(task_id)] = {
            "task_name": task_name,
            "instruction": next((r["instruction"] for r in episodes if r.get("instruction")), None),
            "episodes": len(episodes),
            "successes": successes,
            "failures": failures,
            "errors": errors,
            "success_rate": successes / len(episodes) if episodes else None,
            "success_rate_judged": successes / (successes + failures) if successes + failures else None,
            "wilson_95": wilson_interval(successes, len(episodes)),
            "error_trials": sorted(r["trial"] for r in episodes if r["status"] == "error"),
            "mean_seconds": float(np.mean([r["seconds"] for r in episodes])) if episodes else None,
        }
    successes = sum(t["successes"] for t in tasks.values())
    episodes = sum(t["episodes"] for t in tasks.values())
    errors = sum(t["errors"] for t in tasks.values())
    return {
        "settings": settings,
        "suite": settings["suite"],
        "success_rate": successes / episodes if episodes else None,
        "success_rate_judged": successes / (episodes - errors) if episodes - errors else None,
        "wilson_95": wilson_interval(successes, episodes),
        "successes": successes,
        "episodes": episodes,
        "errors": errors,
        "tasks": tasks,
    }


def wilson_interval(successes, trials, z=1.959964):
    """Wilson score interval of a success rate (95% by default): [low, high], None without trials."""
    if not trials:
        return None
    rate = successes / trials
    centre = (rate + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * np.sqrt(rate * (1 - rate) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return [float(max(0.0, centre - half)), float(min(1.0, centre + half))]


def results_table(summary):
    def rate(value):
        return "-" if value is None else f"{100 * value:.1f}%"

    def interval(bounds):
        return "-" if bounds is None else f"{100 * bounds[0]:.0f}-{100 * bounds[1]:.0f}%"

    settings = summary["settings"]
    lines = [f"# {summary['suite']}: {settings['policy']} policy", ""]
    lines += [f"- {name}: `{value}`" for name, value in settings.items() if value is not None and name != "suite"]
    lines += [
        "",
        "Success rate: episodes that raised count as failures (the paper's rule); they are also listed apart.",
        "",
        "| task | name | success rate | 95% interval | successes | failures | errors | mean s/episode |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for task_id, task in summary["tasks"].items():
        seconds = "-" if task["mean_seconds"] is None else f"{task['mean_seconds']:.1f}"
        lines.append(
            f"| {task_id} | {task['task_name']} | {rate(task['success_rate'])} | {interval(task['wilson_95'])} "
            f"| {task['successes']} | {task['failures']} | {task['errors']} | {seconds} |"
        )
    lines.append(
        f"| **suite** | {summary['suite']} | **{rate(summary['success_rate'])}** | {interval(summary['wilson_95'])} "
        f"| {summary['successes']} | {summary['episodes'] - summary['successes'] - summary['errors']} | {summary['errors']} | |"
    )
    errored = {task_id: task["error_trials"] for task_id, task in summary["tasks"].items() if task["error_trials"]}
    if errored:
        lines += ["", "Episodes that raised (task: trials): " + "; ".join(f"{t}: {v}" for t, v in errored.items())]
    if summary["suite"] in PERTURBED_SUITES:
        lines += ["", "Instructions given (LIBERO-PRO's, where the perturbation rewrote them):", "", "| task | instruction |", "|---|---|"]
        lines += [f"| {task_id} | {task['instruction']} |" for task_id, task in summary["tasks"].items()]
    return "\n".join(lines) + "\n"


# Robustness: a classic suite beside its LIBERO-PRO variants -------------------------------------
ROBUSTNESS_JSON = "robustness.json"
ROBUSTNESS_TABLE = "robustness.md"


def parse_perturbations(spec):
    """Perturbation names from "swap,lan" or "all"."""
    names = list(PERTURBATIONS) if spec.strip() == "all" else [part.strip() for part in spec.split(",") if part.strip()]
    unknown = [name for name in names if name not in PERTURBATIONS]
    if unknown or not names:
        unknown_text = f" ({', '.join(map(repr, unknown))} unknown)" if unknown else ""
        raise ValueError(
            f"Bad --perturbations {spec!r}{unknown_text}: comma-separated of {', '.join(PERTURBATIONS)}, or 'all' "
            "(LIBERO-PRO's environment perturbation ships no initial states in the installed package)"
        )
    return list(dict.fromkeys(names))


def robustness_summary(base, summaries):
    """One row per suite (the base first) from each suite's summary, with the change from the base in points."""
    base_rate = summaries[base]["success_rate"]
    rows = []
    for suite, summary in summaries.items():
        perturbation = None if suite == base else suite[len(base) + 1 :]
        rate = summary["success_rate"]
        rows.append(
            {
                "suite": suite,
                "perturbation": perturbation,
                "what_changes": PERTURBATIONS.get(perturbation, "nothing (the benchmark)"),
                "success_rate": rate,
                "wilson_95": summary["wilson_95"],
                "successes": summary["successes"],
                "episodes": summary["episodes"],
                "errors": summary["errors"],
                "change_from_base_points": None if rate is None or base_rate is None else 100 * (rate - base_rate),
            }
        )
    settings = {key: value for key, value in summaries[base]["settings"].items() if key != "suite"}
    return {"base_suite": base, "settings": settings, "suites": rows}


def robustness_table(robustness):
    def rate(value):
        return "-" if value is None else f"{100 * value:.1f}%"

    lines = [f"# Robustness: {robustness['base_suite']} and its LIBERO-PRO variants", ""]
    lines += [f"- {name}: `{value}`" for name, value in robustness["settings"].items() if value is not None]
    lines += [
        "",
        "| suite | what changes | success rate | 95% interval | successes / episodes | errors | change (points) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in robustness["suites"]:
        interval = "-" if row["wilson_95"] is None else f"{100 * row['wilson_95'][0]:.0f}-{100 * row['wilson_95'][1]:.0f}%"
        change = "" if row["perturbation"] is None or row["change_from_base_points"] is None else f"{row['change_from_base_points']:+.1f}"
        lines.append(
            f"| {row['suite']} | {row['what_changes']} | {rate(row['success_rate'])} | {interval} "
            f"| {row['successes']} / {row['episodes']} | {row['errors']} | {change} |"
        )
    return "\n".join(lines) + "\n"


def evaluate_robustness(config, perturbations):
    """The evaluation of `config` on its suite and on each perturbed variant, each into `<output-dir>/<suite>`
    (resumable like a single run), then the robustness table of all of them in `<output-dir>`."""
    base, output_dir = config["suite"], Path(config["output_dir"])
    summaries = {}
    for suite in [base] + [f"{base}_{name}" for name in perturbations]:
        logger.info("Evaluating %s", suite)
        summaries[suite], _ = evaluate(dict(config, suite=suite, output_dir=str(output_dir / suite)))
    robustness = robustness_summary(base, summaries)
    write_text_atomically(output_dir / ROBUSTNESS_JSON, json.dumps(robustness, indent=2) + "\n")
    table = robustness_table(robustness)
    write_text_atomically(output_dir / ROBUSTNESS_TABLE, table)
    return robustness, table


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


# What decides an episode's outcome: a results folder holds episodes of one set of these only.
OUTCOME_SETTINGS = (
    "policy", "model", "revision", "unnorm_key", "suite", "seed", "max_steps", "n_action_steps", "decoding", "dtype",
    "action_bin_window", "gripper_hold", "gripper_hold_direction",
)
# A model's settings without one of these (results written before it existed) mean its default.
MODEL_SETTING_DEFAULTS = {"action_bin_window": 1, "gripper_hold": 1, "gripper_hold_direction": "both"}


def recorded_setting(settings, name):
    if name in settings or settings.get("policy") != "worldvla":
        return settings.get(name)
    return MODEL_SETTING_DEFAULTS.get(name)


def parse_trials(spec, num_states):
    """Initial-state ids from "N" (the first N), or ids and ranges such as "40-49" or "0,5,7" (a single id: "7,")."""
    spec = str(spec).strip()
    try:
        if spec.isdigit():
            trials = list(range(int(spec)))
        else:
            trials = []
            for part in filter(None, (p.strip() for p in spec.split(","))):
                first, _, last = part.partition("-")
                trials += list(range(int(first), int(last or first) + 1))
    except ValueError:
        raise ValueError(f"Bad --trials {spec!r}: a count N, or ids and ranges such as 40-49 or 0,5,7") from None
    if not trials:
        raise ValueError(f"--trials {spec!r} names no initial state")
    outside = [t for t in trials if not 0 <= t < num_states]
    if outside:
        raise ValueError(f"--trials {spec!r}: initial states {outside[:5]} do not exist (the benchmark has 0 to {num_states - 1})")
    return sorted(set(trials))


def outcome_settings(config):
    """The settings recorded with the results: what decides outcomes plus how the run was made."""
    settings = {name: config.get(name) for name in OUTCOME_SETTINGS}
    if config["policy"] == "worldvla":
        settings.update(
            unnorm_key=config["resolved_unnorm_key"],
            model_resolved=config.get("model_resolved"),
            max_steps=config["max_steps"],
        )
    settings["max_policy_steps"] = config["max_steps"] or max_policy_steps(config["suite"])
    settings["device"] = config.get("device")
    settings["rendering"] = os.environ.get("MUJOCO_GL")
    settings["envs_per_worker"] = config.get("envs_per_worker", 1)
    return settings


def check_settings(output_dir, settings):
    """Records the settings in a new results folder; a folder of other settings is an error naming them."""
    path = output_dir / SETTINGS_FILE
    if path.exists():
        recorded = json.loads(path.read_text())
        different = {
            k: (recorded_setting(recorded, k), recorded_setting(settings, k))
            for k in OUTCOME_SETTINGS
            if recorded_setting(recorded, k) != recorded_setting(settings, k)
        }
        if different:
            raise SystemExit(
                f"{output_dir} holds episodes run with other settings {different} (recorded, now): use another "
                "--output-dir, or the recorded settings to resume"
            )
    else:
        write_text_atomically(path, json.dumps(settings, indent=2) + "\n")


def evaluate(config):
    output_dir = Path(config["output_dir"])
    suite = get_suite(config["suite"])
    task_ids = parse_task_ids(config["tasks"], suite.n_tasks)
    num_states = min(len(suite.get_task_init_states(t)) for t in task_ids)
    trials = parse_trials(config["trials"], num_states)
    task_names = {task_id: suite.get_task(task_id).name for task_id in task_ids}
    # The policy is loaded before any episode: a bad model path or --unnorm-key stops here with a nonzero exit.
    policy = load_policy(config)
    if config["policy"] == "worldvla":
        config["resolved_unnorm_key"] = policy.policy.unnorm_key
        config["model_resolved"] = getattr(policy.policy.model.config, "_name_or_path", None)
        config["action_bin_window"] = getattr(policy.policy.model.config, "action_bin_window", 1)
        config["gripper_hold"] = policy.policy.gripper_hold
        config["gripper_hold_direction"] = policy.policy.gripper_hold_direction
    settings = outcome_settings(config)
    output_dir.mkdir(parents=True, exist_ok=True)
    check_settings(output_dir, settings)
    episodes_path = output_dir / EPISODES_FILE

    records = read_jsonl(episodes_path, "episode")
    done = {key for key, r in latest_by_episode(records).items() if r["status"] in ("success", "failure")}
    wanted = {(t, trial) for t in task_ids for trial in trials}
    pending = sorted(wanted - done)
    logger.info("%d episodes to run, %d already finished in %s", len(pending), len(wanted & done), episodes_path)

    from tqdm import tqdm

    progress = tqdm(total=len(pending), desc=config["suite"], unit="episode")

    def report(record):
        append_jsonl(episodes_path, record)
        records.append(record)
        if record["status"] == "error":
            logger.error("Task %d trial %d raised:\n%s", record["task_id"], record["trial"], record["error"])
        finished = [r for k, r in latest_by_episode(records).items() if k in wanted]
        rate = np.mean([r["success"] for r in finished]) if finished else 0.0
        progress.set_postfix(success=f"{100 * rate:.1f}%")
        progress.update(1)

    units = work_units(pending, config["num_workers"])
    if config["num_workers"] == 1 or len(units) <= 1:
        for task_id, unit_trials in units:
            run_task(config, policy, task_id, unit_trials, report)
    else:
        del policy  # each worker loads its own
        run_in_workers(config, units, report)
    progress.close()

    relevant = [r for r in records if (r["task_id"], r["trial"]) in wanted]
    return write_summary(output_dir, relevant, settings, task_names)


def write_summary(output_dir, records, settings, task_names):
    summary = summarize(records, settings, task_names)
    write_text_atomically(output_dir / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
    table = results_table(summary)
    write_text_atomically(output_dir / RESULTS_FILE, table)
    return summary, table


def merge_results(folders, output_dir):
    """One summary of several results folders of the same settings (an evaluation split over machines)."""
    settings, records, task_names = None, [], {}
    for folder in map(Path, folders):
        path = folder / SETTINGS_FILE
        if not path.is_file():
            raise SystemExit(f"{folder} is not a results folder of eval_libero.py (no {SETTINGS_FILE})")
        these = json.loads(path.read_text())
        if settings is None:
            settings = these
        different = {
            k: (recorded_setting(settings, k), recorded_setting(these, k))
            for k in OUTCOME_SETTINGS
            if recorded_setting(settings, k) != recorded_setting(these, k)
        }
        if different:
            raise SystemExit(f"{folder} was run with other settings than {folders[0]}: {different}")
        folder_records = read_jsonl(folder / EPISODES_FILE, "episode")
        records += folder_records
        task_names.update({r["task_id"]: r["task_name"] for r in folder_records})
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    check_settings(output_dir, settings)
    # One record per episode; a finished one wins over one that raised, wherever it comes from.
    records.sort(key=lambda record: record["status"] != "error")
    merged = sorted(latest_by_episode(records).values(), key=lambda r: (r["task_id"], r["trial"]))
    write_text_atomically(output_dir / EPISODES_FILE, "".join(json.dumps(r, sort_keys=True) + "\n" for r in merged))
    return write_summary(output_dir, merged, settings, dict(sorted(task_names.items())))


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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--model", help="local folder or Hugging Face Hub id of a WorldVLA checkpoint, or of a LoRA "
                        "adapter of one (train.py --lora-rank: merged into the base its adapter_config.json names)")
    parser.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit) of --model")
    parser.add_argument("--unnorm-key", default=None, help="action statistics to un-normalise with (default: the processor's)")
    parser.add_argument("--policy", choices=("worldvla", "scripted"), default="worldvla", help="the model, or the privileged-state expert")
    parser.add_argument(
        "--suite", choices=SUITES, default="libero_spatial", metavar="SUITE",
        help=f"LIBERO suite ({', '.join(CLASSIC_SUITES)}) or a LIBERO-PRO variant <suite>_<perturbation> "
        f"of {', '.join(PERTURBED_BASE_SUITES)}, perturbation one of {', '.join(PERTURBATIONS)}",
    )
    parser.add_argument(
        "--perturbations", default=None,
        help="also run these LIBERO-PRO variants of --suite (comma-separated, or 'all'), each into <output-dir>/<suite>, "
        "and write robustness.md / robustness.json (the suite beside its variants) into --output-dir",
    )
    parser.add_argument("--tasks", default="all", help="comma-separated task ids, or 'all'")
    parser.add_argument("--trials", default="50", help="initial states per task: N (the first N of the benchmark's 50), or ids and ranges (40-49, 0,5,7)")
    parser.add_argument("--seed", type=int, default=0, help="seed of each episode's random generators")
    parser.add_argument("--output-dir", help="results folder; rerunning with it resumes")
    parser.add_argument("--save-video", action="store_true", help="write an mp4 per episode")
    parser.add_argument("--num-workers", type=int, default=1, help="episodes run in parallel processes")
    parser.add_argument(
        "--envs-per-worker", type=int, default=1,
        help="environments each process steps in lockstep, their policy queries batched into one forward (on a GPU "
        "several episodes for the price of one query; outcomes do not depend on it)",
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where the model runs; auto: CUDA when present")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="model weights dtype (the VQ stays float32)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--n-action-steps", type=int, default=None, help="actions of a chunk executed before the next query (default: all K, the paper's open loop)")
    parser.add_argument("--decoding", choices=("parallel", "sequential"), default="parallel", help="how a chunk's action tokens are decoded")
    parser.add_argument(
        "--action-bin-window", type=int, default=None,
        help="decode each action bin as the likeliest bin of the likeliest window of this many bins (odd; 1: the "
        "release's argmax; default: the checkpoint's config)",
    )
    parser.add_argument(
        "--gripper-hold", type=int, default=None,
        help="execute a gripper command that reverses the executed one only after this many consecutive actions give "
        "it (default 1: every action as decoded, the paper's protocol)",
    )
    parser.add_argument(
        "--gripper-hold-direction", choices=GRIPPER_HOLD_DIRECTIONS, default=None,
        help="the reversals --gripper-hold applies to: both (the default), or release (only the opening of a closed "
        "gripper; a close is executed as decoded)",
    )
    parser.add_argument("--max-steps", type=int, default=None, help="override the suite's policy-step limit (smoke tests only: reported numbers use the protocol's)")
    parser.add_argument("--merge", nargs="+", metavar="RESULTS_DIR", help="instead of running: merge these results folders into --output-dir")
    args = parser.parse_args(argv)
    if not args.output_dir:
        parser.error("--output-dir is required")
    if args.merge:
        return args
    if args.policy == "worldvla" and not args.model:
        parser.error("--model is required with --policy worldvla")
    if args.policy != "worldvla" and args.gripper_hold is not None:
        parser.error("--gripper-hold applies to a WorldVLA policy (--policy worldvla)")
    if args.gripper_hold is not None and args.gripper_hold < 1:
        parser.error(f"--gripper-hold must be at least 1 (1: every action as decoded), got {args.gripper_hold}")
    if args.gripper_hold_direction is not None and (args.gripper_hold or 1) == 1:
        parser.error("--gripper-hold-direction needs --gripper-hold above 1")
    if args.policy == "worldvla" and missing_local_checkpoint(args.model):
        parser.error(f"--model {missing_local_checkpoint(args.model)}")
    if args.num_workers < 1:
        parser.error("--num-workers must be at least 1")
    if args.envs_per_worker < 1:
        parser.error("--envs-per-worker must be at least 1")
    if args.perturbations is not None:
        if args.suite not in PERTURBED_BASE_SUITES:
            parser.error(f"--perturbations needs --suite one of {', '.join(PERTURBED_BASE_SUITES)}, got {args.suite}")
        try:
            args.perturbations = parse_perturbations(args.perturbations)
        except ValueError as error:
            parser.error(str(error))
    try:
        parse_task_ids(args.tasks, 90 if args.suite == "libero_90" else 10)
        parse_trials(args.trials, 50)
    except ValueError as error:
        parser.error(str(error))
    return args


def main(argv=None):
    configure_logging()
    args = parse_args(argv)
    if args.merge:
        summary, table = merge_results(args.merge, args.output_dir)
        print(table)
        return summary
    config = vars(args).copy()
    if config["device"] == "auto":
        config["device"] = default_device() if config["policy"] == "worldvla" else "cpu"
    if config["perturbations"]:
        robustness, table = evaluate_robustness(config, config["perturbations"])
        print(table)
        return robustness
    summary, table = evaluate(config)
    print(table)
    return summary


if __name__ == "__main__":
    main()
