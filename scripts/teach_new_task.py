"""Teach a trained WorldVLA new LIBERO tasks with LoRA, measured before and after, against full fine-tuning.

    python scripts/teach_new_task.py --work-dir runs/teach --base checkpoints/worldvla-libero-spatial-64-task0 \\
        --task libero_goal:8 --task libero_90:9 --data-dir data/teach_64_rise3_wrist --demos-per-task 30 \\
        --train-steps 1500 --eval-trials 0-19 --base-suite libero_spatial --base-tasks 0 --base-trials 0-19
    python scripts/teach_new_task.py --work-dir runs/teach --summarize       # teach.json + teach.md
    python scripts/teach_new_task.py ...(the same options)... --stages ship  # the adapter into checkpoints/<--name>

Stages (`--stages`, in this order; rerun the same command after a stop and each continues from what is on disk):

| stage | runs | writes |
|---|---|---|
| demos | `scripts/collect_demos.py`: random-reset demos of each new task, with the base's cameras and resolution | `--data-dir` |
| before | `eval_libero.py` of the base on each new task's fixed initial states | `eval/before/<suite>` |
| lora | `train.py --lora-rank R --merge-lora` from the base on the new demos | `lora/adapter`, `lora/model` |
| after | `eval_libero.py` of the merged model on each new task | `eval/lora/<suite>` |
| forgetting | `eval_libero.py` of the merged model and of the base on the base's own tasks (`--base-*`) | `eval/forgetting_*` |
| full | `train.py` in full from the base, with the same demos, steps, batch and seed | `full/model` |
| full_after | `eval_libero.py` of the fully fine-tuned model on each new task | `eval/full/<suite>` |
| ship | (copy; only when named in `--stages`) | `checkpoints/<--name>`: the adapter, its base as given, the table |

Each training run's wall time and peak memory (the largest resident set of the train.py process) are appended to
`costs.jsonl`, one line per invocation, so that a run resumed over several sessions adds up. The demos come from
random resets only: the benchmark's fixed initial states stay the evaluation set.
"""
import argparse
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from libero_sim.expert import CLOSE_RISE, LIFT_HEIGHT  # noqa: E402
from scripts.reproduce_checkpoint import stage_lines  # noqa: E402
from worldvla_cli import HelpFormatter, configure_logging  # noqa: E402
from worldvla_results import append_jsonl, read_jsonl, write_json_atomically, write_text_atomically  # noqa: E402
from worldvla_train_arguments import DataArguments  # noqa: E402

STAGES = ("demos", "before", "lora", "after", "forgetting", "full", "full_after", "ship")
DEFAULT_STAGES = STAGES[:-1]  # shipping writes into the repository's checkpoints/: only on request
SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90")
COSTS_FILE, SUMMARY_FILE, TABLE_FILE = "costs.jsonl", "teach.json", "teach.md"
TARGET_AFTER, TARGET_GAIN = 0.5, 0.3  # the targets: at least 50% after, at least 30 points above before
logger = logging.getLogger("teach_new_task")


def parse_task(text):
    suite, _, task = text.partition(":")
    if suite not in SUITES or not task.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: give SUITE:TASK_ID with SUITE one of {', '.join(SUITES)}")
    return suite, int(task)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--work-dir", required=True, help="training runs, evaluations, costs and the table")
    parser.add_argument("--summarize", action="store_true", help="only write teach.json and teach.md from what is on disk")
    parser.add_argument("--stages", default=",".join(DEFAULT_STAGES), help=f"comma-separated stages, of {', '.join(STAGES)}")
    parser.add_argument("--name", default="worldvla-teach-lora", help="folder under checkpoints/ that the ship stage writes")
    parser.add_argument("--base", help="the trained WorldVLA to teach (a local checkpoint folder)")
    parser.add_argument("--task", action="append", type=parse_task, default=[], metavar="SUITE:ID",
                        help="a new task, e.g. libero_goal:8 (repeat the option for each)")
    parser.add_argument("--workers", type=int, default=2, help="parallel processes for evaluation")
    data = parser.add_argument_group("demonstrations")
    data.add_argument("--data-dir", help="one folder for the demos of all new tasks (one file per task)")
    data.add_argument("--demos-per-task", type=int, default=30, help="random-reset demos per new task")
    data.add_argument("--seed", type=int, default=11, help="seed of the resets, of LoRA's initialisation and of the data order")
    data.add_argument("--lift-height", type=float, default=LIFT_HEIGHT, help="collect_demos.py --lift-height")
    data.add_argument("--close-rise", type=float, default=CLOSE_RISE, help="collect_demos.py --close-rise")
    train = parser.add_argument_group("training (the same data, steps, batch and seed for LoRA and full fine-tuning)")
    train.add_argument("--train-steps", type=int, default=1500)
    train.add_argument("--batch-size", type=int, default=16)
    train.add_argument("--eval-steps", type=int, default=500, help="steps between validation passes and checkpoints")
    train.add_argument("--lora-rank", type=int, default=32)
    train.add_argument("--lora-learning-rate", type=float, default=1e-3)
    train.add_argument("--full-learning-rate", type=float, default=5e-4)
    train.add_argument("--replay-data-dir", help="demos of the base's own tasks (e.g. its training data), rehearsed "
                       "while learning the new ones (train.py --replay-data-dir)")
    train.add_argument("--replay-episodes-per-task", type=int, default=DataArguments.replay_episodes_per_task,
                       help="episodes of each base task rehearsed")
    evaluation = parser.add_argument_group("evaluation")
    evaluation.add_argument("--eval-trials", default="0-19", help="fixed initial states of each new task")
    evaluation.add_argument("--base-suite", default="libero_spatial", choices=SUITES, help="the suite the base was trained on")
    evaluation.add_argument("--base-tasks", default="all", help="the base's own tasks, for forgetting")
    evaluation.add_argument("--base-trials", default="0-4", help="fixed initial states of each of the base's tasks")
    args = parser.parse_args(argv)
    if args.summarize:
        return args
    if not args.base or not args.task or not args.data_dir:
        parser.error("--base, --task (at least once) and --data-dir are needed to run the stages")
    if len(set(args.task)) != len(args.task):
        parser.error("a task is given twice")
    args.stage_list = [stage.strip() for stage in args.stages.split(",") if stage.strip()]
    unknown = sorted(set(args.stage_list) - set(STAGES))
    if unknown:
        parser.error(f"unknown stages {unknown}: choose from {', '.join(STAGES)}")
    return args


def tasks_by_suite(tasks):
    suites = {}
    for suite, task in tasks:
        suites.setdefault(suite, []).append(task)
    return suites


def base_settings(base):
    """The base's frame side and cameras (demos are rendered as its prompts show them) and its statistics key."""
    config = json.loads((Path(base) / "config.json").read_text())
    processor = json.loads((Path(base) / "processor_config.json").read_text())
    cameras = "agentview,eye_in_hand" if config.get("wrist_camera") else "agentview"
    return config["image_size"], cameras, processor["default_unnorm_key"]


def training_command(args, kind):
    """train.py from the base on the new demos: LoRA (adapter and merged model) or full fine-tuning."""
    learning_rate = args.lora_learning_rate if kind == "lora" else args.full_learning_rate
    lora = ["--lora-rank", str(args.lora_rank), "--lora-alpha", str(2 * args.lora_rank), "--merge-lora", "true"]
    return [
        sys.executable, "train.py", "--model", str(args.base), "--data-dir", str(args.data_dir),
        "--data-cache-dir", str(Path(args.work_dir) / "cache"), "--dataset-key", Path(args.data_dir).name,
        "--val-split", "episodes", "--max-eval-samples", "256", "--output-dir", str(Path(args.work_dir) / kind),
        "--max-steps", str(args.train_steps), "--global-batch-size", str(args.batch_size),
        "--per-device-train-batch-size", str(min(args.batch_size, 16)), "--learning-rate", str(learning_rate),
        "--lr-scheduler-type", "cosine", "--warmup-steps", "0.05", "--weight-decay", "0.1", "--max-grad-norm", "1.0",
        "--eval-strategy", "steps", "--eval-steps", str(args.eval_steps), "--save-strategy", "steps",
        "--save-steps", str(args.eval_steps), "--save-total-limit", "2", "--logging-steps", "25",
        "--dataloader-num-workers", "0", "--seed", str(args.seed), "--report-to", "none", "--disable-tqdm", "true",
        *(lora if kind == "lora" else []),
        *(["--replay-data-dir", str(args.replay_data_dir), "--replay-episodes-per-task", str(args.replay_episodes_per_task)]
          if args.replay_data_dir else []),
    ]


def evaluation_command(args, model, suite, tasks, trials, output_dir, unnorm_key=None):
    """eval_libero.py of `model` on `tasks` (eval_libero.py's --tasks: ids joined by commas, or 'all')."""
    return [
        sys.executable, "eval_libero.py", "--model", str(model), "--suite", suite, "--tasks", tasks,
        "--trials", trials, "--num-workers", str(args.workers), "--threads", "1", "--output-dir", str(output_dir),
        *(["--unnorm-key", unnorm_key] if unnorm_key else []),
    ]


def stage_commands(args):
    """{stage: [argv, ...]}, run one after the other."""
    work = Path(args.work_dir)
    resolution, cameras, base_key = base_settings(args.base)
    suites = tasks_by_suite(args.task)
    demos = [
        [sys.executable, "scripts/collect_demos.py", "--suite", suite, "--tasks", ",".join(map(str, tasks)), "--trials", "0",
         "--extra-random", str(args.demos_per_task), "--resolution", str(resolution), "--cameras", cameras,
         "--seed", str(args.seed), "--lift-height", str(args.lift_height), "--close-rise", str(args.close_rise),
         "--output-dir", str(args.data_dir)]
        for suite, tasks in suites.items()
    ]

    def on_new_tasks(model, name):
        return [evaluation_command(args, model, suite, ",".join(map(str, tasks)), args.eval_trials, work / "eval" / name / suite)
                for suite, tasks in suites.items()]

    forgetting = [
        evaluation_command(args, model, args.base_suite, args.base_tasks, args.base_trials, work / "eval" / f"forgetting_{name}", base_key)
        for name, model in (("base", args.base), ("lora", work / "lora" / "model"))
    ]
    return {
        "demos": demos,
        "before": on_new_tasks(args.base, "before"),
        "lora": [training_command(args, "lora")],
        "after": on_new_tasks(work / "lora" / "model", "lora"),
        "forgetting": forgetting,
        "full": [training_command(args, "full")],
        "full_after": on_new_tasks(work / "full" / "model", "full"),
    }


def run(command, log_path):
    """Runs one command to its end, logging to a file; returns (seconds, peak resident set in MB) of its process."""
    logger.info("%s", shlex.join(command))
    started = time.perf_counter()
    with open(log_path, "a") as log:
        process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    exit_code = os.waitstatus_to_exitcode(status)
    if exit_code != 0:
        raise SystemExit(f"failed (exit {exit_code}, log {log_path}): {shlex.join(command)}")
    return time.perf_counter() - started, usage.ru_maxrss / 1024  # ru_maxrss is in kB on Linux


def train(command, work, kind):
    """One training run, resumed from its last checkpoint if it has one; its cost appended to costs.jsonl."""
    from worldvla_training import last_complete_checkpoint

    if last_complete_checkpoint(work / kind):
        command = command + ["--resume-from-checkpoint", "last"]
    seconds, peak_mb = run(command, work / "logs" / f"{kind}.log")
    append_jsonl(work / COSTS_FILE, {"run": kind, "seconds": round(seconds, 1), "peak_rss_mb": round(peak_mb, 1)})


def main(argv=None):
    configure_logging()
    args = parse_args(argv)
    if args.summarize:
        return summarize(args.work_dir)
    work = Path(args.work_dir)
    (work / "logs").mkdir(parents=True, exist_ok=True)
    commands = stage_commands(args)
    write_json_atomically(work / "commands.json", {stage: [shlex.join(c) for c in cs] for stage, cs in commands.items()})
    for stage in STAGES:
        if stage not in args.stage_list:
            continue
        if stage == "ship":
            ship(args, commands)
        for command in commands.get(stage, ()):
            if stage in ("lora", "full") and (work / stage / "model").is_dir():
                logger.info("%s: %s exists, skipped", stage, work / stage / "model")
            elif stage in ("lora", "full"):
                train(command, work, stage)
            else:
                run(command, work / "logs" / f"{stage}.log")
        logger.info("stage %s done", stage)
    return summarize(work)


def shipped_base_name(base):
    """How the shipped adapter names its base: a folder of this repository by its path from the repository's root
    (where the README's commands run), anything else as given."""
    path = Path(base).resolve()
    return path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(base)


def ship(args, commands):
    """Copies the LoRA adapter into checkpoints/<name>, naming its base from the repository's root, with the table
    of what was measured and the commands in its model card."""
    work = Path(args.work_dir)
    adapter = work / "lora" / "adapter"
    payload = summarize(work)
    if not adapter.is_dir() or not any(row.get("lora") for row in payload["new_tasks"]):
        raise SystemExit(f"nothing to ship: run the lora and after stages first ({adapter}, {work / 'eval' / 'lora'})")
    target = ROOT / "checkpoints" / args.name
    staging = target.with_name(target.name + ".incomplete")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(adapter, staging)
    adapter_config = json.loads((staging / "adapter_config.json").read_text())
    adapter_config["base_model_name_or_path"] = shipped_base_name(args.base)
    write_json_atomically(staging / "adapter_config.json", adapter_config)
    for name in (SUMMARY_FILE, TABLE_FILE):
        shutil.copy2(work / name, staging / name)
    # train.py's card loads the adapter and its base from where they were trained; this one, from where they are shipped.
    card = (staging / "README.md").read_text()
    card = card.replace(repr(str(adapter.resolve())), repr(f"checkpoints/{args.name}"))
    card = card.replace(repr(str(Path(args.base).resolve())), repr(adapter_config["base_model_name_or_path"]))
    commands_typed = "\n".join(stage_lines(commands))
    evaluate = "\n".join(
        f"python eval_libero.py --model checkpoints/{args.name} --suite {suite} --tasks {','.join(map(str, tasks))} "
        f"--trials {args.eval_trials} --output-dir runs/eval_{args.name}_{suite}"
        for suite, tasks in tasks_by_suite(args.task).items()
    )
    card += (
        f"\n## In LIBERO\n\n`eval_libero.py` and `WorldVLAPolicy` load the adapter on its base and merge it:\n\n"
        f"```bash\n{evaluate}\n```\n"
        f"\n## Measured (`{TABLE_FILE}`, `{SUMMARY_FILE}`)\n\nLIBERO, the benchmark's fixed initial states; before is the "
        f"base `{adapter_config['base_model_name_or_path']}`, after is the base with this adapter merged.\n\n"
        f"{(work / TABLE_FILE).read_text()}\n## Reproduce\n\n```bash\n{commands_typed}\n```\n"
    )
    write_text_atomically(staging / "README.md", card)
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    logger.info("shipped %s (%.1f MB)", target, megabytes(target.rglob("*")))


# ---------------------------------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------------------------------


def read_json(path):
    return json.loads(path.read_text()) if path.is_file() else None


def evaluation_results(folder):
    """{(suite, task id): per-task result} of every suite evaluated under `folder`."""
    results = {}
    for summary_path in sorted(Path(folder).glob("*/summary.json")) + sorted(Path(folder).glob("summary.json")):
        summary = read_json(summary_path)
        for task, result in summary["tasks"].items():
            results[(summary["suite"], int(task))] = result
    return results


def megabytes(paths):
    return round(sum(path.stat().st_size for path in paths if path.is_file()) / 2**20, 2)


def training_costs(work, kind):
    runs = [record for record in read_jsonl(work / COSTS_FILE) if record["run"] == kind]
    model = work / kind / "model"
    summary = read_json(model / "training_summary.json")
    if not runs and summary is None:
        return None
    saved = work / "lora" / "adapter" if kind == "lora" else model
    return {
        "wall_seconds": round(sum(record["seconds"] for record in runs), 1) if runs else None,
        "invocations": len(runs),
        "peak_rss_mb": max((record["peak_rss_mb"] for record in runs), default=None),
        "saved": "adapter" if kind == "lora" else "full model",
        # The weights alone, and the folder a user downloads (with the processor's tokenizers).
        "weights_mb": megabytes(saved.glob("*.safetensors")) if saved.is_dir() else None,
        "folder_mb": megabytes(saved.rglob("*")) if saved.is_dir() else None,
        "held_out_action_accuracy": (summary or {}).get("metrics", {}).get("eval_ind_action_token_accuracy"),
        "replay": (summary or {}).get("replay"),
    }


def rate_cell(result):
    if result is None:
        return "-"
    low, high = result["wilson_95"]
    return f"{result['successes']}/{result['episodes']} ({100 * result['success_rate']:.0f}%, {100 * low:.0f}-{100 * high:.0f}%)"


def summarize(work_dir):
    work = Path(work_dir)
    evaluations = {name: evaluation_results(work / "eval" / name) for name in ("before", "lora", "full")}
    new_tasks = sorted(set().union(*(results.keys() for results in evaluations.values())))
    rows = []
    for key in new_tasks:
        before, after = evaluations["before"].get(key), evaluations["lora"].get(key)
        row = {"suite": key[0], "task": key[1], **{name: evaluations[name].get(key) for name in evaluations}}
        if before and after:
            gain = after["success_rate"] - before["success_rate"]
            row["lora_gain_points"] = round(100 * gain, 1)
            row["targets_met"] = after["success_rate"] >= TARGET_AFTER and gain >= TARGET_GAIN - 1e-9
        rows.append(row)
    forgetting = {name: read_json(work / "eval" / f"forgetting_{name}" / "summary.json") for name in ("base", "lora")}
    payload = {
        "new_tasks": rows,
        "forgetting": {name: summary and {k: summary[k] for k in ("suite", "success_rate", "successes", "episodes", "wilson_95")}
                       for name, summary in forgetting.items()},
        "costs": {kind: training_costs(work, kind) for kind in ("lora", "full")},
        "targets": {"after_at_least": TARGET_AFTER, "gain_at_least": TARGET_GAIN},
    }
    write_json_atomically(work / SUMMARY_FILE, payload)
    write_text_atomically(work / TABLE_FILE, teach_table(payload))
    print(teach_table(payload))
    return payload


def teach_table(payload):
    lines = ["| new task | before (base) | after LoRA | after full fine-tuning | LoRA gain (points) | targets met |",
             "|---|---|---|---|---|---|"] if payload["new_tasks"] else ["No evaluation on disk yet."]
    for row in payload["new_tasks"]:
        name = (row.get("lora") or row.get("before") or row.get("full") or {}).get("task_name", "")
        met = {True: "yes", False: "no"}.get(row.get("targets_met"), "-")
        gain = row.get("lora_gain_points")
        lines.append(
            f"| {row['suite']} {row['task']} `{name}` | {rate_cell(row['before'])} | {rate_cell(row['lora'])} | "
            f"{rate_cell(row['full'])} | {'-' if gain is None else f'{gain:+.0f}'} | {met} |"
        )
    forgetting = payload["forgetting"]
    if any(forgetting.values()):
        lines += ["", "| the base's own tasks | base | merged LoRA model |", "|---|---|---|"]
        suite = next(summary["suite"] for summary in forgetting.values() if summary)
        lines.append(f"| {suite} | {rate_cell(forgetting['base'])} | {rate_cell(forgetting['lora'])} |")
    costs = payload["costs"]
    if any(costs.values()):
        lines += ["", "| training | wall time (min) | runs | peak memory (MB) | saved | weights (MB) | folder (MB) | "
                  "held-out action accuracy |", "|---|---|---|---|---|---|---|---|"]
        for kind, cost in costs.items():
            if cost:
                minutes = "-" if cost["wall_seconds"] is None else f"{cost['wall_seconds'] / 60:.1f}"
                peak = "-" if cost["peak_rss_mb"] is None else f"{cost['peak_rss_mb']:.0f}"
                weights = "-" if cost["weights_mb"] is None else f"{cost['weights_mb']:.2f}"
                folder = "-" if cost["folder_mb"] is None else f"{cost['folder_mb']:.1f}"
                accuracy = cost["held_out_action_accuracy"]
                accuracy = "-" if accuracy is None else f"{100 * accuracy:.1f}%"
                name = "LoRA" if kind == "lora" else "full fine-tuning"
                lines.append(f"| {name} | {minutes} | {cost['invocations']} | {peak} | {cost['saved']} | {weights} | {folder} | {accuracy} |")
        replay = next((cost["replay"] for cost in costs.values() if cost and cost["replay"]), None)
        if replay:
            lines += ["", f"Both trained on the new demos and on {replay['episodes']} episodes of {replay['tasks']} "
                          f"task{'s' * (replay['tasks'] != 1)} the base knew (the first {replay['episodes_per_task']} of each file of `{replay['data_dir']}`), rehearsed."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
