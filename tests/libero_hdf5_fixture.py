"""Small HDF5 files in the official LIBERO demonstration layout, for tests and benchmarks.

One file per task, named `<task>_demo.hdf5` as LIBERO names them:

    data.attrs: problem_info (JSON with language_instruction), bddl_file_name, env_args (JSON), env_name
    data/demo_N.attrs: num_samples
    data/demo_N/actions              (T, 7) float64, OSC_POSE deltas and gripper -1 / +1
    data/demo_N/obs/agentview_rgb    (T, H, W, 3) uint8, stored upside-down like MuJoCo renders
    data/demo_N/obs/eye_in_hand_rgb  (T, H, W, 3) uint8
    data/demo_N/obs/ee_states (T, 6), gripper_states (T, 2), joint_states (T, 7)
    data/demo_N/states (T, 9), rewards (T,), dones (T,)

Frames are smooth synthetic scenes (a coloured square moving over a gradient) so that consecutive frames
differ a little, as in a real demonstration; actions are smooth too, with optional no-op steps.
"""

import json
from pathlib import Path

import h5py
import numpy as np


def synthetic_frames(num_frames, size, seed):
    """(T, size, size, 3) uint8 upright frames: a gradient background and a square moving across it."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:size, 0:size]
    background = np.stack([rows * 255 // size, cols * 255 // size, np.full_like(rows, 128)], axis=-1)
    colour = rng.integers(0, 256, 3)
    frames = np.repeat(background[None].astype(np.uint8), num_frames, axis=0)
    side = max(size // 6, 2)
    for t in range(num_frames):
        top = (t * 2 + int(rng.integers(0, 3))) % (size - side)
        frames[t, top : top + side, size // 4 : size // 4 + side] = colour
    return frames


def synthetic_actions(num_steps, seed, noop_steps=()):
    """(T, 7) smooth actions with the gripper closing halfway; rows in `noop_steps` are zero motion."""
    rng = np.random.default_rng(seed)
    phase = np.linspace(0, np.pi, num_steps)[:, None] + rng.uniform(0, np.pi, (1, 6))
    motion = 0.5 * np.sin(phase) * np.array([0.9, 0.9, 0.9, 0.3, 0.3, 0.3])
    gripper = np.where(np.arange(num_steps) < num_steps // 2, -1.0, 1.0)[:, None]
    actions = np.concatenate([motion, gripper], axis=1)
    for step in noop_steps:
        actions[step, :6] = 0.0
        actions[step, 6] = actions[step - 1, 6] if step > 0 else -1.0
    return actions


def write_libero_hdf5(path, instruction, num_demos=3, num_steps=20, image_size=64, seed=0, noop_steps=()):
    """Write one task file; demo i has `num_steps` steps (a list gives one length per demo)."""
    lengths = num_steps if isinstance(num_steps, (list, tuple)) else [num_steps] * num_demos
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as file:
        data = file.create_group("data")
        task = path.stem.removesuffix("_demo")
        data.attrs["problem_info"] = json.dumps(
            {"problem_name": "libero_tabletop_manipulation", "domain_name": "robosuite", "language_instruction": instruction}
        )
        data.attrs["bddl_file_name"] = f"libero/libero/bddl_files/libero_test/{task}.bddl"
        data.attrs["env_args"] = json.dumps({"type": 1, "env_name": "Libero_Tabletop_Manipulation", "env_kwargs": {}})
        data.attrs["env_name"] = "Libero_Tabletop_Manipulation"
        for demo_index, length in enumerate(lengths):
            demo_seed = seed * 1000 + demo_index
            demo = data.create_group(f"demo_{demo_index}")
            demo.attrs["num_samples"] = length
            demo.create_dataset("actions", data=synthetic_actions(length, demo_seed, noop_steps))
            upright = synthetic_frames(length, image_size, demo_seed)
            obs = demo.create_group("obs")
            obs.create_dataset("agentview_rgb", data=upright[:, ::-1, ::-1], compression="gzip")
            obs.create_dataset("eye_in_hand_rgb", data=upright[:, :, ::-1], compression="gzip")
            obs.create_dataset("ee_states", data=np.zeros((length, 6)))
            obs.create_dataset("gripper_states", data=np.zeros((length, 2)))
            obs.create_dataset("joint_states", data=np.zeros((length, 7)))
            demo.create_dataset("states", data=np.zeros((length, 9)))
            demo.create_dataset("rewards", data=(np.arange(length) == length - 1).astype(np.uint8))
            demo.create_dataset("dones", data=(np.arange(length) == length - 1).astype(np.uint8))
    return path


def write_libero_folder(folder, num_tasks=2, num_demos=3, num_steps=20, image_size=64, noop_steps=()):
    """A folder of `num_tasks` task files (task_00 ...); returns the sorted file paths."""
    return [
        write_libero_hdf5(
            Path(folder) / f"task_{index:02d}_demo.hdf5",
            f"pick up the object number {index} and place it in the basket",
            num_demos=num_demos,
            num_steps=num_steps,
            image_size=image_size,
            seed=index,
            noop_steps=noop_steps,
        )
        for index in range(num_tasks)
    ]
