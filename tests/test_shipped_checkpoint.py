"""The shipped checkpoints: the ten-task one loads in a fresh process from its own folder, gives its golden action
tokens for a fixed rendered frame, and solves a real LIBERO episode through eval_libero.py; so does the task-0
specialist; every shipped folder carries this repository's code files.

The golden frame is the upright third-person view of libero_spatial task 0, fixed initial state 0, after the
protocol's 10 waiting steps, rendered at the model's size and stored as PNG (with the wrist camera's frame of the
same step beside it for a `wrist_camera` model); the golden tokens are what the checkpoint decoded from it when it
was shipped (parallel and sequential decoding alike). Regenerate both after shipping a new checkpoint with

    python tests/test_shipped_checkpoint.py --regenerate
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
CHECKPOINT = ROOT / "checkpoints" / "worldvla-libero-spatial-64"
TASK0_CHECKPOINT = ROOT / "checkpoints" / "worldvla-libero-spatial-64-task0"
CODE_FILES = ("configuration_worldvla.py", "modeling_worldvla.py", "processing_worldvla.py")
GOLDEN = ROOT / "tests" / "data" / "shipped_checkpoint_golden.json"
GOLDEN_FRAME = ROOT / "tests" / "data" / "libero_spatial_task0_state0.png"
GOLDEN_WRIST_FRAME = ROOT / "tests" / "data" / "libero_spatial_task0_state0_wrist.png"
SUBPROCESS_ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}

DECODE_GOLDEN_FRAME = """
import json, sys
import numpy as np
from PIL import Image
from transformers import AutoModelForCausalLM, AutoProcessor
checkpoint, instruction, frame_paths = sys.argv[1], sys.argv[2], sys.argv[3:]
model = AutoModelForCausalLM.from_pretrained(checkpoint, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(checkpoint, trust_remote_code=True)
frames = [np.asarray(Image.open(path).convert("RGB")) for path in frame_paths]
inputs = processor(text=instruction, images=frames)
tokens = {decoding: model.generate_action_tokens(**inputs, decoding=decoding)[0].tolist() for decoding in ("parallel", "sequential")}
actions = processor.decode_actions(np.asarray(tokens["parallel"]))
print(json.dumps({"class": type(model).__module__, "tokens": tokens, "actions": actions.tolist()}))
"""


def golden_frames():
    """The prompt's frames: the third-person one, then the wrist camera's for a `wrist_camera` checkpoint."""
    wrist_camera = json.loads((CHECKPOINT / "config.json").read_text()).get("wrist_camera", False)
    return [GOLDEN_FRAME, GOLDEN_WRIST_FRAME] if wrist_camera else [GOLDEN_FRAME]


def decode_golden_frame(instruction):
    result = subprocess.run(
        [sys.executable, "-c", DECODE_GOLDEN_FRAME, str(CHECKPOINT), instruction, *map(str, golden_frames())],
        cwd=ROOT / "tests", env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_loads_in_a_fresh_process_and_gives_the_golden_tokens():
    golden = json.loads(GOLDEN.read_text())
    decoded = decode_golden_frame(golden["instruction"])
    assert decoded["class"].startswith("transformers_modules")  # the checkpoint's own code files
    assert decoded["tokens"]["parallel"] == golden["tokens"]
    assert decoded["tokens"]["sequential"] == golden["tokens"]
    np.testing.assert_allclose(decoded["actions"], golden["actions"], rtol=0, atol=1e-12)


def test_a_real_episode_succeeds_through_eval_libero(tmp_path):
    """The README's first command, one episode: fixed initial state 4 of libero_spatial task 2, which the ten-task
    checkpoint solved in 84 policy steps when it was evaluated (30 of 100 episodes, states 0-9 of every task)."""
    pytest.importorskip("libero")
    import eval_libero

    summary = eval_libero.main([
        "--model", str(CHECKPOINT), "--suite", "libero_spatial", "--tasks", "2", "--trials", "4,", "--threads", "1",
        "--output-dir", str(tmp_path / "eval"),
    ])
    record = json.loads((tmp_path / "eval" / "episodes.jsonl").read_text().splitlines()[0])
    assert summary["episodes"] == 1 and summary["errors"] == 0
    assert summary["settings"]["model"] == str(CHECKPOINT) and summary["settings"]["unnorm_key"] == "libero_spatial"
    assert record["success"] is True and record["steps"] == 84, record


@pytest.mark.parametrize("checkpoint", sorted(path.name for path in (ROOT / "checkpoints").iterdir() if path.is_dir()))
def test_shipped_folders_carry_this_repositorys_code_files(checkpoint):
    for name in CODE_FILES:
        assert (ROOT / "checkpoints" / checkpoint / name).read_bytes() == (ROOT / name).read_bytes(), name


def test_the_task0_specialist_solves_a_real_episode(tmp_path):
    """The README's first command, one episode: fixed initial state 0 of libero_spatial task 0, which the specialist
    solved in 89 policy steps when it was evaluated (11 of the first 20 states of task 0)."""
    pytest.importorskip("libero")
    import eval_libero

    summary = eval_libero.main([
        "--model", str(TASK0_CHECKPOINT), "--suite", "libero_spatial", "--tasks", "0", "--trials", "0,", "--threads", "1",
        "--output-dir", str(tmp_path / "eval"),
    ])
    record = json.loads((tmp_path / "eval" / "episodes.jsonl").read_text().splitlines()[0])
    assert summary["episodes"] == 1 and summary["errors"] == 0
    assert record["success"] is True and record["steps"] < 220, record


def regenerate():
    """Render the golden frame and decode it with the shipped checkpoint."""
    from PIL import Image

    sys.path.insert(0, str(ROOT))
    from libero_sim.env import (
        NUM_WAIT_STEPS, THIRD_PERSON_CAMERA, WAIT_ACTION, WRIST_CAMERA, get_suite, make_env, reset_to_initial_state,
        third_person_frame, wrist_frame,
    )

    config = json.loads((CHECKPOINT / "config.json").read_text())
    suite = get_suite("libero_spatial")
    task = suite.get_task(0)
    cameras = (THIRD_PERSON_CAMERA, WRIST_CAMERA) if config.get("wrist_camera", False) else (THIRD_PERSON_CAMERA,)
    env = make_env(suite.get_task_bddl_file_path(0), camera_names=cameras, resolution=config["image_size"])
    try:
        obs = reset_to_initial_state(env, suite.get_task_init_states(0)[0], seed=0)
        for _ in range(NUM_WAIT_STEPS):
            obs, _, _, _ = env.step(WAIT_ACTION)
        frames = [third_person_frame(obs), *([wrist_frame(obs)] if WRIST_CAMERA in cameras else [])]
    finally:
        env.close()
    GOLDEN_FRAME.parent.mkdir(parents=True, exist_ok=True)
    for frame, path in zip(frames, golden_frames()):
        Image.fromarray(frame).save(path)
    decoded = decode_golden_frame(task.language)
    assert decoded["tokens"]["parallel"] == decoded["tokens"]["sequential"]
    golden = {"instruction": task.language, "tokens": decoded["tokens"]["parallel"], "actions": decoded["actions"]}
    GOLDEN.write_text(json.dumps(golden, indent=1) + "\n")
    print(f"wrote {GOLDEN} and", " ".join(map(str, golden_frames())))


if __name__ == "__main__":
    if sys.argv[1:] != ["--regenerate"]:
        sys.exit(__doc__)
    regenerate()
