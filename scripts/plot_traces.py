"""Plots closed-loop episodes traced by `trace_episode.py` beside each other: where the hand went relative to an object.

    python scripts/plot_traces.py "expert=expert_trace.json" "LoRA=lora_trace.json" --object akita_black_bowl_1 \\
        --output hand_paths.png

Left: the hand's path seen from above, relative to the object's position at the start (the cross), a dot where
the gripper is first commanded closed. Middle: the hand's height above the object, by policy step, the first close
marked. Right: the hand's horizontal distance to the object, by policy step. One colour per trace.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from worldvla_cli import HelpFormatter, labelled_file  # noqa: E402


def hand_relative_to(trace, name):
    """(steps, 3): the hand's position minus the object's position at the first step, at every policy step."""
    rows = trace["rows"]
    if name not in rows[0]["objects"]:
        raise SystemExit(f"no object {name!r} in the trace; it has {sorted(rows[0]['objects'])}")
    return np.asarray([row["hand"] for row in rows]) - np.asarray(rows[0]["objects"][name])


def plot(traces, name, output, title=None):
    """`traces`: [(label, trace_episode.py output)]; writes the three panels to `output`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (top, height, distance) = plt.subplots(1, 3, figsize=(15, 4.2))
    for index, (label, trace) in enumerate(traces):
        relative = hand_relative_to(trace, name)
        summary = trace["summary"]
        first_close = summary["first_close_step"]
        outcome = f"{'success' if summary['success'] else 'failure'} in {summary['policy_steps']} steps"
        colour = f"C{index}"
        top.plot(relative[:, 0], relative[:, 1], color=colour, label=f"{label} ({outcome})")
        height.plot(relative[:, 2], color=colour, label=label)
        distance.plot(np.linalg.norm(relative[:, :2], axis=1), color=colour, label=label)
        if first_close is not None:
            top.plot(*relative[first_close, :2], "o", color=colour)
            height.plot(first_close, relative[first_close, 2], "o", color=colour)
            distance.plot(first_close, np.linalg.norm(relative[first_close, :2]), "o", color=colour)
    top.plot(0, 0, "kx", markersize=10)
    top.set_aspect("equal", adjustable="datalim")
    top.set(xlabel="x - object (m)", ylabel="y - object (m)", title="hand path from above (dot: first close)")
    height.set(xlabel="policy step", ylabel="z - object (m)", title="hand height above the object")
    distance.set(xlabel="policy step", ylabel="horizontal distance (m)", title="hand to object, horizontally")
    for axis in (top, height, distance):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle(title or f"the hand relative to {name} (its position at the first step)", fontsize=10)
    figure.tight_layout()
    figure.savefig(output, dpi=90)
    plt.close(figure)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("traces", nargs="+", type=labelled_file("trace_episode.py"), metavar="LABEL=FILE")
    parser.add_argument("--object", required=True, help="the object to plot the hand against, e.g. akita_black_bowl_1")
    parser.add_argument("--title", default=None)
    parser.add_argument("--output", required=True, help="the PNG to write")
    args = parser.parse_args(argv)
    plot([(label, json.loads(path.read_text())) for label, path in args.traces], args.object, args.output, args.title)


if __name__ == "__main__":
    main()
