"""LIBERO-format HDF5 demonstrations: rollout recording, replay rendering, writing and reading.

The layout is that of the official LIBERO datasets (`<task_name>_demo.hdf5`):

    data/                         attrs: problem_info (JSON), bddl_file_name, bddl_file_content,
                                         env_args (JSON), env_name, macros_image_convention,
                                         num_demos, total
    data/demo_N/                  attrs: num_samples, init_state, trial; here also reset_seed (the numpy seed of
                                         the reset that placed the fixtures) and random_reset (its index)
        actions        (T, 7)     OSC_POSE deltas and gripper command, as executed
        expert_actions (T, 7)     only in perturbed demos (`collect_demos.py --perturb`, attribute
                                  perturbation_rate): the expert's own action at each step, the label
        states         (T, S)     flattened MuJoCo state before each action
        rewards, dones (T,)
        obs/agentview_rgb, obs/eye_in_hand_rgb   (T, H, W, 3) uint8, raw renders (upside-down);
                                  the wrist camera only when it was rendered
        obs/ee_states (T, 6), obs/gripper_states (T, 2), obs/joint_states (T, 7)

Demonstrations are rolled out without cameras (about 10x faster) and their frames are rendered
afterwards by replaying the actions from the same initial state and reset seed: MuJoCo is deterministic
then, and `check_replay_matches` checks that the replayed states match the recorded ones. Where a replay does
not reproduce its rollout (libero_spatial task 4, see `scripts/collect_demos.py`), the rollout itself runs in
the camera env through a `DemoRecorder`, which records the same columns as it goes.

Writing is crash-safe (see `DemoWriter`): finished demos are never modified in place.
"""

import json
import os
import h5py
import numpy as np

from .env import THIRD_PERSON_CAMERA, WRIST_CAMERA, make_env, reset_to_initial_state

# Replayed states may differ from the recorded ones by float noise only.
REPLAY_TOLERANCE = 1e-6


def axis_angle_from_quat_xyzw(quat):
    """Axis-angle vector of a quaternion (x, y, z, w), as robosuite's `quat2axisangle`."""
    quat = np.asarray(quat, dtype=np.float64)
    w = np.clip(quat[3], -1.0, 1.0)
    sin_half = np.sqrt(1.0 - w * w)
    if sin_half < 1e-8:
        return np.zeros(3)
    return quat[:3] * 2.0 * np.arccos(w) / sin_half


class DemoRecorder:
    """A camera env that records, at every `step`, the demo columns of the observation the action is taken
    from (state, raw frames, end effector, gripper, joints), then the action and `done`. It stands in for the
    env wherever one is used (`reset_to_initial_state`, `run_episode`); `set_init_state` starts a new demo."""

    CAMERAS = {"agentview": THIRD_PERSON_CAMERA, "eye_in_hand": WRIST_CAMERA}

    def __init__(self, env):
        self.env = env
        self.observation = None
        self.columns = {}

    def __getattr__(self, name):
        return getattr(self.env, name)

    def set_init_state(self, state):
        self.observation = self.env.set_init_state(state)
        cameras = [name for name, camera in self.CAMERAS.items() if camera + "_image" in self.observation]
        self.columns = {key: [] for key in ("actions", "states", *cameras, "ee", "gripper", "joints", "dones")}
        return self.observation

    def step(self, action):
        obs, columns = self.observation, self.columns
        columns["states"].append(self.env.get_sim_state())
        for name, camera in self.CAMERAS.items():
            if name in columns:
                columns[name].append(obs[camera + "_image"])
        columns["ee"].append(np.concatenate([obs["robot0_eef_pos"], axis_angle_from_quat_xyzw(obs["robot0_eef_quat"])]))
        columns["gripper"].append(obs["robot0_gripper_qpos"])
        columns["joints"].append(obs["robot0_joint_pos"])
        self.observation, reward, done, info = self.env.step(action)
        columns["actions"].append(np.asarray(action, dtype=np.float64))
        columns["dones"].append(done)
        return self.observation, reward, done, info

    def step_unrecorded(self, action, steps):
        """Executes `action` `steps` times without recording them (the settling steps before a replay)."""
        for _ in range(steps):
            self.observation = self.env.step(action)[0]

    def arrays(self):
        """The per-step arrays of the demo recorded since the last `set_init_state`."""
        columns = self.columns
        dones = np.array(columns["dones"], dtype=np.uint8)
        return {
            "actions": np.asarray(columns["actions"], dtype=np.float64),
            "states": np.asarray(columns["states"]),
            "rewards": dones.copy(),
            "dones": dones,
            **{f"obs/{name}_rgb": np.asarray(columns[name], dtype=np.uint8) for name in self.CAMERAS if name in columns},
            "obs/ee_states": np.asarray(columns["ee"]),
            "obs/gripper_states": np.asarray(columns["gripper"]),
            "obs/joint_states": np.asarray(columns["joints"]),
        }


def replay_with_cameras(env, episode, seed=None):
    """Replays an `EpisodeResult`'s actions in a camera env; returns the per-step arrays of a demo.

    The frames are the observations `env.step` returns, as a closed-loop evaluation sees them (a render of
    the stored state differs slightly: robosuite renders before the control step's last physics substep).
    `seed` must be the one the episode was recorded with, so that the fixtures stand where they stood
    (`reset_to_initial_state`); then MuJoCo is deterministic, and a RuntimeError says if the replay leaves
    the recorded trajectory anyway."""
    recorder = DemoRecorder(env)
    reset_to_initial_state(recorder, episode.initial_state, seed)
    for action in episode.actions:
        recorder.step(action)
    arrays = recorder.arrays()
    if episode.success and not arrays["dones"][-1]:
        raise RuntimeError("Replay did not reach the recorded success: the simulation is not deterministic here.")
    return arrays


def check_replay_matches(recorded_states, replayed_states):
    """Largest absolute difference between two state sequences; raises if above tolerance."""
    difference = float(np.max(np.abs(np.asarray(recorded_states) - np.asarray(replayed_states))))
    if difference > REPLAY_TOLERANCE:
        raise RuntimeError(f"Replayed states differ from the recorded ones by {difference:.3g}.")
    return difference


def file_attributes(task, bddl_file, resolution, camera_names=(THIRD_PERSON_CAMERA, WRIST_CAMERA)):
    """The `data` group attributes of an official LIBERO dataset file."""
    with open(bddl_file) as stream:
        bddl_content = stream.read()
    from libero.libero.envs.bddl_utils import get_problem_info

    problem_info = get_problem_info(bddl_file)
    env_args = {
        "type": 1,
        "env_name": problem_info["problem_name"],
        "problem_name": problem_info["problem_name"],
        "bddl_file": bddl_file,
        "env_kwargs": {
            "robots": ["Panda"],
            "controller": "OSC_POSE",
            "camera_names": list(camera_names),
            "camera_heights": resolution,
            "camera_widths": resolution,
            "control_freq": 20,
        },
    }
    return {
        "problem_info": json.dumps(
            {
                "problem_name": problem_info["problem_name"],
                "domain_name": problem_info["domain_name"],
                "language_instruction": task.language,
            }
        ),
        "bddl_file_name": bddl_file,
        "bddl_file_content": bddl_content,
        "env_args": json.dumps(env_args),
        "env_name": problem_info["problem_name"],
        "macros_image_convention": "opengl",  # raw renders: upside-down, as the official files
    }


class DemoWriter:
    """Writes one task's demos into `<task_name>_demo.hdf5`, resuming an existing file.

    Each new demo goes to its own small file in `<file>.parts/` (written to a temporary name,
    then renamed), and `finalize()` merges the existing file and the parts into a new file that
    replaces the old one with `os.replace`. A crash therefore never corrupts finished demos: at
    worst the parts of the current run are merged by the next run.
    """

    def __init__(self, path, attributes, compression="gzip"):
        if compression not in ("gzip", "lzf"):
            raise ValueError(f"Unknown compression {compression!r}: use gzip or lzf.")
        self.path = str(path)
        self.attributes = attributes
        self.compression = compression
        self.parts_dir = self.path + ".parts"
        os.makedirs(self.parts_dir, exist_ok=True)

    def part_files(self):
        return sorted(os.path.join(self.parts_dir, n) for n in os.listdir(self.parts_dir) if n.endswith(".hdf5"))

    def collected_attributes(self, name):
        """One attribute of every demo already collected, in the file and in pending parts (None where a
        demo lacks it)."""
        values = []
        sources = ([self.path] if os.path.exists(self.path) else []) + self.part_files()
        for source in sources:
            with h5py.File(source, "r") as file:
                values += [group.attrs.get(name) for group in file["data"].values()]
        return values

    def collected_trials(self):
        """Initial-state indices already collected (random resets are stored as trial -1)."""
        return [-1 if trial is None else int(trial) for trial in self.collected_attributes("trial")]

    def append(self, arrays, initial_state, trial, random_reset=None, reset_seed=None, **attributes):
        """Stores one demo as a part file; it joins the dataset at `finalize()`. `random_reset` is the
        index of the random reset it started from (None for one of the benchmark's initial states);
        `reset_seed` the seed of the scene's reset, which a replay needs to rebuild the same fixtures;
        `attributes` are stored on the demo too (`perturbation_rate`)."""
        number = len(self.part_files())
        final = os.path.join(self.parts_dir, f"part_{number:06d}.hdf5")
        temporary = final + ".tmp"
        with h5py.File(temporary, "w") as file:
            group = file.create_group("data/demo_0")
            for key, value in arrays.items():
                chunks = (1, *value.shape[1:]) if value.ndim == 4 else True  # one image per chunk
                group.create_dataset(key, data=value, compression=self.compression, chunks=chunks)
            group.attrs["num_samples"] = len(arrays["actions"])
            group.attrs["init_state"] = np.asarray(initial_state)
            group.attrs["trial"] = int(trial)
            if random_reset is not None:
                group.attrs["random_reset"] = int(random_reset)
            if reset_seed is not None:
                group.attrs["reset_seed"] = int(reset_seed)
            for key, value in attributes.items():
                group.attrs[key] = value
        os.replace(temporary, final)

    def finalize(self):
        """Merges the existing demos and the new parts into the dataset file; returns its demo count. Without new
        parts an existing file is left untouched (train.py's tokenised cache is keyed on its modification time)."""
        if os.path.exists(self.path) and not self.part_files():
            os.rmdir(self.parts_dir)
            with h5py.File(self.path, "r") as file:
                return int(file["data"].attrs["num_demos"])
        temporary = self.path + ".tmp"
        sources = ([self.path] if os.path.exists(self.path) else []) + self.part_files()
        total = 0
        number = 0
        with h5py.File(temporary, "w") as output:
            data = output.create_group("data")
            for source in sources:
                with h5py.File(source, "r") as file:
                    names = sorted(file["data"], key=lambda name: int(name.split("_")[1]))
                    for name in names:
                        file.copy(file["data"][name], data, name=f"demo_{number}")
                        total += int(file["data"][name].attrs["num_samples"])
                        number += 1
            for key, value in self.attributes.items():
                data.attrs[key] = value
            data.attrs["num_demos"] = number
            data.attrs["total"] = total
        os.replace(temporary, self.path)
        for part in self.part_files():
            os.remove(part)
        os.rmdir(self.parts_dir)
        return number


def read_demos(path):
    """Reads a LIBERO demo file into (attributes, {demo name: {dataset path: array}})."""
    with h5py.File(path, "r") as file:
        attributes = {key: file["data"].attrs[key] for key in file["data"].attrs}
        demos = {}
        for name in file["data"]:
            group = file["data"][name]
            arrays = {}

            def keep_dataset(key, item, arrays=arrays):
                if isinstance(item, h5py.Dataset):
                    arrays[key] = item[()]

            group.visititems(keep_dataset)
            arrays["init_state"] = group.attrs["init_state"]
            demos[name] = arrays
    return attributes, demos


def make_camera_env(bddl_file, resolution, camera_names=(THIRD_PERSON_CAMERA, WRIST_CAMERA)):
    """The env that renders demos: by default the third-person and wrist cameras at `resolution`."""
    return make_env(bddl_file, camera_names=camera_names, resolution=resolution)
