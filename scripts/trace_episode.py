"""Traces one closed-loop LIBERO episode step by step: where the hand is, how open the fingers are, what the policy
commands, and where the objects are, to see how an episode fails.

    python scripts/trace_episode.py --model checkpoints/worldvla-libero-spatial-64 --task 0 --trial 0 --output trace.json
    python scripts/trace_episode.py --policy scripted --task 0 --trial 0 --output expert_trace.json

The episode is the one `eval_libero.py` runs for the same suite, task, initial state and seed (the same reset, seeds
and protocol). The JSON holds a row per policy step (`hand`: the end effector's position, `finger_gap`, `action`,
`objects`: every object's position) and a summary: success, the first step the gripper is commanded closed and the
hand's offset from each object then, how often the command switches from closed back to open, and each object's
closest approach to the hand. The summary is also logged.
"""

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from eval_libero import LiberoWorldVLA, episode_seed, seed_episode  # noqa: E402
from libero_sim.env import CLASSIC_SUITES, get_suite, make_env, max_policy_steps, run_episode, task_instruction  # noqa: E402
from policy_worldvla import GRIPPER_HOLD_DIRECTIONS, WorldVLAPolicy  # noqa: E402
from worldvla_cli import HelpFormatter, configure_logging  # noqa: E402
from worldvla_results import write_json_atomically  # noqa: E402

logger = logging.getLogger("trace_episode")


def object_positions(observation):
    """{object: [x, y, z]} of a LIBERO observation (its `<object>_pos` entries, the robot's own left out)."""
    return {
        key.removesuffix("_pos"): np.round(value[:3], 4).tolist()
        for key, value in observation.items()
        if key.endswith("_pos") and not key.startswith("robot0") and "_to_" not in key
    }


class TracedPolicy:
    """Wraps a policy and records, at every step, the observation it acts on and the action it returns."""

    def __init__(self, policy):
        self.policy = policy
        self.rows = []

    def reset(self):
        self.policy.reset()
        self.rows = []

    def select_action(self, observation, instruction):
        action = np.asarray(self.policy.select_action(observation, instruction), dtype=np.float64)
        fingers = observation["robot0_gripper_qpos"]
        self.rows.append({
            "hand": np.round(observation["robot0_eef_pos"], 4).tolist(),
            "finger_gap": round(float(fingers[0] - fingers[1]), 4),
            "action": np.round(action, 4).tolist(),
            "objects": object_positions(observation),
        })
        return action


def summarise(rows):
    """The failure-relevant facts of a trace (see the module docstring)."""
    gripper = np.array([row["action"][6] for row in rows])
    hands = np.array([row["hand"] for row in rows])
    closed = np.flatnonzero(gripper > 0)
    summary = {
        "first_close_step": None,
        "closed_steps": int(len(closed)),
        "close_to_open_switches": int(np.sum((gripper[:-1] > 0) & (gripper[1:] <= 0))),
        "closest_approach": {},
    }
    if len(closed):
        first = int(closed[0])
        summary["first_close_step"] = first
        summary["hand_minus_object_at_first_close"] = {
            name: np.round(hands[first] - np.array(position), 4).tolist() for name, position in rows[first]["objects"].items()
        }
    for name in rows[0]["objects"] if rows else ():
        distances = np.linalg.norm(hands - np.array([row["objects"][name] for row in rows]), axis=1)
        step = int(np.argmin(distances))
        summary["closest_approach"][name] = {"step": step, "distance": round(float(distances[step]), 4)}
    return summary


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--model", default=None, help="WorldVLA checkpoint (folder or Hub id); not with --policy scripted")
    parser.add_argument("--policy", choices=("worldvla", "scripted"), default="worldvla")
    parser.add_argument("--suite", choices=CLASSIC_SUITES, default="libero_spatial")
    parser.add_argument("--task", type=int, default=0, help="task id")
    parser.add_argument("--trial", type=int, default=0, help="the benchmark's fixed initial state")
    parser.add_argument("--seed", type=int, default=0, help="eval_libero.py's --seed")
    parser.add_argument("--max-steps", type=int, default=None, help="policy steps (default: the suite's budget)")
    parser.add_argument("--action-bin-window", type=int, default=None,
                        help="the decoding's action_bin_window (default: the checkpoint's config)")
    parser.add_argument("--gripper-hold", type=int, default=1,
                        help="the policy's gripper_hold (eval_libero.py's --gripper-hold; 1: every action as decoded)")
    parser.add_argument("--gripper-hold-direction", choices=GRIPPER_HOLD_DIRECTIONS, default="both",
                        help="the reversals --gripper-hold applies to (eval_libero.py's --gripper-hold-direction)")
    parser.add_argument("--output", required=True, help="the trace's JSON file")
    args = parser.parse_args(argv)
    if (args.policy == "worldvla") != (args.model is not None):
        parser.error("--model is needed by --policy worldvla, and only by it")
    if args.gripper_hold < 1:
        parser.error(f"--gripper-hold must be at least 1 (1: every action as decoded), got {args.gripper_hold}")
    if args.gripper_hold_direction != "both" and args.gripper_hold == 1:
        parser.error("--gripper-hold-direction needs --gripper-hold above 1")
    if args.policy != "worldvla" and args.gripper_hold != 1:
        parser.error("--gripper-hold applies to a WorldVLA policy (--policy worldvla)")
    return args


def main(argv=None):
    configure_logging()
    args = parse_args(argv)
    suite = get_suite(args.suite)
    bddl_file = suite.get_task_bddl_file_path(args.task)
    if args.policy == "worldvla":
        overrides = {} if args.action_bin_window is None else {"action_bin_window": args.action_bin_window}
        policy = LiberoWorldVLA(WorldVLAPolicy.from_pretrained(
            args.model, gripper_hold=args.gripper_hold, gripper_hold_direction=args.gripper_hold_direction, **overrides))
        env = make_env(bddl_file, camera_names=policy.camera_names, resolution=policy.image_size)
    else:
        from libero_sim.expert import ScriptedExpert

        env = make_env(bddl_file, camera_names=())
        policy = ScriptedExpert(env)
    traced = TracedPolicy(policy)
    seed = episode_seed(args.seed, args.task, args.trial)
    seed_episode(seed, uses_torch=args.policy == "worldvla")  # after the env and the model, as in eval_libero.py
    try:
        result = run_episode(
            env, traced, suite.get_task_init_states(args.task)[args.trial], task_instruction(args.suite, args.task),
            args.max_steps or max_policy_steps(args.suite), seed=seed,
        )
    finally:
        env.close()
    summary = {"success": result.success, "policy_steps": result.policy_steps, **summarise(traced.rows)}
    settings = {key: getattr(args, key) for key in ("model", "policy", "suite", "task", "trial", "seed")}
    if args.policy == "worldvla":
        settings["action_bin_window"] = getattr(policy.policy.model.config, "action_bin_window", 1)
        settings["gripper_hold"] = args.gripper_hold
        settings["gripper_hold_direction"] = args.gripper_hold_direction
    write_json_atomically(args.output, {"settings": settings, "summary": summary, "rows": traced.rows})
    logger.info("%s", json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
