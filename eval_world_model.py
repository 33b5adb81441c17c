"""World-model evaluation of WorldVLA: autoregressive rollouts on ground-truth actions, against the truth.

    python eval_world_model.py --model PATH_OR_HUB_ID --data-dir demos/libero_goal --output-dir out/wm_goal
    python eval_world_model.py --model M --data-dir D --demos task_demo.hdf5:demo_3,task_demo.hdf5:demo_7 \\
        --horizons 10,50 --lpips-weights vgg16-397923af.pth --i3d-weights i3d_torchscript.pt --output-dir out/x

The paper's protocol (WorldVLA, world-model table; metric settings of RynnVLA-002's evaluation): for each held-out
trajectory (by default the release's validation split, `worldvla_data.split_episodes`: val_ind and val_ood), the
model starts from the true first frame and is given the trajectory's true actions one by one; each generated
frame's VQ codes are fed back as the next input (no decode / re-encode), greedy unless --do-sample. Frames are
prepared as for training (no-op steps dropped, the third-person frames rotated upright, resized to the model's
image size only when needed). Two baselines go in the same table: "gt_recons", the VQ reconstruction of each true
frame (the tokenizer's ceiling), and "repeat_first_frame" (a model that predicts no motion).

Metrics per frame (the clip of a horizon H is H frames: with --first-frame include, RynnVLA-002's clips, frame 0 is
the given frame followed by H - 1 generated ones; with exclude, the H generated frames 1 .. H): PSNR (value range
1, epsilon 1e-8), SSIM x100 (Gaussian window 11, sigma 1.5), LPIPS x100 (VGG, inputs in [-1, 1]; needs
--lpips-weights), averaged over the clip's frames then over trajectories; FVD between the I3D features of the true
clips and of each method's clips (needs --i3d-weights). Nothing is ever downloaded.

Outputs in --output-dir: settings.json (a rerun with other settings is an error naming the difference),
trajectories.jsonl (one line per trajectory, appended with one fsync'd write; a rerun skips finished trajectories
and drops a line truncated by a crash), features/ (I3D features per trajectory), videos/ (truth | prediction, and a PNG filmstrip: truth above prediction),
summary.json, results.md (the paper's table layout) and metrics_per_frame.png.
"""

import argparse
import hashlib
import itertools
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from worldvla_cli import HelpFormatter, configure_logging
from worldvla_results import append_jsonl, read_jsonl, write_text_atomically

logger = logging.getLogger("eval_world_model")

SETTINGS_FILE = "settings.json"
TRAJECTORIES_FILE = "trajectories.jsonl"
SUMMARY_FILE = "summary.json"
RESULTS_FILE = "results.md"
PLOT_FILE = "metrics_per_frame.png"
FEATURES_DIR = "features"
VIDEOS_DIR = "videos"
FORMAT_VERSION = 1

METHODS = ("prediction", "gt_recons", "repeat_first_frame")
METHOD_LABELS = {"prediction": "prediction", "gt_recons": "gt_recons", "repeat_first_frame": "repeat first frame"}
FRAME_METRICS = ("psnr", "ssim", "lpips")
METRIC_LABELS = {"fvd": "FVD", "psnr": "PSNR", "ssim": "SSIM", "lpips": "LPIPS"}
SPLIT_CHOICES = ("held_out", "val_ind", "val_ood", "train", "all")
VQ_BATCH_SIZE = 32
# The paper's world-model table (WorldVLA, 256 px "action world model" row), shown under ours for comparison.
PAPER_ACTION_WORLD_MODEL = {10: {"fvd": 255.1, "psnr": 29.77, "ssim": 90.40, "lpips": 11.94},
                            50: {"fvd": 674.1, "psnr": 24.30, "ssim": 83.55, "lpips": 15.44}}


class EvaluationError(ValueError):
    """Bad inputs or settings; the message says what and where (file, demo, setting)."""


# ---------------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------------


def positive_int_list(text):
    try:
        values = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or values[0] < 1:
        raise argparse.ArgumentTypeError(f"horizons must be positive integers, got {text!r}")
    return values


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--data-dir", required=True, help="folder of LIBERO-format <task>_demo.hdf5 files")
    data.add_argument(
        "--split", choices=SPLIT_CHOICES, default="held_out",
        help="which trajectories of the folder (worldvla_data.split_episodes); held_out = val_ind + val_ood",
    )
    data.add_argument(
        "--val-split", choices=("release", "episodes"), default="release",
        help="the rule the model's train.py run held episodes out with (its --val-split)",
    )
    data.add_argument(
        "--demos", default=None,
        help="named trajectories instead of a split: FILE:DEMO[,FILE:DEMO...], FILE relative to --data-dir "
        "(e.g. task_demo.hdf5:demo_3,task_demo.hdf5:demo_7)",
    )
    data.add_argument("--max-trajectories", type=int, default=None, help="evaluate N of the selected, taken from each task in turn (an even spread)")
    data.add_argument(
        "--skip-short", action="store_true",
        help="skip (with a warning) trajectories shorter than the longest horizon instead of stopping with an error",
    )
    protocol = parser.add_argument_group("protocol")
    protocol.add_argument("--horizons", type=positive_int_list, default=[10, 50], help="clip lengths in frames")
    protocol.add_argument(
        "--first-frame", choices=("include", "exclude"), default="include",
        help="include: a clip is the given first frame then generated ones (RynnVLA-002's videos, the paper's "
        "numbers); exclude: only generated frames",
    )
    protocol.add_argument("--do-sample", action="store_true", help="sample the image tokens instead of greedy decoding")
    protocol.add_argument("--temperature", type=float, default=None, help="with --do-sample")
    protocol.add_argument("--top-k", type=int, default=None, help="with --do-sample")
    protocol.add_argument("--top-p", type=float, default=None, help="with --do-sample")
    protocol.add_argument("--seed", type=int, default=0, help="torch seed of each batch (matters with --do-sample)")
    protocol.add_argument("--unnorm-key", default=None, help="action statistics to normalise with (default: the processor's)")
    model = parser.add_argument_group("model")
    model.add_argument("--model", required=True, help="local folder or Hugging Face Hub id of a WorldVLA checkpoint")
    model.add_argument("--revision", default=None, help="Hub revision of --model")
    model.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32", help="model weights dtype")
    model.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: CUDA when present")
    model.add_argument("--batch-size", type=int, default=4, help="trajectories generated together")
    model.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    metrics = parser.add_argument_group("metrics")
    metrics.add_argument(
        "--lpips-weights", default=None,
        help="torchvision VGG16 state dict (vgg16-397923af.pth) for LPIPS; without it LPIPS is n/a",
    )
    metrics.add_argument("--i3d-weights", default=None, help="I3D TorchScript detector (i3d_torchscript.pt) for FVD; without it FVD is n/a")
    output = parser.add_argument_group("output")
    output.add_argument("--output-dir", required=True, help="results folder; rerunning into it resumes")
    output.add_argument("--no-video", action="store_true", help="do not write the truth | prediction videos")
    output.add_argument("--video-fps", type=int, default=10)
    return parser


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    if args.max_trajectories is not None and args.max_trajectories < 1:
        parser.error("--max-trajectories must be at least 1")
    if args.first_frame == "include" and args.horizons[0] < 2:
        parser.error("with --first-frame include a horizon needs at least 2 frames (the given one and one generated)")
    if not args.do_sample and any(v is not None for v in (args.temperature, args.top_k, args.top_p)):
        parser.error("--temperature, --top-k and --top-p need --do-sample")
    if not Path(args.data_dir).is_dir():
        parser.error(f"--data-dir {args.data_dir} is not a folder")
    for option in ("lpips_weights", "i3d_weights"):
        path = getattr(args, option)
        if path is not None and not Path(path).is_file():
            parser.error(f"--{option.replace('_', '-')} {path} does not exist (weights are never downloaded)")
    return args


# ---------------------------------------------------------------------------------------------------------------------
# Selecting and validating trajectories (before any model is loaded)
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class Trajectory:
    path: Path
    demo: str
    task: str
    split: str
    length: int = 0  # steps after the no-op filter
    raw_length: int = 0
    instruction: str = ""

    @property
    def id(self):
        return f"{self.task}/{self.demo}"


def demo_names(file, path):
    import worldvla_data

    if "data" not in file:
        raise EvaluationError(f"{path}: no 'data' group (not a LIBERO demonstration file)")
    names = sorted((n for n in file["data"] if worldvla_data.demo_number(n) is not None), key=worldvla_data.demo_number)
    if not names:
        raise EvaluationError(f"{path}: no data/demo_N groups")
    return names


def folder_trajectories(data_dir, validation="release"):
    """Every trajectory of the folder in the order the training split counts them, with its split name under
    `validation`, the rule train.py held episodes out with (its --val-split)."""
    import worldvla_data

    try:
        files = worldvla_data.list_task_files(data_dir)
    except worldvla_data.LiberoDataError as error:
        raise EvaluationError(str(error)) from None
    listed = []
    for path in files:
        with worldvla_data.open_libero_file(path) as file:
            listed += [(path, demo) for demo in demo_names(file, path)]
    tasks = [worldvla_data.task_name(path) for path, _ in listed]
    splits = worldvla_data.split_episodes(tasks, validation)
    return [Trajectory(path, demo, task, split) for (path, demo), task, split in zip(listed, tasks, splits)]


def parse_demo_list(spec, data_dir):
    """FILE:DEMO[,FILE:DEMO...] -> [(path, demo)], FILE relative to data_dir unless absolute."""
    entries = []
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        file_name, separator, demo = item.rpartition(":")
        if not separator or not file_name or not demo:
            raise EvaluationError(f"--demos entry {item!r} is not FILE:DEMO (e.g. task_demo.hdf5:demo_3)")
        path = Path(file_name) if Path(file_name).is_absolute() else Path(data_dir) / file_name
        if not path.is_file():
            raise EvaluationError(f"--demos entry {item!r}: no file {path}")
        entries.append((path, demo))
    if not entries:
        raise EvaluationError("--demos names no trajectory")
    return entries


def select_trajectories(args):
    import worldvla_data

    everything = folder_trajectories(args.data_dir, args.val_split)
    if args.demos:
        by_key = {(t.path.resolve(), t.demo): t for t in everything}
        selected = []
        for path, demo in parse_demo_list(args.demos, args.data_dir):
            known = by_key.get((path.resolve(), demo))
            selected.append(known or Trajectory(path, demo, worldvla_data.task_name(path), "named"))
    elif args.split == "all":
        selected = everything
    else:
        wanted = ("val_ind", "val_ood") if args.split == "held_out" else (args.split,)
        selected = [t for t in everything if t.split in wanted]
        if not selected:
            raise EvaluationError(
                f"no {args.split} trajectories in {args.data_dir}: the release's split holds out the last 10% of each "
                "task's episodes (none with fewer than 10) and the last 10% of tasks (none with fewer than 10); "
                "name trajectories with --demos or use --split all"
            )
    ids = [t.id for t in selected]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise EvaluationError(f"trajectories named twice: {duplicates}")
    if args.max_trajectories:
        selected = spread_over_tasks(selected)[: args.max_trajectories]
    return selected


def spread_over_tasks(trajectories):
    """The trajectories reordered round-robin over their files (tasks): the first of each task, then the second..."""
    by_task = {}
    for trajectory in trajectories:
        by_task.setdefault(trajectory.path, []).append(trajectory)
    rounds = itertools.zip_longest(*by_task.values())
    return [trajectory for round_ in rounds for trajectory in round_ if trajectory is not None]


def frames_needed(horizons, first_frame):
    """True frames a trajectory must have: the longest clip, plus the given first frame when it is not in the clip."""
    return max(horizons) + (0 if first_frame == "include" else 1)


def inspect_trajectory(trajectory):
    """Fill in the trajectory's length after the no-op filter, checking its keys without reading its frames."""
    import numpy as np
    import worldvla_data

    where = f"{trajectory.path}, data/{trajectory.demo}"
    with worldvla_data.open_libero_file(trajectory.path) as file:
        if "data" not in file or trajectory.demo not in file["data"]:
            raise EvaluationError(f"{trajectory.path}: no data/{trajectory.demo} (has {demo_names(file, trajectory.path)})")
        group = file["data"][trajectory.demo]
        missing = [key for key in worldvla_data.REQUIRED_DEMO_KEYS if key not in group]
        if missing:
            raise EvaluationError(
                f"{where}: missing {missing} (the world-model evaluation needs {list(worldvla_data.REQUIRED_DEMO_KEYS)}: "
                "the actions and the third-person camera)"
            )
        actions = np.asarray(group["actions"][()], dtype=np.float64)
        frames = group[worldvla_data.THIRD_PERSON_FRAMES]
        if actions.ndim != 2 or actions.shape[1] != 7:
            raise EvaluationError(f"{where}: actions must have shape (T, 7), got {actions.shape}")
        if len(frames.shape) != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise EvaluationError(
                f"{where}: {worldvla_data.THIRD_PERSON_FRAMES} must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}"
            )
        if frames.shape[0] != len(actions):
            raise EvaluationError(f"{where}: {len(actions)} actions but {frames.shape[0]} frames")
        if not np.isfinite(actions).all():
            raise EvaluationError(f"{where}: actions contain NaN or inf")
        trajectory.raw_length = len(actions)
        expert_actions = group[worldvla_data.EXPERT_ACTIONS][()] if worldvla_data.EXPERT_ACTIONS in group else actions
        trajectory.length = int(worldvla_data.kept_steps(actions, np.asarray(expert_actions, dtype=np.float64)).sum())
        try:
            trajectory.instruction = worldvla_data.read_instruction(file, trajectory.path)
            upright(file, trajectory.path, np.zeros((0, 1, 1, 3), np.uint8))  # checks the file's image convention
        except worldvla_data.LiberoDataError as error:
            raise EvaluationError(str(error)) from None


def validate_trajectories(trajectories, args):
    """Check every selected trajectory; short ones are an error (or skipped with a warning under --skip-short)."""
    from tqdm.auto import tqdm

    for trajectory in tqdm(trajectories, desc="checking trajectories", unit="trajectory", leave=False):
        inspect_trajectory(trajectory)
    needed = frames_needed(args.horizons, args.first_frame)
    short = [t for t in trajectories if t.length < needed]
    if short:
        described = ", ".join(f"{t.path.name}:{t.demo} ({t.length} frames)" for t in short[:10])
        more = f" and {len(short) - 10} more" if len(short) > 10 else ""
        message = (
            f"{len(short)} trajectories are shorter than the longest horizon ({max(args.horizons)} frames, "
            f"{needed} true frames needed after dropping no-op steps): {described}{more}"
        )
        if not args.skip_short:
            raise EvaluationError(message + "; use --skip-short to leave them out or shorten --horizons")
        logger.warning("Skipping %s", message)
        trajectories = [t for t in trajectories if t.length >= needed]
        if not trajectories:
            raise EvaluationError("every selected trajectory is shorter than the longest horizon")
    return trajectories


# ---------------------------------------------------------------------------------------------------------------------
# Settings of a results folder
# ---------------------------------------------------------------------------------------------------------------------


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_record(path):
    return None if path is None else {"path": str(Path(path).resolve()), "sha256": file_sha256(path)}


def build_settings(args, trajectories):
    import worldvla_metrics as metrics

    model = str(Path(args.model).resolve()) if Path(args.model).exists() else args.model
    settings = {
        "format_version": FORMAT_VERSION,
        "model": model,
        "revision": args.revision,
        "dtype": args.dtype,
        "data_dir": str(Path(args.data_dir).resolve()),
        "trajectories": [t.id for t in trajectories],
        "horizons": list(args.horizons),
        "first_frame": args.first_frame,
        "do_sample": args.do_sample,
        "generation": {"temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p},
        "seed": args.seed,
        "unnorm_key": args.unnorm_key,
        "metrics": {
            "data_range": metrics.DATA_RANGE,
            "psnr_epsilon": metrics.PSNR_EPSILON,
            "ssim_kernel_size": metrics.SSIM_KERNEL_SIZE,
            "ssim_sigma": metrics.SSIM_SIGMA,
            "lpips": weights_record(args.lpips_weights),
            "i3d": weights_record(args.i3d_weights),
            "fvd_covariance_epsilon": metrics.FVD_COVARIANCE_EPSILON,
        },
    }
    if args.do_sample:
        settings["batch_size"] = args.batch_size  # sampled tokens depend on which trajectories share a batch
    return settings


def flatten(mapping, prefix=""):
    flat = {}
    for key, value in mapping.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def settings_differences(old, new):
    old_flat, new_flat = flatten(old), flatten(new)
    differences = []
    for key in sorted(set(old_flat) | set(new_flat)):
        before, after = old_flat.get(key, "<absent>"), new_flat.get(key, "<absent>")
        if before != after:
            if key == "trajectories":
                added = [t for t in after if t not in before] if isinstance(after, list) and isinstance(before, list) else []
                removed = [t for t in before if t not in after] if isinstance(after, list) and isinstance(before, list) else []
                differences.append(f"trajectories: {len(before)} in the folder, {len(after)} now "
                                   f"(added {added[:3]}, removed {removed[:3]})")
            else:
                differences.append(f"{key}: {before!r} in the folder, {after!r} now")
    return differences


def check_or_write_settings(output_dir, settings):
    path = output_dir / SETTINGS_FILE
    if path.exists():
        old = json.loads(path.read_text())
        differences = settings_differences(old, settings)
        if differences:
            raise EvaluationError(
                f"{output_dir} holds results of other settings; rerun into another --output-dir, or with the same "
                "settings to resume. Differences: " + "; ".join(differences)
            )
        return
    output_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomically(path, json.dumps(settings, indent=2) + "\n")


# ---------------------------------------------------------------------------------------------------------------------
# Results files
# ---------------------------------------------------------------------------------------------------------------------


def safe_name(trajectory_id):
    return trajectory_id.replace("/", "__")


def save_features(output_dir, trajectory_id, features):
    import numpy as np

    folder = output_dir / FEATURES_DIR
    folder.mkdir(exist_ok=True)
    name = safe_name(trajectory_id) + ".npz"
    temporary = folder / ("partial_" + name)
    with open(temporary, "wb") as stream:
        np.savez(stream, **features)
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(temporary, folder / name)
    return f"{FEATURES_DIR}/{name}"


def write_video(output_dir, trajectory_id, truth, prediction, fps):
    import imageio
    import numpy as np

    folder = output_dir / VIDEOS_DIR
    folder.mkdir(exist_ok=True)
    name = safe_name(trajectory_id) + ".mp4"
    temporary = folder / ("partial_" + name)
    frames = np.concatenate([truth, prediction], axis=2)  # (T, H, 2W, 3): truth | prediction
    imageio.mimwrite(temporary, list(frames), fps=fps)
    os.replace(temporary, folder / name)
    return f"{VIDEOS_DIR}/{name}"


def write_filmstrip(output_dir, trajectory_id, truth, prediction, columns=8):
    """A PNG next to the video: true frames above predicted ones, `columns` steps evenly spread, upscaled to
    at least 128 px so that a 64-px frame can be read."""
    import numpy as np
    from PIL import Image

    steps = np.linspace(0, len(truth) - 1, min(columns, len(truth))).round().astype(int)
    grid = np.concatenate([np.concatenate(list(truth[steps]), axis=1), np.concatenate(list(prediction[steps]), axis=1)], axis=0)
    scale = max(1, -(-128 // truth.shape[1]))
    image = Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST)
    folder = output_dir / VIDEOS_DIR
    folder.mkdir(exist_ok=True)
    name = safe_name(trajectory_id) + ".png"
    temporary = folder / ("partial_" + name)
    image.save(temporary, format="png")
    os.replace(temporary, folder / name)
    return f"{VIDEOS_DIR}/{name}", [int(step) for step in steps]


def finished_ids(output_dir, records, need_features):
    done = set()
    for record in records:
        features = record.get("features")
        if need_features and (features is None or not (output_dir / features).exists()):
            continue
        done.add(record["trajectory"])
    return done


# ---------------------------------------------------------------------------------------------------------------------
# Rollouts and metrics
# ---------------------------------------------------------------------------------------------------------------------


def upright(file, path, frames):
    """The training pipeline's orientation rule for a file's third-person frames (its image convention)."""
    import worldvla_data

    return worldvla_data.upright_frames(frames, worldvla_data.read_image_convention(file, path))


_warned_resize = set()


def load_episode_frames(trajectory, image_size, num_frames):
    """(frames (num_frames, S, S, 3) uint8, actions (num_frames, 7)) prepared as `worldvla_data.read_libero_file`
    prepares them for training (no-op steps dropped with their frames, upright, resized only when needed), reading
    only this demo."""
    import worldvla_data

    with worldvla_data.open_libero_file(trajectory.path) as file:
        actions, expert_actions, camera_frames = worldvla_data.read_demo(file["data"][trajectory.demo], trajectory.path, trajectory.demo)
        frames = camera_frames[worldvla_data.THIRD_PERSON_FRAMES]
        keep = worldvla_data.kept_steps(actions, expert_actions)
        frames = upright(file, trajectory.path, frames[keep][:num_frames])
    if frames.shape[1:3] != (image_size, image_size) and trajectory.path not in _warned_resize:
        _warned_resize.add(trajectory.path)
        logger.warning(
            "%s: frames are stored at %dx%d, the model takes %dx%d: resizing (bicubic), as training does",
            trajectory.path, frames.shape[1], frames.shape[2], image_size, image_size,
        )
    return worldvla_data.resize_frames(frames, image_size), actions[keep][:num_frames]


@dataclass
class Models:
    model: object
    processor: object
    device: str
    generation_kwargs: dict = field(default_factory=dict)
    unnorm_key: str = None
    lpips: object = None
    i3d: object = None


def rollout_codes(models, first_codes, actions, do_sample=False, progress=None):
    """Codes (B, N, h, w) of N frames imagined from first codes (B, h, w) under actions (B, N, 7), fed back as codes.

    Each step builds B right-padded world-model prompts (`build_world_model_inputs_from_codes`) and generates their
    next frames together (`generate_image_tokens`, (B, image_sequence_length) tokens).
    """
    import torch

    model, processor = models.model, models.processor
    codes, generated = first_codes, []
    for step in range(actions.shape[1]):
        inputs = processor.build_world_model_inputs_from_codes(list(codes), actions[:, step], unnorm_key=models.unnorm_key)
        tokens = model.generate_image_tokens(
            inputs["input_ids"].to(models.device), inputs["attention_mask"].to(models.device),
            do_sample=do_sample, **models.generation_kwargs,
        ).cpu()
        codes = torch.stack([processor.image_tokens_to_codes(row) for row in tokens])
        generated.append(codes)
        if progress is not None:
            progress.update(1)
    return torch.stack(generated, dim=1)


def encode_frames(processor, frames):
    import torch

    return torch.cat([processor.encode_images(list(frames[i : i + VQ_BATCH_SIZE])) for i in range(0, len(frames), VQ_BATCH_SIZE)])


def decode_codes(processor, codes):
    import numpy as np

    return np.concatenate([processor.decode_image_codes(codes[i : i + VQ_BATCH_SIZE]) for i in range(0, len(codes), VQ_BATCH_SIZE)])


def method_clips(truth_frames, predicted_frames, reconstructed_frames, clip_length, first_frame):
    """The clips compared with the truth clip: {"truth", method: (clip_length, H, W, 3)}.

    include: truth frames 0 .. L-1; the prediction is the given frame then L-1 generated frames; gt_recons the VQ
    reconstruction of the truth clip; repeat_first_frame the given frame L times.
    exclude: truth frames 1 .. L, the L generated frames, their reconstructions, the given frame L times.
    """
    import numpy as np

    if first_frame == "include":
        truth = truth_frames[:clip_length]
        prediction = np.concatenate([truth_frames[:1], predicted_frames[: clip_length - 1]])
    else:
        truth = truth_frames[1 : clip_length + 1]
        prediction = predicted_frames[:clip_length]
    repeat = np.repeat(truth_frames[:1], clip_length, axis=0)
    return {"truth": truth, "prediction": prediction, "gt_recons": reconstructed_frames, "repeat_first_frame": repeat}


def frame_metrics(models, clips):
    """{method: {metric: [value per frame]}} (LPIPS None without weights)."""
    import worldvla_metrics as metrics

    values = {}
    for method in METHODS:
        values[method] = {
            "psnr": metrics.psnr_with_epsilon(clips[method], clips["truth"]).tolist(),
            "ssim": metrics.ssim(clips[method], clips["truth"]).tolist(),
            "lpips": None if models.lpips is None else models.lpips(clips[method], clips["truth"]).tolist(),
        }
    return values


def horizon_means(per_frame, horizons):
    import numpy as np

    means = {}
    for horizon in horizons:
        means[str(horizon)] = {
            method: {
                metric: (None if per_frame[method][metric] is None else float(np.mean(per_frame[method][metric][:horizon])))
                for metric in FRAME_METRICS
            }
            for method in METHODS
        }
    return means


def clip_features(models, clips, horizons):
    import numpy as np

    features = {}
    for horizon in horizons:
        videos = np.stack([clips[name][:horizon] for name in ("truth", *METHODS)])
        try:
            values = models.i3d(videos)
        except Exception as error:
            raise RuntimeError(f"the I3D detector failed on clips of {horizon} frames ({videos.shape}): {error}") from error
        for name, value in zip(("truth", *METHODS), values):
            features[f"{name}_{horizon}"] = value.astype(np.float32)
    return features


def evaluate_batch(models, batch, args, output_dir):
    """Roll out, score and record one batch of trajectories; returns their records."""
    import numpy as np
    import torch

    image_size = int(models.model.config.image_size)
    clip_length = max(args.horizons)
    steps = clip_length - 1 if args.first_frame == "include" else clip_length
    start = time.time()
    loaded = [load_episode_frames(t, image_size, steps + 1) for t in batch]
    truth = np.stack([frames for frames, _ in loaded])  # (B, steps + 1, S, S, 3)
    actions = np.stack([episode_actions[:steps] for _, episode_actions in loaded])  # (B, steps, 7)

    torch.manual_seed(args.seed)
    first_codes = encode_frames(models.processor, truth[:, 0])
    generation_start = time.time()
    with tqdm_steps(steps, len(batch)) as steps_bar:
        codes = rollout_codes(models, first_codes, actions, args.do_sample, steps_bar)
    generation_seconds = time.time() - generation_start
    height, width = codes.shape[-2:]
    predicted = decode_codes(models.processor, codes.reshape(-1, height, width)).reshape(len(batch), steps, image_size, image_size, 3)

    shared_seconds = (time.time() - start) / len(batch)  # reading, generating and decoding, split evenly
    records = []
    for index, trajectory in enumerate(batch):
        own_start = time.time()
        truth_clip_frames = truth[index, :clip_length] if args.first_frame == "include" else truth[index, 1 : clip_length + 1]
        reconstructed = decode_codes(models.processor, encode_frames(models.processor, truth_clip_frames))
        clips = method_clips(truth[index], predicted[index], reconstructed, clip_length, args.first_frame)
        per_frame = frame_metrics(models, clips)
        record = {
            "trajectory": trajectory.id,
            "file": trajectory.path.name,
            "demo": trajectory.demo,
            "task": trajectory.task,
            "split": trajectory.split,
            "instruction": trajectory.instruction,
            "length": trajectory.length,
            "raw_length": trajectory.raw_length,
            "generated_frames": steps,
            "frame_index": list(range(clip_length)) if args.first_frame == "include" else list(range(1, clip_length + 1)),
            "per_frame": per_frame,
            "horizons": horizon_means(per_frame, args.horizons),
            "features": None,
            "video": None,
            "batch_size": len(batch),
            "generation_seconds": round(generation_seconds / len(batch), 3),
            "seconds": None,
        }
        if models.i3d is not None:
            record["features"] = save_features(output_dir, trajectory.id, clip_features(models, clips, args.horizons))
        if not args.no_video:
            record["video"] = write_video(output_dir, trajectory.id, clips["truth"], clips["prediction"], args.video_fps)
            record["filmstrip"], record["filmstrip_frames"] = write_filmstrip(output_dir, trajectory.id, clips["truth"], clips["prediction"])
        record["seconds"] = round(shared_seconds + time.time() - own_start, 3)
        records.append(record)
    return records


class tqdm_steps:
    """A transient per-batch progress bar over the rollout's steps."""

    def __init__(self, steps, batch):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=steps, desc=f"rollout (batch of {batch})", unit="frame", leave=False)

    def __enter__(self):
        return self.bar

    def __exit__(self, *exc):
        self.bar.close()


# ---------------------------------------------------------------------------------------------------------------------
# Summary, table and plot
# ---------------------------------------------------------------------------------------------------------------------


def aggregate(records, horizons, output_dir, with_fvd):
    """Means over trajectories of each method's metrics at each horizon; FVD over the trajectories' clips."""
    import numpy as np
    import worldvla_metrics as metrics

    table = {}
    features = {}
    if with_fvd and records:
        loaded = [np.load(output_dir / record["features"]) for record in records]
        features = {key: np.stack([item[key] for item in loaded]) for key in loaded[0].files}
    for horizon in horizons:
        table[str(horizon)] = {}
        for method in METHODS:
            entry = {}
            for metric in FRAME_METRICS:
                values = [record["horizons"][str(horizon)][method][metric] for record in records]
                entry[metric] = None if not values or any(v is None for v in values) else float(np.mean(values))
            entry["fvd"] = None
            if features and len(records) >= 2:
                entry["fvd"] = metrics.fvd(features[f"truth_{horizon}"], features[f"{method}_{horizon}"])
            table[str(horizon)][method] = entry
    return table


def per_frame_curves(records):
    import numpy as np

    if not records:
        return {}
    curves = {"frame_index": records[0]["frame_index"]}
    for method in METHODS:
        curves[method] = {}
        for metric in FRAME_METRICS:
            rows = [record["per_frame"][method][metric] for record in records]
            curves[method][metric] = None if any(r is None for r in rows) else np.mean(np.array(rows), axis=0).tolist()
    return curves


def summarize(records, settings, notes, output_dir):
    import numpy as np

    horizons = settings["horizons"]
    with_fvd = settings["metrics"]["i3d"] is not None
    splits = sorted({record["split"] for record in records})
    summary = {
        "settings": settings,
        "trajectories": len(records),
        "trajectories_by_split": {split: sum(r["split"] == split for r in records) for split in splits},
        "metrics": aggregate(records, horizons, output_dir, with_fvd),
        "by_split": {},
        "per_frame": per_frame_curves(records),
        "generation_seconds_per_frame": (
            float(np.mean([r["generation_seconds"] / max(r["generated_frames"], 1) for r in records])) if records else None
        ),
        "notes": notes,
    }
    if len(splits) > 1:
        for split in splits:
            subset = [r for r in records if r["split"] == split]
            summary["by_split"][split] = aggregate(subset, horizons, output_dir, with_fvd)
    return summary


def format_value(value, digits=2):
    return "n/a" if value is None else f"{value:.{digits}f}"


def metrics_table(metrics_by_horizon, horizons, extra_rows=()):
    header = ["method"]
    for horizon in horizons:
        header += [f"FVD ({horizon} fr) ↓", "PSNR ↑", "SSIM ↑", "LPIPS ↓"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method in METHODS:
        cells = [METHOD_LABELS[method]]
        for horizon in horizons:
            entry = metrics_by_horizon[str(horizon)][method]
            cells += [format_value(entry["fvd"], 1), format_value(entry["psnr"]), format_value(entry["ssim"]),
                      format_value(entry["lpips"])]
        lines.append("| " + " | ".join(cells) + " |")
    for label, values in extra_rows:
        cells = [label]
        for horizon in horizons:
            entry = values.get(horizon)
            cells += ["-"] * 4 if entry is None else [format_value(entry[m], 1 if m == "fvd" else 2) for m in ("fvd", "psnr", "ssim", "lpips")]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def results_markdown(summary):
    settings = summary["settings"]
    horizons = settings["horizons"]
    convention = (
        "a clip of H frames is the given first frame followed by H - 1 generated frames (RynnVLA-002's videos)"
        if settings["first_frame"] == "include"
        else "a clip of H frames holds the H generated frames 1 .. H (the given frame left out)"
    )
    by_split = ", ".join(f"{count} {split}" for split, count in summary["trajectories_by_split"].items())
    decoding = "sampled" if settings["do_sample"] else "greedy"
    lines = [
        "# World model: autoregressive rollouts on ground-truth actions",
        "",
        f"Model `{settings['model']}`; data `{settings['data_dir']}`; {summary['trajectories']} trajectories ({by_split}); "
        f"{decoding} decoding, generated codes fed back; {convention}.",
        "",
    ]
    paper = [("paper: action world model (WorldVLA)", PAPER_ACTION_WORLD_MODEL)] if set(horizons) <= {10, 50} else []
    lines += metrics_table(summary["metrics"], horizons, paper)
    lines += [
        "",
        "PSNR in dB (value range 1, epsilon 1e-8); SSIM x100 (Gaussian window 11, sigma 1.5); LPIPS x100 (VGG16, "
        "inputs in [-1, 1]); FVD: Frechet distance of I3D features of the true and the method's clips (float64, "
        "real part of the matrix square root, 1e-6 on the covariance diagonals). Per-frame metrics are averaged over "
        "a clip's frames, then over trajectories.",
    ]
    if summary["trajectories"] and summary["metrics"][str(horizons[0])]["prediction"]["fvd"] is not None:
        lines.append(
            f"FVD from {summary['trajectories']} clips per method: with fewer clips than feature dimensions (400) the "
            "covariances are rank-deficient, so compare FVD only between runs on the same trajectories."
        )
    for note in summary["notes"]:
        lines.append(f"**Note:** {note}")
    for split, metrics_by_horizon in summary["by_split"].items():
        lines += ["", f"## {split} ({summary['trajectories_by_split'][split]} trajectories)", ""]
        lines += metrics_table(metrics_by_horizon, horizons)
    return "\n".join(lines) + "\n"


def plot_per_frame(summary, path):
    """PNG of each metric against the frame index, one line per method, the horizons marked."""
    curves = summary["per_frame"]
    if not curves:
        return False
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: no %s", path.name)
        return False
    from matplotlib.ticker import MaxNLocator

    shown = [m for m in FRAME_METRICS if curves["prediction"][m] is not None]
    figure, axes = plt.subplots(1, len(shown), figsize=(5 * len(shown), 3.6), squeeze=False)
    units = {"psnr": "PSNR (dB) ↑", "ssim": "SSIM x100 ↑", "lpips": "LPIPS x100 ↓"}
    # Frame 0 of an "include" clip is the given frame (80 dB, SSIM 100 for the prediction): left out of the plot.
    first = 1 if curves["frame_index"][0] == 0 else 0
    for axis, metric in zip(axes[0], shown):
        for method in METHODS:
            axis.plot(curves["frame_index"][first:], curves[method][metric][first:], label=METHOD_LABELS[method], marker=".")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        for horizon in summary["settings"]["horizons"]:
            edge = horizon - 1 if summary["settings"]["first_frame"] == "include" else horizon
            axis.axvline(edge, color="grey", linestyle=":", linewidth=1)
        axis.set_xlabel("frame index (frame 0 is the given frame)")
        axis.set_ylabel(units[metric])
        axis.grid(alpha=0.3)
    axes[0][0].legend()
    figure.suptitle(f"world-model rollouts, mean over {summary['trajectories']} trajectories")
    figure.tight_layout()
    temporary = path.with_name("partial_" + path.name)
    figure.savefig(temporary, format="png", dpi=100)
    plt.close(figure)
    os.replace(temporary, path)
    return True


# ---------------------------------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------------------------------


def resolve_device(device):
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise EvaluationError("--device cuda, but torch sees no CUDA device")
    return device


def load_models(args, device):
    import torch
    from transformers import AutoModelForCausalLM, AutoProcessor

    import worldvla_metrics as metrics

    dtype = getattr(torch, args.dtype)
    try:
        model = AutoModelForCausalLM.from_pretrained(args.model, revision=args.revision, trust_remote_code=True, dtype=dtype)
        processor = AutoProcessor.from_pretrained(args.model, revision=args.revision, trust_remote_code=True)
    except OSError as error:
        raise EvaluationError(f"could not load the model {args.model!r} (revision {args.revision}): {error}") from error
    processor.check_compatible(model.config)
    model = model.to(device).eval()
    processor.vq_model.to(device)
    unnorm_key = args.unnorm_key or processor.default_unnorm_key
    processor.action_tokenizer.bounds(unnorm_key)  # an unknown key raises, listing the known ones
    generation_kwargs = {
        name: value
        for name, value in (("temperature", args.temperature), ("top_k", args.top_k), ("top_p", args.top_p))
        if value is not None
    }
    models = Models(model, processor, device, generation_kwargs, unnorm_key)
    if args.lpips_weights:
        models.lpips = metrics.LPIPSVGG(args.lpips_weights, device=device)
    if args.i3d_weights:
        models.i3d = metrics.I3DFeatures(args.i3d_weights, device=device)
    return models


def metric_notes(args):
    notes = []
    if not args.lpips_weights:
        notes.append(
            "LPIPS not computed: no --lpips-weights (a torchvision VGG16 state dict, vgg16-397923af.pth; see "
            "docs/world_model.md). Its columns show n/a."
        )
    if not args.i3d_weights:
        notes.append(
            "FVD not computed: no --i3d-weights (the I3D TorchScript detector i3d_torchscript.pt; see "
            "docs/world_model.md). Its columns show n/a."
        )
    return notes


def evaluate(args):
    output_dir = Path(args.output_dir)
    trajectories = validate_trajectories(select_trajectories(args), args)
    settings = build_settings(args, trajectories)
    check_or_write_settings(output_dir, settings)
    notes = metric_notes(args)
    for note in notes:
        logger.warning(note)

    records_path = output_dir / TRAJECTORIES_FILE
    records = read_jsonl(records_path, "trajectory")
    done = finished_ids(output_dir, records, need_features=args.i3d_weights is not None)
    pending = [t for t in trajectories if t.id not in done]
    logger.info("%d trajectories to evaluate, %d already in %s", len(pending), len(trajectories) - len(pending), records_path)

    if pending:
        import torch
        from tqdm.auto import tqdm

        if args.threads:
            torch.set_num_threads(args.threads)
        device = resolve_device(args.device)
        models = load_models(args, device)
        progress = tqdm(total=len(pending), desc="world-model evaluation", unit="trajectory")
        for start in range(0, len(pending), args.batch_size):
            batch = pending[start : start + args.batch_size]
            for record in evaluate_batch(models, batch, args, output_dir):
                append_jsonl(records_path, record)
                records.append(record)
                progress.update(1)
            prediction = [r["horizons"][str(args.horizons[0])]["prediction"]["psnr"] for r in records]
            progress.set_postfix(psnr=f"{sum(prediction) / len(prediction):.2f}")
        progress.close()

    latest = {record["trajectory"]: record for record in records}
    relevant = [latest[t.id] for t in trajectories if t.id in latest]
    summary = summarize(relevant, settings, notes, output_dir)
    write_text_atomically(output_dir / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
    table = results_markdown(summary)
    write_text_atomically(output_dir / RESULTS_FILE, table)
    plot_per_frame(summary, output_dir / PLOT_FILE)
    return summary, table


def main(argv=None):
    args = parse_args(argv)
    configure_logging()
    summary, table = evaluate(args)
    print(table)
    return summary


if __name__ == "__main__":
    from worldvla_data import LiberoDataError

    try:
        main()
    except (EvaluationError, LiberoDataError) as error:
        logging.getLogger("eval_world_model").error("%s", error)
        sys.exit(2)
