"""scripts/trace_episode.py on the scripted expert in the real simulator: a known success, traced."""
import json

import numpy as np
import pytest

from scripts import trace_episode


def test_the_expert_closes_the_gripper_at_the_bowl_it_is_asked_to_pick(tmp_path):
    output = tmp_path / "trace.json"
    summary = trace_episode.main(["--policy", "scripted", "--task", "0", "--trial", "0", "--output", str(output)])
    trace = json.loads(output.read_text())
    assert trace["summary"] == summary and summary["success"]
    assert len(trace["rows"]) == summary["policy_steps"]
    first = summary["first_close_step"]
    assert all(row["action"][6] < 0 for row in trace["rows"][:first]) and trace["rows"][first]["action"][6] > 0
    # task 0 picks the bowl between the plate and the ramekin, akita_black_bowl_1: the expert closes on its rim
    offset = np.array(summary["hand_minus_object_at_first_close"]["akita_black_bowl_1"])
    assert np.linalg.norm(offset[:2]) < 0.06 and abs(offset[2]) < 0.04
    assert min(summary["closest_approach"], key=lambda name: summary["closest_approach"][name]["distance"]) in (
        "akita_black_bowl_1", "plate_1")  # carried to the plate, the bowl stays in the hand
    hands = np.array([row["hand"] for row in trace["rows"]])
    bowl = np.array([row["objects"]["akita_black_bowl_1"] for row in trace["rows"]])
    distances = np.linalg.norm(hands - bowl, axis=1)
    assert summary["closest_approach"]["akita_black_bowl_1"]["distance"] == pytest.approx(distances.min(), abs=1e-4)


def test_a_model_is_needed_by_the_worldvla_policy_only(tmp_path):
    with pytest.raises(SystemExit):
        trace_episode.parse_args(["--output", str(tmp_path / "t.json")])
    with pytest.raises(SystemExit):
        trace_episode.parse_args(["--policy", "scripted", "--model", "m", "--output", str(tmp_path / "t.json")])
