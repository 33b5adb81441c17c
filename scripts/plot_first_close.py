"""Plots the grasp of one or more models beside their experts', from `diagnose_policy.py --around-first-close` files.

    python scripts/plot_first_close.py "still=results/task0-specialist/diagnosis_first_close.json" \\
        "rise=results/task0-close-rise/diagnosis_first_close.json" --output around_first_close.png

Left: the share of the decoded chunks whose first action closes the gripper, by step from the expert's first close
(dotted: the expert's). Right: the mean z command (dotted: the expert's). One colour per file; the split
(`--split`, default the training demos) is the same for all.
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from worldvla_cli import HelpFormatter, labelled_file  # noqa: E402


def plot(diagnoses, split, output, title=None):
    """`diagnoses`: [(label, report)] of diagnose_policy.py; writes the two panels to `output`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (gripper, height) = plt.subplots(1, 2, figsize=(12, 4))
    for index, (label, report) in enumerate(diagnoses):
        rows = report.get("around_first_close", {}).get(split)
        if not rows:
            raise SystemExit(f"{label}: no '{split}' rows around the first close (run diagnose_policy.py --around-first-close W)")
        colour = f"C{index}"
        offsets = [row["offset"] for row in rows]
        gripper.plot(offsets, [row["predicted_closed"] for row in rows], color=colour, label=f"model: {label}")
        gripper.plot(offsets, [row["expert_closed"] for row in rows], ":", color=colour)
        height.plot(offsets, [row["predicted_xyz"][2] for row in rows], color=colour, label=f"model: {label}")
        height.plot(offsets, [row["expert_xyz"][2] for row in rows], ":", color=colour, label=f"expert: {label}")
    for axis, name in ((gripper, "fraction commanded closed"), (height, "mean z action")):
        axis.axvline(0, color="grey", linewidth=0.5)
        axis.set_xlabel("steps from the expert's first close")
        axis.set_ylabel(name)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    gripper.set_title("gripper (dotted: expert)")
    height.set_title("vertical motion (dotted: expert)")
    figure.suptitle(title or f"first action of each decoded chunk, on the recorded frames of the '{split}' demos", fontsize=10)
    figure.tight_layout()
    figure.savefig(output, dpi=90)
    plt.close(figure)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("diagnoses", nargs="+", type=labelled_file("diagnose_policy.py"), metavar="LABEL=FILE")
    parser.add_argument("--split", default="train", help="the demos' split to plot (train, val_ind, val_ood)")
    parser.add_argument("--title", default=None)
    parser.add_argument("--output", required=True, help="the PNG to write")
    args = parser.parse_args(argv)
    plot([(label, json.loads(path.read_text())) for label, path in args.diagnoses], args.split, args.output, args.title)


if __name__ == "__main__":
    main()
