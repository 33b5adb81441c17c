"""WorldVLA training data: LIBERO-format HDF5 demonstrations -> cached VQ codes -> mixed training samples.

    folder of <task>_demo.hdf5 files (one task each, official LIBERO layout)
      │ read_libero_file: one episode per data/demo_N, validated (errors name the file and demo);
      │ no-op actions dropped with their frames; perturbed demos' labels (expert_actions) read beside the
      │ executed actions; agentview frames turned upright by the file's
      │ macros_image_convention (opengl: rotated 180 degrees); resized, with a warning, if stored at another size
      ▼
    tokenised_episodes: one `datasets` row per episode {task, instruction, demo, codes (T, h, w), actions (T, 7),
      expert_actions (T, 7)},
      cached on disk per file under a fingerprint of (file path, size, mtime, VQ weights, image size, rules)
      │ split_episodes: the release's rule (last ceil-10% of tasks out of distribution, last 10% of each
      │ remaining task's episodes in distribution)
      ▼
    WorldVLASamples: action-model samples (M history frames -> K actions) and world-model samples
      (frame t, action t -> frame t+1) of the same episodes, concatenated (about 1:1) and built on the fly
      with the processor, so the normalisation statistics can change without re-tokenising anything; an action
      sample's targets are the expert's labels, a world-model sample's action the executed one (they differ in
      perturbed demos only).

The release's rules followed here (worldvla/data/action_model_conv_generation.py and
world_model_conv_generation.py of alibaba-damo-academy/WorldVLA):
  * history at the start of an episode: the frames that exist (`processing_worldvla.history_indices`, the rule
    `WorldVLAPolicy` follows at run time), so the first sample of an episode has one frame; nothing duplicated;
  * a step whose K future actions run past the end of the episode gives no action sample;
  * world-model samples for every t < T - 1;
  * task split at ceil(0.9 * tasks), episode split at ceil(0.9 * episodes) per task, in sorted order.
"""

import hashlib
import json
import logging
import math
import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import datasets
import h5py
import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from processing_worldvla import IMAGE_CONVENTIONS, history_indices, prompt_frames, upright_frames, vq_fingerprint

logger = logging.getLogger(__name__)

# Bump when the episode rows change meaning, so old caches are not reused.
CACHE_FORMAT_VERSION = 4
NOOP_THRESHOLD = 1e-4
THIRD_PERSON_FRAMES = "obs/agentview_rgb"
WRIST_FRAMES = "obs/eye_in_hand_rgb"
REQUIRED_DEMO_KEYS = ("actions", THIRD_PERSON_FRAMES)
# Perturbed demos (scripts/collect_demos.py --perturb): the expert's own actions, which `actions` executed perturbed.
EXPERT_ACTIONS = "expert_actions"
SPLIT_FRACTION = 0.9
ENCODE_BATCH_SIZE = 32
SAMPLE_KINDS = ("action", "world_model")


class LiberoDataError(ValueError):
    """A demonstration file that cannot be trained on; the message names the file and the demo."""


# ---------------------------------------------------------------------------------------------------------------------
# Reading and cleaning episodes
# ---------------------------------------------------------------------------------------------------------------------


def list_task_files(data_dir):
    """The task files of a folder (`*.hdf5`, sorted by name: the order the split rule counts in)."""
    if not Path(data_dir).is_dir():
        raise LiberoDataError(f"{data_dir}: no such folder")
    files = sorted(Path(data_dir).glob("*.hdf5"))
    if not files:
        raise LiberoDataError(f"no .hdf5 files in {data_dir}")
    return files


def task_name(path):
    """`put_the_bowl_on_the_plate_demo.hdf5` -> `put_the_bowl_on_the_plate` (LIBERO's file naming)."""
    return Path(path).stem.removesuffix("_demo")


def demo_number(name):
    match = re.fullmatch(r"demo_(\d+)", name)
    return int(match.group(1)) if match else None


def keep_mask_without_noops(actions, threshold=NOOP_THRESHOLD):
    """Bool (T,): False for no-op steps, OpenVLA's rule that the WorldVLA data inherits.

    A step is a no-op when its motion is (almost) zero, ||a[:6]||_2 < threshold, and its gripper command equals
    that of the previous *kept* step (the first step: motion alone). A zero-motion step that opens or closes
    the gripper is kept.
    """
    keep = np.zeros(len(actions), dtype=bool)
    previous_gripper = None
    for step, action in enumerate(actions):
        still = np.linalg.norm(action[:6]) < threshold
        if still and (previous_gripper is None or action[6] == previous_gripper):
            continue
        keep[step] = True
        previous_gripper = action[6]
    return keep


def kept_steps(actions, expert_actions):
    """Bool (T,) of the steps a demo keeps: a step is dropped when neither what was executed nor what the expert
    chose did anything (the two differ in perturbed demos only)."""
    return keep_mask_without_noops(actions) | keep_mask_without_noops(expert_actions)


def resize_frames(frames, image_size):
    """(T, H, W, 3) uint8 -> (T, image_size, image_size, 3), PIL bicubic; untouched when already that size."""
    if frames.shape[1:3] == (image_size, image_size):
        return frames
    return np.stack(
        [np.asarray(Image.fromarray(frame).resize((image_size, image_size), Image.BICUBIC)) for frame in frames]
    )


def read_image_convention(file, path):
    """The file's `macros_image_convention` ("opengl": stored upside-down, LIBERO's default; "opencv": upright)."""
    convention = file["data"].attrs.get("macros_image_convention", "opengl")
    convention = convention.decode() if isinstance(convention, bytes) else str(convention)
    if convention not in IMAGE_CONVENTIONS:
        raise LiberoDataError(f"{path}: data.attrs['macros_image_convention'] is {convention!r}, expected one of {IMAGE_CONVENTIONS}")
    return convention


def read_instruction(file, path):
    try:
        return json.loads(file["data"].attrs["problem_info"])["language_instruction"].strip()
    except KeyError as error:
        raise LiberoDataError(f"{path}: data.attrs['problem_info'] has no language_instruction ({error})") from error


def open_libero_file(path):
    """An h5py.File for reading; a truncated or non-HDF5 file raises a LiberoDataError naming it."""
    try:
        return h5py.File(path, "r")
    except OSError as error:
        raise LiberoDataError(f"{path}: not a readable HDF5 file, truncated or damaged ({error})") from None


def check_actions(actions, where, name="actions"):
    if len(actions) == 0:
        raise LiberoDataError(f"{where}: empty episode (0 {name})")
    if actions.ndim != 2 or actions.shape[1] != 7:
        raise LiberoDataError(f"{where}: {name} must have shape (T, 7), got {actions.shape}")
    bad = ~np.isfinite(actions)
    if bad.any():
        step, dim = np.argwhere(bad)[0]
        raise LiberoDataError(f"{where}: {name} contain NaN or inf ({int(bad.sum())} values, first at step {step}, dim {dim})")


def read_demo(group, path, demo, wrist_camera=False):
    """(actions (T, 7) float64 as executed, expert_actions (T, 7) float64: the labels, the same array unless the
    demo is perturbed, {frame key: frames (T, H, W, 3) uint8 as stored}) of one demo, validated; the frames of the
    third-person camera, and of the wrist camera with `wrist_camera`."""
    where = f"{path}, data/{demo}"
    required = (*REQUIRED_DEMO_KEYS, WRIST_FRAMES) if wrist_camera else REQUIRED_DEMO_KEYS
    missing = [key for key in required if key not in group]
    if missing:
        hint = " (a wrist_camera model needs the wrist camera: collect_demos.py --cameras agentview,eye_in_hand)" if WRIST_FRAMES in missing else ""
        raise LiberoDataError(f"{where}: missing {missing} (a LIBERO demo needs {list(required)}){hint}")
    frame_keys = required[1:]
    try:
        actions = np.asarray(group["actions"][()], dtype=np.float64)
        expert_actions = np.asarray(group[EXPERT_ACTIONS][()], dtype=np.float64) if EXPERT_ACTIONS in group else actions
        frames = {key: group[key][()] for key in frame_keys}
    except OSError as error:  # a damaged chunk: h5py's message names no file
        raise LiberoDataError(f"{where}: unreadable data, the file is damaged ({error})") from None
    check_actions(actions, where)
    check_actions(expert_actions, where, EXPERT_ACTIONS)
    if expert_actions.shape != actions.shape:
        raise LiberoDataError(f"{where}: {len(actions)} actions but {len(expert_actions)} {EXPERT_ACTIONS}")
    for key, camera_frames in frames.items():
        if camera_frames.ndim != 4 or camera_frames.shape[-1] != 3 or camera_frames.dtype != np.uint8:
            raise LiberoDataError(f"{where}: {key} must be uint8 (T, H, W, 3), got {camera_frames.dtype} {camera_frames.shape}")
        if len(camera_frames) != len(actions):
            raise LiberoDataError(f"{where}: {len(actions)} actions but {len(camera_frames)} {key} frames")
    return actions, expert_actions, frames


def read_libero_file(path, image_size, wrist_camera=False):
    """Yield one cleaned episode per data/demo_N (numeric order): dict of instruction, demo, frames, actions,
    expert_actions, and wrist_frames with `wrist_camera`."""
    path = Path(path)
    with open_libero_file(path) as file:
        if "data" not in file:
            raise LiberoDataError(f"{path}: no 'data' group (not a LIBERO demonstration file)")
        instruction = read_instruction(file, path)
        convention = read_image_convention(file, path)
        demos = sorted((name for name in file["data"] if demo_number(name) is not None), key=demo_number)
        if not demos:
            raise LiberoDataError(f"{path}: no data/demo_N groups")
        warned = False
        for demo in demos:
            actions, expert_actions, camera_frames = read_demo(file["data"][demo], path, demo, wrist_camera)
            frames = camera_frames[THIRD_PERSON_FRAMES]
            if frames.shape[1:3] != (image_size, image_size) and not warned:
                logger.warning(
                    "%s: frames are stored at %dx%d, the model takes %dx%d: resizing (bicubic); frames rendered at "
                    "the model's size match the evaluation better (scripts/regenerate_demos.py --resolution re-renders a "
                    "file's demos natively)",
                    path, frames.shape[1], frames.shape[2], image_size, image_size,
                )
                warned = True
            keep = kept_steps(actions, expert_actions)
            episode = {
                "instruction": instruction,
                "demo": demo,
                "raw_length": len(actions),
                "actions": actions[keep],
                "expert_actions": expert_actions[keep],
                "frames": resize_frames(upright_frames(frames[keep], convention), image_size),
            }
            if wrist_camera:
                episode["wrist_frames"] = resize_frames(upright_frames(camera_frames[WRIST_FRAMES][keep], convention), image_size)
            yield episode


# ---------------------------------------------------------------------------------------------------------------------
# Tokenising with a cache
# ---------------------------------------------------------------------------------------------------------------------


def file_fingerprint(path, image_size, vq_hash, wrist_camera=False):
    """What decides a file's codes. The file is identified by path, size and modification time rather than by
    hashing its contents (LIBERO files are gigabytes); rewriting a file changes its mtime."""
    stat = Path(path).stat()
    key = {
        "version": CACHE_FORMAT_VERSION,
        "file": str(Path(path).resolve()),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "image_size": image_size,
        "vq": vq_hash,
        "noop_threshold": NOOP_THRESHOLD,
        "wrist_camera": wrist_camera,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]


def encode_frames(frames, processor, grid):
    """(T, H, W, 3) uint8 -> (T, grid, grid) int16 VQ codes, in batches."""
    if not len(frames):  # an episode of no-ops only
        return np.zeros((0, grid, grid), dtype=np.int16)
    batches = range(0, len(frames), ENCODE_BATCH_SIZE)
    codes = torch.cat([processor.encode_images(list(frames[i : i + ENCODE_BATCH_SIZE])) for i in batches])
    return codes.numpy().astype(np.int16)


def generate_tokenised_episodes(path, image_size, processor, wrist_camera=False):
    """`datasets` generator: the episodes of one file with their frames encoded by the processor's VQ."""
    grid = image_size // processor.layout["image_patch_size"]
    for episode in read_libero_file(path, image_size, wrist_camera):
        episode["codes"] = encode_frames(episode.pop("frames"), processor, grid)
        if wrist_camera:
            episode["wrist_codes"] = encode_frames(episode.pop("wrist_frames"), processor, grid)
        yield {**episode, "task": task_name(path)}


def tokenised_episodes(data_dir, processor, cache_dir=None, wrist_camera=False):
    """One `datasets.Dataset` row per episode of every task file, tokenised once and cached; with `wrist_camera`
    the wrist camera's codes too (`wrist_codes`).

    Each file is its own cached dataset (adding a file tokenises only that file). `datasets` writes a cache to a
    temporary folder and renames it when complete, so an interrupted run leaves nothing that looks finished.
    """
    image_size, grid = processor.layout["image_size"], processor.layout["image_size"] // processor.layout["image_patch_size"]
    if processor.layout["image_codebook_size"] > np.iinfo(np.int16).max + 1:
        raise ValueError("codes are cached as int16: a codebook larger than 32768 needs another dtype")
    features = datasets.Features(
        {
            "instruction": datasets.Value("string"),
            "demo": datasets.Value("string"),
            "raw_length": datasets.Value("int32"),
            "actions": datasets.Array2D(shape=(None, 7), dtype="float64"),
            "expert_actions": datasets.Array2D(shape=(None, 7), dtype="float64"),
            "task": datasets.Value("string"),
            "codes": datasets.Array3D(shape=(None, grid, grid), dtype="int16"),
            **({"wrist_codes": datasets.Array3D(shape=(None, grid, grid), dtype="int16")} if wrist_camera else {}),
        }
    )
    vq_hash = vq_fingerprint(processor.vq_model)
    per_file = []
    for path in tqdm(list_task_files(data_dir), desc="tokenising LIBERO files"):
        try:
            episodes = datasets.Dataset.from_generator(
                partial(generate_tokenised_episodes, path, image_size, processor, wrist_camera),
                features=features,
                cache_dir=None if cache_dir is None else str(cache_dir),
                fingerprint=file_fingerprint(path, image_size, vq_hash, wrist_camera),
            )
        except datasets.exceptions.DatasetGenerationError as error:
            # datasets wraps the generator's error in a generic one; the original names the file and demo.
            raise (error.__cause__ or error) from None
        per_file.append(episodes)
    return datasets.concatenate_datasets(per_file)


# ---------------------------------------------------------------------------------------------------------------------
# Splits and statistics
# ---------------------------------------------------------------------------------------------------------------------


VALIDATION_SPLITS = ("release", "episodes", "none")


def split_episodes(tasks, validation="release"):
    """Split names per episode, for episodes given as their task names in (task, demo) sorted order.

    "release" (the release's rule): tasks sorted, those from index ceil(0.9 * n_tasks) on are "val_ood";
    within each other task, episodes from index ceil(0.9 * n_episodes) on are "val_ind"; the rest "train".
    With fewer than 10 tasks no task is out of distribution, with fewer than 10 episodes no episode of a task
    is held out. "episodes": the "val_ind" rule over every task (a model that must act in all of them).
    "none": everything is "train".
    """
    if validation not in VALIDATION_SPLITS:
        raise ValueError(f"validation must be one of {VALIDATION_SPLITS}, got {validation!r}")
    if validation == "none":
        return ["train"] * len(tasks)
    task_order = sorted(set(tasks))
    first_ood_task = math.ceil(len(task_order) * SPLIT_FRACTION) if validation == "release" else len(task_order)
    counts = {task: tasks.count(task) for task in task_order}
    seen = {task: 0 for task in task_order}
    splits = []
    for task in tasks:
        if task_order.index(task) >= first_ood_task:
            splits.append("val_ood")
        elif seen[task] >= math.ceil(counts[task] * SPLIT_FRACTION):
            splits.append("val_ind")
        else:
            splits.append("train")
        seen[task] += 1
    return splits


def find_action_outliers(episodes, low, high):
    """Messages naming the file, demo, step and dimension of action values far outside [low, high]: beyond
    it by more than its width (a corrupted value, a unit error), which the bins would otherwise absorb."""
    low, high = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
    margin = high - low
    messages = []
    for episode in episodes:
        for name in ("actions", EXPERT_ACTIONS) if episode.expert_actions is not episode.actions else ("actions",):
            values = getattr(episode, name)
            far = (values < low - margin) | (values > high + margin)
            for step, dim in np.argwhere(far):
                messages.append(
                    f"{episode.task}_demo.hdf5, data/{episode.demo}, {name}, step {step}, dimension {dim}: "
                    f"{values[step, dim]:.6g} outside [{low[dim]:.4g}, {high[dim]:.4g}] by more than its width"
                )
    return messages


def compute_action_statistics(actions):
    """Per-dimension min, max, q01, q99, mean and std of (N, 7) actions, as lists."""
    actions = np.asarray(actions, dtype=np.float64)
    if len(actions) == 0:
        raise ValueError("no training actions to compute statistics from")
    return {
        "min": actions.min(0).tolist(),
        "max": actions.max(0).tolist(),
        "q01": np.quantile(actions, 0.01, axis=0).tolist(),
        "q99": np.quantile(actions, 0.99, axis=0).tolist(),
        "mean": actions.mean(0).tolist(),
        "std": actions.std(0).tolist(),
    }


# ---------------------------------------------------------------------------------------------------------------------
# Samples
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class Episode:
    task: str
    demo: str
    instruction: str
    codes: np.ndarray  # (T, h, w) int16
    actions: np.ndarray  # (T, 7) float64, as executed
    expert_actions: np.ndarray = None  # (T, 7) float64, the labels; `actions` itself unless the demo is perturbed
    wrist_codes: np.ndarray = None  # (T, h, w) int16, the wrist camera's codes; None when not read

    def __post_init__(self):
        if self.expert_actions is None:
            self.expert_actions = self.actions


def load_episodes(episode_rows):
    """The cached rows as in-memory `Episode`s (a LIBERO suite at 256 px is about 40 MB of codes)."""
    # The numpy formatter casts floats to float32 unless told otherwise: actions are read as stored.
    actions = episode_rows.with_format("numpy", columns=["actions"], dtype=np.float64)["actions"]
    labels = episode_rows.with_format("numpy", columns=[EXPERT_ACTIONS], dtype=np.float64)[EXPERT_ACTIONS]
    codes = episode_rows.with_format("numpy", columns=["codes"])["codes"]
    wrist_codes = [None] * len(codes)
    if "wrist_codes" in episode_rows.column_names:
        wrist_codes = episode_rows.with_format("numpy", columns=["wrist_codes"])["wrist_codes"]
    return [
        Episode(row["task"], row["demo"], row["instruction"], episode_codes, episode_actions, episode_labels, episode_wrist)
        for row, episode_codes, episode_actions, episode_labels, episode_wrist in zip(
            episode_rows.select_columns(["task", "demo", "instruction"]), codes, actions, labels, wrist_codes
        )
    ]


def sample_index(episodes, chunk_size, kinds=SAMPLE_KINDS):
    """[(kind, episode index, t)]: action samples for t <= T - K, world-model samples for t < T - 1.

    Action samples come first, then world-model samples (the release concatenates the two sets; the
    Trainer's sampler shuffles them together).
    """
    # The history is cut at the episode start, so it never removes a sample; only the chunk's end does.
    unknown = set(kinds) - set(SAMPLE_KINDS)
    if unknown:
        raise ValueError(f"unknown sample kinds {sorted(unknown)}; choose from {SAMPLE_KINDS}")
    index = []
    if "action" in kinds:
        index += [("action", e, t) for e, ep in enumerate(episodes) for t in range(len(ep.actions) - chunk_size + 1)]
    if "world_model" in kinds:
        index += [("world_model", e, t) for e, ep in enumerate(episodes) for t in range(len(ep.actions) - 1)]
    return index


class WorldVLASamples(torch.utils.data.Dataset):
    """Training samples built on access: {"input_ids", "labels"} lists from the processor's sample builders."""

    def __init__(self, episodes, processor, unnorm_key, history_frames, chunk_size, kinds=SAMPLE_KINDS, wrist_camera=False):
        if wrist_camera and "action" in kinds:
            unread = [f"{episode.task}/{episode.demo}" for episode in episodes if episode.wrist_codes is None]
            if unread:
                raise ValueError(f"wrist_camera samples need the wrist camera's codes, not read for {unread[:3]}")
        self.wrist_camera = wrist_camera
        self.episodes = episodes
        self.processor = processor
        self.unnorm_key = unnorm_key
        self.history_frames = history_frames
        self.chunk_size = chunk_size
        self.index = sample_index(episodes, chunk_size, kinds)

    def __len__(self):
        return len(self.index)

    def count(self, kind):
        return sum(1 for entry in self.index if entry[0] == kind)

    def __getitem__(self, item):
        kind, episode_index, t = self.index[item]
        episode = self.episodes[episode_index]
        if kind == "action":
            steps = list(history_indices(t, self.history_frames))
            frames = prompt_frames(episode.codes[steps], episode.wrist_codes[steps] if self.wrist_camera else None)
            actions = episode.expert_actions[t : t + self.chunk_size]
            return self.processor.build_action_sample(episode.instruction, frames, actions, self.unnorm_key)
        return self.processor.build_world_model_sample(
            [episode.codes[t]], episode.actions[t : t + 1], episode.codes[t + 1], self.unnorm_key
        )
