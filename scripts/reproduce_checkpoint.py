"""Reproduces the shipped WorldVLA checkpoint in one command: demos -> image tokenizer -> model -> LIBERO.

    python scripts/reproduce_checkpoint.py --work-dir runs/spatial64            # every stage
    python scripts/reproduce_checkpoint.py --work-dir runs/spatial64 --stages eval,ship

Stages, each a run of the project's own command-line tools (the exact commands are logged and written to
`<work-dir>/commands.json`), each resumable: rerun the same command after a stop and every stage continues
from what is on disk (finished demos, the last complete tokenizer or Trainer checkpoint, finished episodes).

| stage | tool | output |
|---|---|---|
| demos | `scripts/collect_demos.py`, one process per group of tasks | `--data-dir`: one HDF5 file per task, `--demos-per-task` random-reset demos each |
| vq | `train_vq.py` | `<work-dir>/vq/processor` (text tokenizer + trained VQ), `<work-dir>/vq/eval` |
| init | `scripts/build_small_checkpoint.py --processor` | `<work-dir>/init`: the random model around that processor (`--processor FOLDER`: a tokenizer trained before, and no vq stage) |
| train | `train.py --from-scratch-config` | `<work-dir>/train/model`, validation curves in its `training_summary.json` |
| eval | `eval_libero.py` | `<work-dir>/eval`: the benchmark's fixed initial states `--eval-trials` of every task |
| diagnose | `scripts/diagnose_policy.py`, `eval_world_model.py` | `<work-dir>/diagnosis.json` (open-loop chunks: as trained, one frame, no mask), `<work-dir>/world_model` (10 held-out demos, one per task) |
| ship | (copy) | `checkpoints/<name>`: the model folder, its LIBERO results and the commands, in the model card |

`--processor FOLDER` starts a new model from a tokenizer trained before (`train_vq.py`'s `<output>/processor`)
instead of training one: the vq stage is skipped and the `eval/` beside that folder is shipped as the model's
`vq_eval/`.

The demos come from random resets only, so the benchmark's 50 fixed initial states stay the evaluation set.

Training continues in rounds: `--continue-from MODEL` trains an earlier run's model (`<work-dir>/train/model`)
further on this run's demos (new ones with another `--seed`), keeping its tokenizer and action bins, so the vq and
init stages are skipped. The shipped checkpoint is such a chain. Every run writes its chain of rounds to
`<work-dir>/reproduce.json` (the earlier rounds from the `reproduce.json` of the model it continues, or of that
model's work dir); a shipped folder holds it too, its model card lists every round's commands in order, and its
`previous/` keeps the round before's card, curves and LIBERO results:

    python scripts/reproduce_checkpoint.py --work-dir runs/round1 --stages demos,vq,init,train
    python scripts/reproduce_checkpoint.py --work-dir runs/round2 --continue-from runs/round1/train/model --seed 1 \\
        --data-dir data/libero_spatial_64_seed1 --train-steps 2100 --learning-rate 5e-4 --eval-steps 700
"""

import argparse
import json
import logging
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from libero_sim.env import parse_task_ids  # noqa: E402
from libero_sim.expert import CLOSE_RISE, LIFT_HEIGHT  # noqa: E402
from worldvla_cli import HelpFormatter, configure_logging  # noqa: E402
from worldvla_results import write_json_atomically  # noqa: E402

STAGES = ("demos", "vq", "init", "train", "eval", "diagnose", "ship")
NUM_TASKS = 10  # in libero_spatial and in libero_object
logger = logging.getLogger("reproduce_checkpoint")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--work-dir", required=True, help="tokenizer, model, evaluation and logs of this run")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated stages to run, of {', '.join(STAGES)}")
    parser.add_argument("--workers", type=int, default=2, help="parallel processes for demos and evaluation")
    data = parser.add_argument_group("demos")
    data.add_argument("--suite", default="libero_spatial", choices=("libero_spatial", "libero_object"))
    data.add_argument("--tasks", default="all",
                      help="comma-separated task ids the demos and the evaluation cover (a specialist on a few tasks), "
                      "or 'all'")
    data.add_argument("--data-dir", default=None, help="demo folder (default: data/<suite>_<resolution>)")
    data.add_argument("--demos-per-task", type=int, default=20, help="random-reset demos per task")
    data.add_argument("--resolution", type=int, default=64, help="rendered frame side: the tokenizer's and the model's")
    data.add_argument("--seed", type=int, default=0, help="seed of the random resets")
    data.add_argument("--lift-height", type=float, default=LIFT_HEIGHT,
                      help="collect_demos.py --lift-height: how far the expert lifts an object before carrying it")
    data.add_argument("--close-rise", type=float, default=CLOSE_RISE,
                      help="collect_demos.py --close-rise: how far (m) the expert's hand rises at each step of closing")
    data.add_argument("--perturb", type=float, default=0.0,
                      help="collect_demos.py --perturb: demos with recoveries from perturbations at this rate per step")
    vq = parser.add_argument_group("image tokenizer")
    vq.add_argument("--vq-steps", type=int, default=1000)
    vq.add_argument("--vq-batch-size", type=int, default=16)
    vq.add_argument("--vq-learning-rate", type=float, default=1e-3)
    vq.add_argument("--processor", default=None,
                    help="a trained tokenizer's processor folder (train_vq.py's <output>/processor) to build the model "
                    "around, instead of the vq stage")
    model = parser.add_argument_group("model")
    model.add_argument("--layers", type=int, default=4)
    model.add_argument("--hidden-size", type=int, default=256)
    model.add_argument("--heads", type=int, default=4)
    model.add_argument("--chunk-size", type=int, default=5, help="K")
    model.add_argument("--history-frames", type=int, default=2, help="M")
    model.add_argument("--wrist-camera", action="store_true",
                       help="action prompts show each step's wrist-camera frame after its third-person frame (demos "
                       "rendered with both cameras); with --continue-from, a third-person model gets room for them")
    model.add_argument("--causal-action-mask", action="store_true",
                       help="a chunk's actions attend to the earlier ones (use_action_attention_mask=False; decoded "
                       "token by token): the paper's ablation of the action attention mask")
    train = parser.add_argument_group("training")
    train.add_argument("--sample-kinds", default="action,world_model",
                       help="train.py --sample-kinds: action, world_model or both (the paper's ablations)")
    train.add_argument("--continue-from", default=None, help="a trained model folder to train further (skips vq and init)")
    train.add_argument("--train-steps", type=int, default=2400)
    train.add_argument("--batch-size", type=int, default=16)
    train.add_argument("--learning-rate", type=float, default=1e-3)
    train.add_argument("--eval-steps", type=int, default=600, help="steps between validation passes and checkpoints")
    evaluation = parser.add_argument_group("evaluation and shipping")
    evaluation.add_argument("--eval-trials", default="0-9", help="fixed initial states per task (eval_libero.py --trials)")
    evaluation.add_argument("--name", default="worldvla-libero-spatial-64", help="folder under checkpoints/ to ship to")
    args = parser.parse_args(argv)
    if args.processor and args.continue_from:
        parser.error("--processor and --continue-from exclude each other: a continued model keeps its own tokenizer")
    if args.causal_action_mask and args.continue_from:
        parser.error("--causal-action-mask starts a new model: a continued model keeps its own attention mask")
    args.sample_kind_list = [kind.strip() for kind in args.sample_kinds.split(",") if kind.strip()]
    if not args.sample_kind_list or set(args.sample_kind_list) - {"action", "world_model"}:
        parser.error(f"--sample-kinds {args.sample_kinds!r}: choose action, world_model or both")
    try:
        args.task_ids = parse_task_ids(args.tasks, NUM_TASKS)
    except ValueError as error:
        parser.error(str(error))
    return args


def trained_processor(args):
    """The processor folder the init stage builds the model around: --processor, or the vq stage's output."""
    return Path(args.processor) if args.processor else Path(args.work_dir) / "vq" / "processor"


def tokenizer_evaluation(args):
    """The folder of the tokenizer's held-out metrics, shipped as the model's vq_eval/."""
    if args.continue_from:  # a continued model keeps its tokenizer: its evaluation is in the latest shipped folder
        commands = [shlex.split(round_["command"]) for round_ in reversed(rounds_of(args.continue_from)) if "command" in round_]
        continued = [args.continue_from] + [c[c.index("--continue-from") + 1] for c in commands if "--continue-from" in c]
        found = [Path(folder) / "vq_eval" for folder in continued if (Path(folder) / "vq_eval").is_dir()]
        return found[0] if found else Path(args.continue_from) / "vq_eval"
    if args.processor:  # a shipped tokenizer keeps its evaluation inside; train_vq.py's output beside the processor
        processor = Path(args.processor)
        return processor / "vq_eval" if (processor / "vq_eval").is_dir() else processor.parent / "eval"
    return Path(args.work_dir) / "vq" / "eval"


def wrist_camera_room(continue_from):
    """train.py options that make room for the wrist frames when a third-person model continues with the wrist
    camera: each of its history steps gains a frame."""
    if not continue_from:
        return []
    from configuration_worldvla import WorldVLAConfig

    config = WorldVLAConfig.from_pretrained(continue_from)
    if config.wrist_camera:
        return []
    room = config.max_position_embeddings + config.history_frames * config.image_sequence_length
    return ["--max-position-embeddings", str(room)]


def stage_commands(args):
    """{stage: [argv, ...]}: the commands each stage runs (several for parallel demo collection)."""
    work = Path(args.work_dir)
    data_dir = Path(args.data_dir or f"data/{args.suite}_{args.resolution}")
    python = sys.executable
    workers = min(args.workers, len(args.task_ids))
    task_groups = [",".join(str(t) for t in args.task_ids[w::workers]) for w in range(workers)]
    cameras = "agentview,eye_in_hand" if args.wrist_camera else "agentview"
    demos = [
        [python, "scripts/collect_demos.py", "--suite", args.suite, "--tasks", group, "--trials", "0",
         "--extra-random", str(args.demos_per_task), "--resolution", str(args.resolution), "--cameras", cameras,
         "--seed", str(args.seed), "--perturb", str(args.perturb), "--lift-height", str(args.lift_height),
         "--close-rise", str(args.close_rise), "--output-dir", str(data_dir)]
        for group in task_groups
    ]
    if args.continue_from:  # the earlier model brings its tokenizer, bins and weights
        vq, init, start = [], [], ["--model", str(args.continue_from)]
    else:
        vq = [] if args.processor else [[python, "train_vq.py", "--data-dir", str(data_dir), "--output-dir", str(work / "vq"),
               "--image-size", str(args.resolution), "--max-steps", str(args.vq_steps), "--batch-size", str(args.vq_batch_size),
               "--learning-rate", str(args.vq_learning_rate), "--warmup-steps", "50", "--eval-every", str(max(args.vq_steps // 5, 1)),
               "--save-every", str(max(args.vq_steps // 5, 1)), "--seed", str(args.seed)]]
        init = [[python, "scripts/build_small_checkpoint.py", "--processor", str(trained_processor(args)),
                 "--output-dir", str(work / "init"), "--layers", str(args.layers), "--hidden-size", str(args.hidden_size),
                 "--intermediate-size", str(4 * args.hidden_size), "--heads", str(args.heads),
                 "--chunk-size", str(args.chunk_size), "--history-frames", str(args.history_frames), "--seed", str(args.seed),
                 *(["--wrist-camera"] if args.wrist_camera else []),
                 *(["--causal-action-mask"] if args.causal_action_mask else [])]]
        start = ["--from-scratch-config", str(work / "init" / "config.json"), "--processor", str(work / "init")]
    if args.wrist_camera:
        start += ["--wrist-camera", *wrist_camera_room(args.continue_from)]
    train = [[python, "train.py", *start, "--data-dir", str(data_dir), "--data-cache-dir", str(work / "cache"), "--dataset-key", args.suite,
              "--val-split", "episodes", "--max-eval-samples", "512", "--output-dir", str(work / "train"),
              "--max-steps", str(args.train_steps), "--global-batch-size", str(args.batch_size),
              "--per-device-train-batch-size", str(min(args.batch_size, 16)), "--learning-rate", str(args.learning_rate),
              "--lr-scheduler-type", "cosine", "--warmup-steps", "0.05", "--weight-decay", "0.1", "--max-grad-norm", "1.0",
              "--eval-strategy", "steps", "--eval-steps", str(args.eval_steps), "--save-strategy", "steps",
              "--save-steps", str(args.eval_steps), "--save-total-limit", "2", "--logging-steps", "25",
              "--dataloader-num-workers", "0", "--seed", str(args.seed), "--report-to", "none", "--disable-tqdm", "true",
              "--sample-kinds", ",".join(args.sample_kind_list)]]
    # A model trained without one kind of sample is not evaluated as that kind: no policy, or no world model.
    acts, predicts_frames = "action" in args.sample_kind_list, "world_model" in args.sample_kind_list
    decoding = ["--decoding", "sequential"] if args.causal_action_mask else []
    evaluate = [[python, "eval_libero.py", "--model", str(work / "train" / "model"), "--suite", args.suite, "--tasks", args.tasks,
                 "--trials", args.eval_trials, "--num-workers", str(args.workers), "--threads", "1", *decoding,
                 "--output-dir", str(work / "eval")]] if acts else []
    model_dir = str(work / "train" / "model")
    diagnose = [
        [python, "scripts/diagnose_policy.py", "--model", model_dir, "--data-dir", str(data_dir), "--cache-dir", str(work / "cache"),
         "--val-split", "episodes", "--prompts", "128", "--output", str(work / "diagnosis.json")],
    ] if acts else []
    if predicts_frames:
        diagnose.append(
            [python, "eval_world_model.py", "--model", model_dir, "--data-dir", str(data_dir), "--val-split", "episodes",
             "--split", "val_ind", "--max-trajectories", "10", "--horizons", "10,50", "--batch-size", "4", "--threads", "1",
             "--output-dir", str(work / "world_model")])
    return {"demos": demos, "vq": vq, "init": init, "train": train, "eval": evaluate, "diagnose": diagnose}


def run_parallel(commands, log_dir, stage):
    """Runs the commands at once, each logging to its own file; raises if any fails."""
    log_dir.mkdir(parents=True, exist_ok=True)
    running = []
    for index, command in enumerate(commands):
        log = open(log_dir / f"{stage}{'' if len(commands) == 1 else f'_{index}'}.log", "a")
        logger.info("%s: %s", stage, shlex.join(command))
        running.append((command, log, subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)))
    failed = []
    for command, log, process in running:
        if process.wait() != 0:
            failed.append(f"{shlex.join(command)} (exit {process.returncode}, log {log.name})")
        log.close()
    if failed:
        raise SystemExit(f"stage {stage} failed: " + "; ".join(failed))


PREVIOUS_ROUND_FILES = ("README.md", "training_summary.json", "training_curves.png", "world_model_filmstrip.png", "eval", "previous")
ROUNDS_FILE = "reproduce.json"


def reproduce_command(argv):
    """This run's command line for every stage: `argv` without its --stages."""
    kept, skip_value = [], False
    for argument in argv:
        if skip_value:
            skip_value = False
        elif argument == "--stages":
            skip_value = True
        elif not argument.startswith("--stages="):
            kept.append(argument)
    return shlex.join(["python", "scripts/reproduce_checkpoint.py", *kept])


def stage_lines(commands):
    """Every stage's commands as a user types them (`python`, not this interpreter's path)."""
    return [
        shlex.join(["python", *command[1:]] if command[0] == sys.executable else command)
        for stage in commands.values()
        for command in stage
    ]


def rounds_of(model_dir):
    """The rounds that made `model_dir`, oldest first: its own ROUNDS_FILE (a shipped folder) or that of the work dir
    whose `train/model` it is. A model made elsewhere has no record: one entry names it as the start."""
    model_dir = Path(model_dir)
    records = [model_dir / ROUNDS_FILE]
    if model_dir.parent.name == "train":
        records.append(model_dir.parent.parent / ROUNDS_FILE)
    for record in records:
        if record.is_file():
            return json.loads(record.read_text())["rounds"]
    return [{"start": str(model_dir)}]


def this_run_rounds(args, commands, argv):
    """The chain this run's model belongs to: the rounds of the model it continues, then this run."""
    earlier = rounds_of(args.continue_from) if args.continue_from else []
    return earlier + [{"command": reproduce_command(argv), "stages": stage_lines(commands)}]


def rounds_markdown(rounds):
    """The model card's account of how to remake the model: every round's command, then what it runs."""
    start = f"It starts from `{rounds[0]['start']}`, whose commands are not recorded here. " if "start" in rounds[0] else ""
    made = [round_ for round_ in rounds if "command" in round_]
    lines = [
        f"{start}Made in {len(made)} round{'s' * (len(made) > 1)}"
        + (
            ", run in order, each continuing the model of the round before (`--continue-from` names where that model was"
            " when the round ran: the earlier round's `<work-dir>/train/model`, or the folder it was shipped as; where a"
            " later model has since been shipped to that folder, use the earlier round's `<work-dir>/train/model`)"
            if len(made) > 1
            else ""
        )
        + f"; `{ROUNDS_FILE}` holds the same commands.",
    ]
    for number, round_ in enumerate(made, start=1):
        stages = "\n".join(round_["stages"])
        lines.append(
            f"### Round {number}\n\n```bash\n{round_['command']}\n```\n\nwhich runs, stage by stage:\n\n```bash\n{stages}\n```"
        )
    return "\n\n".join(lines) + "\n"


def ship(args):
    """Copies the trained model into checkpoints/<name> with its LIBERO results and the commands of every round
    that made it; a model that continues an earlier one keeps that one's card, curves and results under previous/."""
    work = Path(args.work_dir)
    model_dir, eval_dir = work / "train" / "model", work / "eval"
    if not (eval_dir / "summary.json").is_file():
        raise SystemExit(f"nothing to ship: {eval_dir / 'summary.json'} does not exist (run the train and eval stages first)")
    summary = json.loads((eval_dir / "summary.json").read_text())
    target = ROOT / "checkpoints" / args.name
    staging = target.with_name(target.name + ".incomplete")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(model_dir, staging)
    (staging / "eval").mkdir()
    for name in ("results.md", "summary.json", "settings.json", "episodes.jsonl"):
        shutil.copy2(eval_dir / name, staging / "eval" / name)
    earlier = Path(args.continue_from) if args.continue_from else None
    vq_eval = tokenizer_evaluation(args)
    for name in ("metrics.json", "results.md", "reconstructions.png", "psnr_curve.png"):
        if (vq_eval / name).is_file():
            (staging / "vq_eval").mkdir(exist_ok=True)
            shutil.copy2(vq_eval / name, staging / "vq_eval" / name)
    if (work / "diagnosis.json").is_file():
        shutil.copy2(work / "diagnosis.json", staging / "eval" / "diagnosis.json")
    filmstrips = sorted((work / "world_model" / "videos").glob("*.png"))
    if filmstrips:
        shutil.copy2(filmstrips[0], staging / "world_model_filmstrip.png")
    world_model = ""
    if (work / "world_model" / "results.md").is_file():
        (staging / "eval" / "world_model").mkdir()
        for name in ("results.md", "summary.json", "metrics_per_frame.png"):
            if (work / "world_model" / name).is_file():
                shutil.copy2(work / "world_model" / name, staging / "eval" / "world_model" / name)
        # The report names this machine's absolute paths; the card names them from the repository's root.
        report = (work / "world_model" / "results.md").read_text().replace(f"{ROOT}/", "")
        world_model = f"\n## World model (held-out demos, `eval_world_model.py`; `eval/world_model/`)\n\n{report.strip()}\n"
    if earlier:
        for name in PREVIOUS_ROUND_FILES:
            source = earlier / name
            if source.is_dir():
                shutil.copytree(source, staging / "previous" / name)
            elif source.is_file():
                (staging / "previous").mkdir(exist_ok=True)
                shutil.copy2(source, staging / "previous" / name)
    shutil.copy2(work / ROUNDS_FILE, staging / ROUNDS_FILE)  # main() wrote this run's chain of rounds
    rounds = json.loads((work / ROUNDS_FILE).read_text())["rounds"]
    # train.py's card loads the model from where it was trained; the shipped card loads it from where it is shipped.
    card = (staging / "README.md").read_text().replace(repr(str(model_dir.resolve())), repr(f"checkpoints/{args.name}"))
    card += (
        f"\n## LIBERO ({args.suite}, fixed initial states {args.eval_trials} of "
        f"{'every task' if args.tasks == 'all' else 'tasks ' + args.tasks})\n\n"
        f"Success {summary['success_rate'] * 100:.1f}% over {summary['episodes']} episodes. Per task "
        f"(`eval/results.md`):\n\n{(eval_dir / 'results.md').read_text()}{world_model}\n"
        f"## Reproduce\n\n{rounds_markdown(rounds)}"
    )
    (staging / "README.md").write_text(card)
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
    logger.info("shipped %s (%.1f MB)", target, size / 1e6)
    if size > 100e6:
        raise SystemExit(f"{target} is {size / 1e6:.0f} MB: over the 100 MB a checkpoint in git may hold")


def main(argv=None):
    configure_logging()
    args = parse_args(argv)
    stages = [stage.strip() for stage in args.stages.split(",") if stage.strip()]
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        raise SystemExit(f"unknown stages {unknown}: choose from {', '.join(STAGES)}")
    commands = stage_commands(args)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    (work / "commands.json").write_text(json.dumps({stage: [shlex.join(c) for c in cs] for stage, cs in commands.items()}, indent=2))
    write_json_atomically(work / ROUNDS_FILE, {"rounds": this_run_rounds(args, commands, sys.argv[1:] if argv is None else argv)})
    for stage in STAGES:
        if stage not in stages:
            continue
        if stage == "ship":
            ship(args)
        elif stage == "vq" and (work / "vq" / "processor").is_dir() and (work / "vq" / "eval" / "metrics.json").is_file():
            logger.info("vq: %s exists, skipped", work / "vq" / "processor")
        elif stage == "train" and (work / "train" / "model").is_dir():
            logger.info("train: %s exists, skipped", work / "train" / "model")
        else:
            command_list = commands[stage]
            if not command_list:
                if stage == "eval":
                    reason = "the model was trained without action samples"
                elif args.continue_from:
                    reason = f"training continues {args.continue_from}"
                else:
                    reason = f"the tokenizer is {args.processor}"
                logger.info("%s: nothing to run (%s)", stage, reason)
                continue
            if stage == "train":
                from worldvla_training import last_complete_checkpoint

                if last_complete_checkpoint(work / "train"):
                    command_list = [command_list[0] + ["--resume-from-checkpoint", "last"]]
            run_parallel(command_list, work / "logs", stage)
        logger.info("stage %s done", stage)


if __name__ == "__main__":
    main()
