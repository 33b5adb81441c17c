"""scripts/diagnose_policy.py: the open-loop comparison with the expert, and the steps around the first close."""

import json
import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import worldvla_data  # noqa: E402
from processing_worldvla import history_indices  # noqa: E402
from scripts import diagnose_policy  # noqa: E402

try:
    from tests.libero_hdf5_fixture import synthetic_actions, write_libero_folder
except ImportError:
    from libero_hdf5_fixture import synthetic_actions, write_libero_folder

WINDOW = 3
STEPS = 20  # the fixture's gripper closes at step STEPS // 2


def test_around_the_first_close_the_model_and_the_expert_side_by_side(small_worldvla, tmp_path):
    model, processor = small_worldvla
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    write_libero_folder(tmp_path / "data", num_tasks=2, num_demos=3, num_steps=STEPS)
    report = diagnose_policy.main([
        "--model", str(tmp_path / "model"), "--data-dir", str(tmp_path / "data"), "--val-split", "none",
        "--prompts", "8", "--around-first-close", str(WINDOW), "--output", str(tmp_path / "diagnosis.json"),
    ])
    assert json.loads((tmp_path / "diagnosis.json").read_text()) == json.loads(json.dumps(report))
    assert set(report["results"]) == {"train"} and report["results"]["train"]["as trained"]["prompts"] == 8
    rows = report["around_first_close"]["train"]
    assert [row["offset"] for row in rows] == list(range(-WINDOW, WINDOW + 1))
    assert all(row["prompts"] == 6 for row in rows)  # 2 tasks x 3 demos, each closing at step 10
    assert [row["expert_closed"] for row in rows] == [0.0] * WINDOW + [1.0] * (WINDOW + 1)

    # The reference: each prompt built on its own by the history rule, decoded one at a time.
    episodes = worldvla_data.load_episodes(worldvla_data.tokenised_episodes(str(tmp_path / "data"), processor, None))
    first_actions = {offset: [] for offset in range(-WINDOW, WINDOW + 1)}
    for episode in episodes:
        for offset in first_actions:
            t = STEPS // 2 + offset
            sample = processor.build_action_sample(episode.instruction, list(episode.codes[list(history_indices(t, model.config.history_frames))]))
            input_ids = torch.tensor([sample["input_ids"]])
            bins = model.generate_action_tokens(input_ids, torch.ones_like(input_ids)).numpy()
            first_actions[offset].append(processor.decode_actions(bins)[0, 0])
    expert = {offset: [] for offset in first_actions}
    for task in range(2):
        for demo in range(3):
            actions = synthetic_actions(STEPS, task * 1000 + demo)
            for offset in expert:
                expert[offset].append(actions[STEPS // 2 + offset])
    for row in rows:
        predicted = np.stack(first_actions[row["offset"]])
        assert row["predicted_closed"] == float((predicted[:, -1] > 0).mean())
        np.testing.assert_allclose(row["predicted_xyz"], predicted[:, :3].mean(axis=0), atol=6e-4)  # rounded to 3 places
        np.testing.assert_allclose(row["expert_xyz"], np.stack(expert[row["offset"]])[:, :3].mean(axis=0), atol=6e-4)

    # The plot of two reports (here the same one twice), and a report without the rows refused by name.
    from PIL import Image

    from scripts import plot_first_close

    diagnosis = tmp_path / "diagnosis.json"
    plot_first_close.main([f"one={diagnosis}", f"two={diagnosis}", "--output", str(tmp_path / "plot.png")])
    assert Image.open(tmp_path / "plot.png").size == (1080, 360)
    (tmp_path / "bare.json").write_text(json.dumps({"results": report["results"]}))
    with pytest.raises(SystemExit, match="bare: no 'train' rows"):
        plot_first_close.main([f"bare={tmp_path / 'bare.json'}", "--output", str(tmp_path / "bare.png")])
