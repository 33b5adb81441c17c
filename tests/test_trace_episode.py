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


def test_cli_errors_name_the_problem(tmp_path, capsys):
    output = ["--output", str(tmp_path / "t.json")]
    for argv, message in (
        ([], "--model is needed by --policy worldvla, and only by it"),
        (["--policy", "scripted", "--model", "m"], "--model is needed by --policy worldvla, and only by it"),
        (["--model", "m", "--gripper-hold", "0"], "--gripper-hold must be at least 1"),
        (["--policy", "scripted", "--gripper-hold", "3"], "--gripper-hold applies to a WorldVLA policy"),
        (["--model", "m", "--gripper-hold-direction", "release"], "--gripper-hold-direction needs --gripper-hold above 1"),
    ):
        with pytest.raises(SystemExit):
            trace_episode.parse_args([*argv, *output])
        assert message in capsys.readouterr().err
    assert trace_episode.parse_args(["--model", "m", "--gripper-hold", "3", "--gripper-hold-direction", "release", *output])


def test_plot_traces_places_the_hand_relative_to_the_objects_first_position(tmp_path):
    from PIL import Image

    from scripts import plot_traces

    rows = [{"hand": [0.1 * step, 0.2, 1.0 - 0.1 * step], "finger_gap": 0.08, "action": [0.0] * 7,
             "objects": {"bowl": [0.05 + step, -0.1, 0.9], "plate": [0.0, 0.0, 0.9]}} for step in range(4)]
    trace = {"settings": {}, "summary": {"success": False, "policy_steps": 4, "first_close_step": 2}, "rows": rows}
    np.testing.assert_allclose(plot_traces.hand_relative_to(trace, "bowl"),
                               [[-0.05, 0.3, 0.1], [0.05, 0.3, 0.0], [0.15, 0.3, -0.1], [0.25, 0.3, -0.2]], atol=1e-12)
    with pytest.raises(SystemExit, match=r"no object 'mug' in the trace; it has \['bowl', 'plate'\]"):
        plot_traces.hand_relative_to(trace, "mug")
    (tmp_path / "a.json").write_text(json.dumps(trace))
    plot_traces.main(["model=" + str(tmp_path / "a.json"), "--object", "bowl", "--output", str(tmp_path / "paths.png")])
    assert Image.open(tmp_path / "paths.png").size == (1350, 378)  # 15 x 4.2 inches at 90 dpi
