"""The paper's ablations in miniature: one variant end to end, resumably, and the table of all of them.

    python scripts/run_ablation.py --work-dir runs/ablation --variant d --processor runs/vq/processor \\
        --data-dir data/libero_spatial_64 --demos-per-task 50 --train-steps 6000 --eval-trials 0-9
    python scripts/run_ablation.py --work-dir runs/ablation --summarize     # ablations.json + ablations.md

Each variant is `scripts/reproduce_checkpoint.py` from random weights in `<work-dir>/<variant>`, with the same
demos, tokenizer (`--processor`: train it once, with `train_vq.py`), model size, steps, batch and seed; only the
options of its row differ (Cen et al., 2025, tables 3 and 4 and the world-model table):

| variant | what it trains | options |
|---|---|---|
| a | action model only, one action per query | `--chunk-size 1 --sample-kinds action` |
| b | action + world model, one action per query | `--chunk-size 1` |
| c | action + world model, chunks of 5, causal mask | `--chunk-size 5 --causal-action-mask` |
| d | action + world model, chunks of 5, action mask (the shipped recipe) | `--chunk-size 5` |
| e | world model only (compared with d as a world model) | `--chunk-size 5 --sample-kinds world_model` |
| d1 | d with one history frame instead of two | `--chunk-size 5 --history-frames 1` |

Every variant runs the stages demos, init, train, eval (`eval_libero.py` on the fixed initial states) and diagnose
(open-loop chunks, `eval_world_model.py`); reproduce_checkpoint.py skips what a variant cannot do (e has no policy,
a has no world model). Rerun the same command after a stop:
every stage continues from what is on disk. At a larger scale (GPUs), change `--layers`, `--hidden-size`,
`--train-steps` and `--demos-per-task`; the comparison stays the same.
"""
import argparse
import json
import logging
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts import reproduce_checkpoint  # noqa: E402
from worldvla_cli import HelpFormatter, configure_logging  # noqa: E402

logger = logging.getLogger("run_ablation")

# variant: (what it trains, reproduce_checkpoint.py options, the paper's average LIBERO success)
VARIANTS = {
    "a": ("action model only, K = 1", ["--chunk-size", "1", "--sample-kinds", "action"], 62.8),
    "b": ("action + world model, K = 1", ["--chunk-size", "1", "--sample-kinds", "action,world_model"], 67.2),
    "c": ("action + world model, K = 5, causal mask", ["--chunk-size", "5", "--causal-action-mask"], 54.0),
    "d": ("action + world model, K = 5, action mask", ["--chunk-size", "5", "--sample-kinds", "action,world_model"], 76.6),
    "e": ("world model only", ["--chunk-size", "5", "--sample-kinds", "world_model"], None),
    "d1": ("d with one history frame", ["--chunk-size", "5", "--history-frames", "1"], None),
}
STAGES = "demos,init,train,eval,diagnose"
# The paper's world-model table (held-out trajectories, rollouts on the true actions): FVD, PSNR, SSIM, LPIPS.
PAPER_WORLD_MODEL = {
    "e": {"10": {"fvd": 250.0, "psnr": 29.62, "ssim": 90.73, "lpips": 11.97}, "50": {"fvd": 718.6, "psnr": 23.98, "ssim": 83.41, "lpips": 15.60}},
    "d": {"10": {"fvd": 255.1, "psnr": 29.77, "ssim": 90.40, "lpips": 11.94}, "50": {"fvd": 674.1, "psnr": 24.30, "ssim": 83.55, "lpips": 15.44}},
}
SUMMARY_FILE, TABLE_FILE = "ablations.json", "ablations.md"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--work-dir", required=True, help="one folder per variant under it, and the table")
    parser.add_argument("--variant", default=None,
                        help=f"comma-separated variants to run, of {', '.join(VARIANTS)}, or 'all' (one after the other)")
    parser.add_argument("--summarize", action="store_true", help="write ablations.json and ablations.md from what is on disk")
    parser.add_argument("--workers", type=int, default=2, help="parallel processes for demos and evaluation")
    shared = parser.add_argument_group("the same for every variant")
    shared.add_argument("--processor", help="the image tokenizer's processor folder (train_vq.py's <output>/processor)")
    shared.add_argument("--suite", default="libero_spatial", choices=("libero_spatial", "libero_object"))
    shared.add_argument("--tasks", default="all", help="task ids of the demos and the evaluation, or 'all'")
    shared.add_argument("--data-dir", help="demo folder, shared by the variants (collected by the first one to run)")
    shared.add_argument("--demos-per-task", type=int, default=50)
    shared.add_argument("--seed", type=int, default=0, help="seed of the demos' resets, the weights and the data order")
    shared.add_argument("--layers", type=int, default=4)
    shared.add_argument("--hidden-size", type=int, default=256)
    shared.add_argument("--heads", type=int, default=4)
    shared.add_argument("--train-steps", type=int, default=6000)
    shared.add_argument("--batch-size", type=int, default=16)
    shared.add_argument("--learning-rate", type=float, default=1e-3)
    shared.add_argument("--eval-steps", type=int, default=1000, help="steps between validation passes and checkpoints")
    shared.add_argument("--eval-trials", default="0-9", help="fixed initial states per task (eval_libero.py --trials)")
    args = parser.parse_args(argv)
    if args.summarize == bool(args.variant):
        parser.error("give --variant (to run) or --summarize (to tabulate), one of them")
    if args.variant:
        args.variants = list(VARIANTS) if args.variant == "all" else [v.strip() for v in args.variant.split(",") if v.strip()]
        unknown = [v for v in args.variants if v not in VARIANTS]
        if unknown:
            parser.error(f"unknown variants {unknown}: choose from {', '.join(VARIANTS)}")
        if not args.processor or not args.data_dir:
            parser.error("--processor and --data-dir are needed to run a variant: every variant shares them")
    return args


def reproduce_argv(args, variant):
    """scripts/reproduce_checkpoint.py's command line of one variant."""
    _, options, _ = VARIANTS[variant]
    return [
        "--work-dir", str(Path(args.work_dir) / variant), "--stages", STAGES, "--workers", str(args.workers),
        "--processor", args.processor, "--suite", args.suite, "--tasks", args.tasks, "--data-dir", args.data_dir,
        "--demos-per-task", str(args.demos_per_task), "--seed", str(args.seed), "--layers", str(args.layers),
        "--hidden-size", str(args.hidden_size), "--heads", str(args.heads), "--train-steps", str(args.train_steps),
        "--batch-size", str(args.batch_size), "--learning-rate", str(args.learning_rate),
        "--eval-steps", str(args.eval_steps), "--eval-trials", args.eval_trials, *options,
    ]


def read_json(path):
    return json.loads(path.read_text()) if path.is_file() else None


def variant_results(work_dir, variant):
    """What is on disk of one variant: LIBERO success, held-out action metrics and world-model metrics."""
    folder = Path(work_dir) / variant
    description, _, paper = VARIANTS[variant]
    row = {"variant": variant, "description": description, "paper_success": paper}
    evaluation = read_json(folder / "eval" / "summary.json")
    if evaluation:
        row["libero"] = {key: evaluation[key] for key in ("success_rate", "successes", "episodes", "wilson_95")}
        row["libero"]["per_task"] = {task: result["success_rate"] for task, result in evaluation["tasks"].items()}
    training = read_json(folder / "train" / "model" / "training_summary.json")
    if training:
        metrics = training["metrics"]
        row["training"] = {key: metrics.get(f"eval_ind_{key}") for key in ("action_token_accuracy", "action_l1", "image_token_accuracy")}
        row["training"]["runtime_s"] = metrics.get("train_runtime")
    world_model = read_json(folder / "world_model" / "summary.json")
    if world_model:
        row["world_model"] = {horizon: values["prediction"] for horizon, values in world_model["metrics"].items()}
        row["world_model_paper"] = PAPER_WORLD_MODEL.get(variant)
    return row


def percent(value, digits=1):
    return "-" if value is None else f"{100 * value:.{digits}f}"


def number(value, digits=2):
    return "-" if value is None else f"{value:.{digits}f}"


def ablation_table(rows):
    """Markdown: policy success beside the paper's, then the world models beside the paper's."""
    lines = [
        "| variant | trains | LIBERO success | 95% interval | episodes | paper (average) | held-out action accuracy | action L1 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        libero, training = row.get("libero"), row.get("training") or {}
        interval = "-" if not libero else f"{percent(libero['wilson_95'][0], 0)}-{percent(libero['wilson_95'][1], 0)}%"
        lines.append(
            f"| {row['variant']} | {row['description']} | {percent(libero and libero['success_rate'])}"
            f"{'%' if libero else ''} | {interval} | {libero['episodes'] if libero else '-'} | "
            f"{number(row['paper_success'], 1)} | {percent(training.get('action_token_accuracy'))} | "
            f"{number(training.get('action_l1'), 4)} |"
        )
    world_rows = [row for row in rows if row.get("world_model")]
    if world_rows:
        horizons = sorted({h for row in world_rows for h in row["world_model"]}, key=int)
        header = " | ".join(f"{name} {h} fr" for h in horizons for name in ("PSNR", "SSIM"))
        lines += ["", f"| world model | {header} | paper: {header} |", "|---|" + "---|" * (4 * len(horizons))]
        for row in world_rows:
            ours = " | ".join(f"{number(row['world_model'].get(h, {}).get(m))}" for h in horizons for m in ("psnr", "ssim"))
            paper = row.get("world_model_paper") or {}
            theirs = " | ".join(f"{number(paper.get(h, {}).get(m))}" for h in horizons for m in ("psnr", "ssim"))
            lines.append(f"| {row['variant']}: {row['description']} | {ours} | {theirs} |")
    return "\n".join(lines) + "\n"


def summarize(work_dir):
    work = Path(work_dir)
    rows = [variant_results(work, v) for v in VARIANTS if (work / v).is_dir()]
    if not rows:
        raise SystemExit(f"no variant folder under {work}: run one with --variant first")
    for name, text in ((SUMMARY_FILE, json.dumps(rows, indent=2)), (TABLE_FILE, ablation_table(rows))):
        partial = work / f"{name}.partial"
        partial.write_text(text)
        os.replace(partial, work / name)
    logger.info("wrote %s and %s", work / SUMMARY_FILE, work / TABLE_FILE)
    print(ablation_table(rows))
    return rows


def main(argv=None):
    configure_logging()
    args = parse_args(argv)
    if args.summarize:
        return summarize(args.work_dir)
    for variant in args.variants:
        logger.info("variant %s: %s", variant, VARIANTS[variant][0])
        reproduce_checkpoint.main(reproduce_argv(args, variant))
    return summarize(args.work_dir)


if __name__ == "__main__":
    main()
