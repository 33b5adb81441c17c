"""eval_world_model.py and the world-model metrics: known values, the CLI end to end, resume, bad inputs."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import eval_world_model
import worldvla_data
import worldvla_metrics as metrics

try:
    from tests.libero_hdf5_fixture import write_libero_folder, write_libero_hdf5
except ImportError:
    from libero_hdf5_fixture import write_libero_folder, write_libero_hdf5

ROOT = Path(__file__).resolve().parent.parent
HORIZONS = "3,5"


# ---------------------------------------------------------------------------------------------------------------------
# Fixtures: a saved small model, a small LIBERO folder, a random VGG16 in torchvision's layout, a fake I3D detector
# ---------------------------------------------------------------------------------------------------------------------


class FakeI3D(torch.nn.Module):
    """Stands in for StyleGAN-V's i3d_torchscript.pt: same call (B, 3, T, H, W) floats and keyword flags; its
    features expose what it was given (the mean pixel value, the clip length, the flags)."""

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False):
        pooled = x.mean(dim=(3, 4))  # (B, 3, T)
        flags = torch.tensor([float(rescale), float(resize), float(return_features)], dtype=x.dtype)
        length = torch.full((x.shape[0], 1), float(x.shape[2]), dtype=x.dtype)
        return torch.cat([pooled.mean(2), pooled.std(2), length, flags.expand(x.shape[0], 3)], dim=1)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, small_worldvla):
    model, processor = small_worldvla
    folder = tmp_path_factory.mktemp("model")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Two tasks of 10 demos (20 steps, 64 px): the release's split holds out demo_9 of each task."""
    folder = tmp_path_factory.mktemp("libero")
    write_libero_folder(folder, num_tasks=2, num_demos=10, num_steps=20, noop_steps=(3,))
    return folder


@pytest.fixture(scope="module")
def vgg_weights(tmp_path_factory):
    torch.manual_seed(0)
    features = metrics.vgg16_features()
    state = {f"features.{name}": tensor for name, tensor in features.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(2, 2)  # the rest of torchvision's model: ignored
    path = tmp_path_factory.mktemp("vgg") / "vgg16.pth"
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def i3d_weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("i3d") / "i3d_torchscript.pt"
    torch.jit.script(FakeI3D()).save(str(path))
    return path


def cli_args(model_dir, data_dir, output_dir, *extra):
    return ["--model", str(model_dir), "--data-dir", str(data_dir), "--output-dir", str(output_dir),
            "--horizons", HORIZONS, "--device", "cpu", *extra]


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


# ---------------------------------------------------------------------------------------------------------------------
# Metrics on known pairs
# ---------------------------------------------------------------------------------------------------------------------


def test_identical_images_give_inf_psnr_100_ssim_and_80_db_with_epsilon():
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    assert np.all(np.isinf(metrics.psnr(images, images)))
    np.testing.assert_allclose(metrics.ssim(images, images), 100.0, atol=1e-9)
    np.testing.assert_allclose(metrics.psnr_with_epsilon(images, images), 80.0, atol=1e-9)  # piqa: 10 log10(1 / 1e-8)


def test_psnr_of_a_known_noise_level_matches_the_closed_form():
    rng = np.random.default_rng(1)
    target = rng.integers(20, 236, (4, 32, 32, 3)).astype(np.uint8)
    delta = 7  # every pixel off by +-7 levels: MSE = (7 / 255)^2 exactly
    noisy = (target.astype(int) + delta * rng.choice([-1, 1], target.shape)).astype(np.uint8)
    expected = 20 * math.log10(255 / delta)  # 31.23 dB
    np.testing.assert_allclose(metrics.psnr(noisy, target), expected, rtol=1e-7)  # torchmetrics: float32 constants
    with_epsilon = 10 * math.log10(1 / ((delta / 255) ** 2 + 1e-8))
    np.testing.assert_allclose(metrics.psnr_with_epsilon(noisy, target), with_epsilon, rtol=1e-12)
    assert abs(with_epsilon - expected) < 1e-4


def test_ssim_of_two_uniform_images_matches_the_closed_form():
    # Uniform images have no variance, so SSIM = (2 a b + C1) / (a^2 + b^2 + C1), C1 = (0.01 * range)^2.
    a, b = 100, 140
    first, second = np.full((1, 32, 32, 3), a, np.uint8), np.full((1, 32, 32, 3), b, np.uint8)
    a, b, c1 = a / 255, b / 255, 0.01**2
    expected = 100 * (2 * a * b + c1) / (a * a + b * b + c1)
    np.testing.assert_allclose(metrics.ssim(first, second), expected, rtol=1e-9)


def test_frechet_distance_of_two_gaussians_matches_the_closed_form():
    # Diagonal covariances: ||mu1 - mu2||^2 + sum (sqrt(a) - sqrt(b))^2.
    mean_1, mean_2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
    variances_1, variances_2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    expected = np.sum((mean_1 - mean_2) ** 2) + np.sum((np.sqrt(variances_1) - np.sqrt(variances_2)) ** 2)
    value = metrics.frechet_distance(mean_1, np.diag(variances_1), mean_2, np.diag(variances_2))
    assert value == pytest.approx(expected, rel=1e-12)  # 7.25 + 4 + 1 = 12.25
    # A full covariance S and c^2 S: (S c^2 S)^(1/2) = c S, so the trace term is (1 - c)^2 tr(S).
    rng = np.random.default_rng(2)
    root = rng.normal(size=(5, 5))
    covariance = root @ root.T + 0.1 * np.eye(5)
    value = metrics.frechet_distance(np.zeros(5), covariance, np.ones(5), 9.0 * covariance)
    assert value == pytest.approx(5.0 + 4.0 * np.trace(covariance), rel=1e-9)
    assert metrics.frechet_distance(mean_1, covariance[:3, :3], mean_1, covariance[:3, :3]) == pytest.approx(0.0, abs=1e-9)


def test_fvd_from_samples_approaches_the_closed_form():
    rng = np.random.default_rng(3)
    real = rng.normal([0.0, 0.0], [1.0, 2.0], size=(200_000, 2))
    generated = rng.normal([1.0, 0.0], [1.0, 1.0], size=(200_000, 2))
    mean, covariance = metrics.feature_statistics(real)
    np.testing.assert_allclose(covariance, np.cov(real, rowvar=False, bias=True), atol=1e-12)
    assert metrics.fvd(real, generated) == pytest.approx(1.0 + (2.0 - 1.0) ** 2, abs=0.03)
    assert metrics.fvd(real, real) == pytest.approx(0.0, abs=1e-6)


def reference_lpips(features, heads, first, second):
    """LPIPS written out from its definition (Zhang et al. 2018, v0.1): scale, VGG16 relu1_2 .. relu5_3, unit-normalise
    channels, squared difference, linear head, spatial mean, sum over stages."""
    shift = torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None]
    scale = torch.tensor([0.458, 0.448, 0.450])[None, :, None, None]
    total = 0.0
    x, y = (first - shift) / scale, (second - shift) / scale
    for stage, (start, end) in enumerate([(0, 4), (4, 9), (9, 16), (16, 23), (23, 30)]):
        for index in range(start, end):
            x, y = features[index](x), features[index](y)
        nx = x / torch.sqrt(1e-8 + (x**2).sum(1, keepdim=True))
        ny = y / torch.sqrt(1e-8 + (y**2).sum(1, keepdim=True))
        weight = heads[f"lin{stage}.model.1.weight"]
        total = total + torch.nn.functional.conv2d((nx - ny) ** 2, weight).mean((2, 3))
    return total.flatten()


def test_lpips_vgg_matches_its_definition_and_needs_torchvision_layout(vgg_weights, tmp_path):
    lpips = metrics.LPIPSVGG(vgg_weights)
    rng = np.random.default_rng(4)
    first = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    second = np.clip(first.astype(int) + rng.integers(-40, 41, first.shape), 0, 255).astype(np.uint8)
    np.testing.assert_allclose(lpips(first, first), 0.0, atol=1e-9)
    features = metrics.load_vgg16_features(vgg_weights)
    heads = torch.load(metrics.lpips_head_weights_path(), map_location="cpu", weights_only=True)
    with torch.no_grad():
        expected = 100 * reference_lpips(features, heads, metrics.frames_to_signed_tensor(second), metrics.frames_to_signed_tensor(first))
    values = lpips(first, second)
    assert values.shape == (2,) and np.all(values > 0)
    np.testing.assert_allclose(values, expected.double().numpy(), rtol=1e-4)
    broken = {k: v for k, v in torch.load(vgg_weights, weights_only=True).items() if k != "features.28.bias"}
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(ValueError, match=r"broken.pth: not a torchvision VGG16 state dict: missing \['features.28.bias'\]"):
        metrics.LPIPSVGG(tmp_path / "broken.pth")


def test_i3d_features_are_called_like_rynnvla(i3d_weights):
    detector = metrics.I3DFeatures(i3d_weights)
    videos = np.zeros((2, 6, 16, 16, 3), np.uint8)
    videos[0] = 255
    features = detector(videos)
    assert features.shape == (2, 10) and features.dtype == np.float64
    np.testing.assert_allclose(features[:, 0], [255.0, 0.0])  # floats in [0, 255], channels first
    np.testing.assert_allclose(features[:, 6], [6.0, 6.0])  # the clip's 6 frames on the time axis
    np.testing.assert_allclose(features[:, 7:], 1.0)  # rescale=True, resize=True, return_features=True


# ---------------------------------------------------------------------------------------------------------------------
# Data and rollouts
# ---------------------------------------------------------------------------------------------------------------------


def test_frames_are_prepared_as_for_training(tmp_path):
    path = write_libero_hdf5(tmp_path / "big_demo.hdf5", "open the drawer", num_demos=2, num_steps=12, image_size=128,
                             noop_steps=(2, 5))
    for episode in worldvla_data.read_libero_file(path, image_size=64):
        trajectory = eval_world_model.Trajectory(path, episode["demo"], "big", "named")
        frames, actions = eval_world_model.load_episode_frames(trajectory, 64, 7)
        np.testing.assert_array_equal(frames, episode["frames"][:7])
        np.testing.assert_array_equal(actions, episode["actions"][:7])


def test_batched_rollout_equals_the_models_rollout(small_worldvla):
    model, processor = small_worldvla
    rng = np.random.default_rng(5)
    first = rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    actions = rng.uniform(-0.5, 0.5, (2, 3, 7))
    models = eval_world_model.Models(model, processor, "cpu", unnorm_key=None)
    codes = eval_world_model.rollout_codes(models, processor.encode_images(list(first)), actions)
    assert codes.shape == (2, 3, 4, 4)
    for index in range(2):
        reference = model.rollout(first[index], actions[index], processor)
        np.testing.assert_array_equal(eval_world_model.decode_codes(processor, codes[index]), reference)


# ---------------------------------------------------------------------------------------------------------------------
# The CLI end to end
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, model_dir, data_dir, vgg_weights, i3d_weights):
    output_dir = tmp_path_factory.mktemp("cli") / "results"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, str(ROOT / "eval_world_model.py"),
               *cli_args(model_dir, data_dir, output_dir, "--batch-size", "2", "--threads", "1",
                         "--lpips-weights", str(vgg_weights), "--i3d-weights", str(i3d_weights))]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return output_dir, result


def test_cli_writes_every_output(cli_run, data_dir, small_worldvla):
    output_dir, result = cli_run
    _, processor = small_worldvla
    records = lines(output_dir / "trajectories.jsonl")
    assert [r["trajectory"] for r in records] == ["task_00/demo_9", "task_01/demo_9"]  # the release's val_ind split
    assert all(r["split"] == "val_ind" and r["generated_frames"] == 4 and r["batch_size"] == 2 for r in records)
    for record in records:
        trajectory = eval_world_model.Trajectory(data_dir / record["file"], record["demo"], record["task"], "val_ind")
        truth, _ = eval_world_model.load_episode_frames(trajectory, 64, 5)
        per_frame = record["per_frame"]
        assert record["frame_index"] == [0, 1, 2, 3, 4]
        # Frame 0 of every clip is the given frame: the prediction and the repeat equal the truth there.
        assert per_frame["prediction"]["psnr"][0] == pytest.approx(80.0) and per_frame["prediction"]["lpips"][0] == pytest.approx(0.0, abs=1e-6)
        repeat = np.repeat(truth[:1], 5, axis=0)
        np.testing.assert_allclose(per_frame["repeat_first_frame"]["psnr"], metrics.psnr_with_epsilon(repeat, truth))
        np.testing.assert_allclose(per_frame["repeat_first_frame"]["ssim"], metrics.ssim(repeat, truth))
        reconstruction = processor.decode_image_codes(processor.encode_images(list(truth)))
        np.testing.assert_allclose(per_frame["gt_recons"]["psnr"], metrics.psnr_with_epsilon(reconstruction, truth))
        for method in eval_world_model.METHODS:
            for metric in ("psnr", "ssim", "lpips"):
                assert record["horizons"]["3"][method][metric] == pytest.approx(np.mean(per_frame[method][metric][:3]))
        features = np.load(output_dir / record["features"])
        assert sorted(features.files) == sorted(f"{n}_{h}" for n in ("truth", *eval_world_model.METHODS) for h in (3, 5))
        assert features["truth_3"][6] == 3 and features["truth_5"][6] == 5
        import imageio

        video = np.stack(imageio.mimread(output_dir / record["video"]))
        assert video.shape == (5, 64, 128, 3)
        assert np.abs(video[:, :, :64].astype(int) - truth.astype(int)).mean() < 12  # truth on the left (lossy codec)
        from PIL import Image

        strip = np.asarray(Image.open(output_dir / record["filmstrip"]))
        assert record["filmstrip_frames"] == [0, 1, 2, 3, 4] and strip.shape == (2 * 128, 5 * 128, 3)
        top = np.concatenate(list(truth), axis=1).repeat(2, axis=0).repeat(2, axis=1)
        np.testing.assert_array_equal(strip[:128], top)  # truth above, lossless

    summary = json.loads((output_dir / "summary.json").read_text())
    assert summary["trajectories"] == 2 and summary["notes"] == []
    repeat_mean = np.mean([r["horizons"]["5"]["repeat_first_frame"]["psnr"] for r in records])
    assert summary["metrics"]["5"]["repeat_first_frame"]["psnr"] == pytest.approx(repeat_mean)
    for horizon in ("3", "5"):
        for method in eval_world_model.METHODS:
            entry = summary["metrics"][horizon][method]
            assert all(entry[m] is not None and math.isfinite(entry[m]) for m in ("fvd", "psnr", "ssim", "lpips"))
    assert len(summary["per_frame"]["prediction"]["psnr"]) == 5
    table = (output_dir / "results.md").read_text()
    assert "| method | FVD (3 fr) ↓ | PSNR ↑ | SSIM ↑ | LPIPS ↓ | FVD (5 fr) ↓ |" in table
    for label in ("| prediction |", "| gt_recons |", "| repeat first frame |"):
        assert label in table
    assert "n/a" not in table
    assert (output_dir / "metrics_per_frame.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    settings = json.loads((output_dir / "settings.json").read_text())
    assert settings["horizons"] == [3, 5] and settings["metrics"]["ssim_kernel_size"] == 11
    assert settings["metrics"]["lpips"]["sha256"] == eval_world_model.file_sha256(settings["metrics"]["lpips"]["path"])
    assert "| prediction |" in result.stdout


def test_missing_weights_show_n_a_with_a_note(tmp_path, model_dir, data_dir):
    summary = eval_world_model.main(cli_args(model_dir, data_dir, tmp_path, "--max-trajectories", "1", "--no-video"))
    table = (tmp_path / "results.md").read_text()
    assert "LPIPS not computed: no --lpips-weights" in table and "FVD not computed: no --i3d-weights" in table
    assert "| prediction | n/a |" in table
    assert summary["metrics"]["3"]["prediction"]["lpips"] is None and summary["metrics"]["3"]["prediction"]["psnr"] > 0
    assert not (tmp_path / "videos").exists()


def test_help_is_fast_and_imports_nothing_heavy():
    result = subprocess.run([sys.executable, str(ROOT / "eval_world_model.py"), "--help"], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and "--horizons" in result.stdout and "(default: [10, 50])" in result.stdout
    probe = "import sys, eval_world_model; print(sorted(m for m in ('torch', 'transformers', 'h5py') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "[]"


# ---------------------------------------------------------------------------------------------------------------------
# Resume
# ---------------------------------------------------------------------------------------------------------------------


def test_resume_recovers_a_truncated_line_and_skips_finished_trajectories(tmp_path, model_dir, data_dir, monkeypatch):
    args = cli_args(model_dir, data_dir, tmp_path, "--batch-size", "1", "--no-video")
    eval_world_model.main(args)
    path = tmp_path / "trajectories.jsonl"
    complete = path.read_text()
    first, second = complete.splitlines(keepends=True)
    path.write_text(first + second[: len(second) // 2])  # killed while writing the second line

    evaluated = []
    original = eval_world_model.evaluate_batch
    monkeypatch.setattr(eval_world_model, "evaluate_batch",
                        lambda models, batch, *rest: evaluated.append([t.id for t in batch]) or original(models, batch, *rest))
    summary = eval_world_model.main(args)
    assert evaluated == [["task_01/demo_9"]]  # only the trajectory whose line was cut
    records = lines(path)
    assert path.read_text().startswith(first) and len(records) == 2
    for key in ("per_frame", "horizons"):
        assert records[1][key] == json.loads(second)[key]  # greedy: the same values as the uninterrupted run
    assert summary["trajectories"] == 2

    evaluated.clear()
    eval_world_model.main(args)  # everything done: nothing generated, the model not even loaded
    assert evaluated == []


def test_a_run_killed_between_batches_resumes(tmp_path, model_dir, data_dir, monkeypatch):
    args = cli_args(model_dir, data_dir, tmp_path, "--batch-size", "1", "--no-video")
    original = eval_world_model.evaluate_batch

    def crash_on_second(models, batch, *rest):
        if batch[0].id == "task_01/demo_9":
            raise KeyboardInterrupt("simulated kill")
        return original(models, batch, *rest)

    monkeypatch.setattr(eval_world_model, "evaluate_batch", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        eval_world_model.main(args)
    assert [r["trajectory"] for r in lines(tmp_path / "trajectories.jsonl")] == ["task_00/demo_9"]
    assert not (tmp_path / "summary.json").exists()
    monkeypatch.setattr(eval_world_model, "evaluate_batch", original)
    summary = eval_world_model.main(args)
    assert [r["trajectory"] for r in lines(tmp_path / "trajectories.jsonl")] == ["task_00/demo_9", "task_01/demo_9"]
    assert summary["trajectories"] == 2


# ---------------------------------------------------------------------------------------------------------------------
# Bad inputs and settings, all caught before a model is loaded
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def no_model_loading(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the inputs were validated")

    monkeypatch.setattr(eval_world_model, "load_models", refuse)


def test_a_demo_shorter_than_the_horizon_is_an_error_or_skipped(tmp_path, model_dir, no_model_loading, caplog):
    data = tmp_path / "data"
    write_libero_hdf5(data / "short_demo.hdf5", "put the bowl on the plate", num_steps=[20, 4, 20])
    demos = "short_demo.hdf5:demo_0,short_demo.hdf5:demo_1"
    with pytest.raises(eval_world_model.EvaluationError, match=r"shorter than the longest horizon \(5 frames.*short_demo.hdf5:demo_1 \(4 frames\)"):
        eval_world_model.main(cli_args(model_dir, data, tmp_path / "out", "--demos", demos))
    args = eval_world_model.parse_args(cli_args(model_dir, data, tmp_path / "out", "--demos", demos, "--skip-short"))
    kept = eval_world_model.validate_trajectories(eval_world_model.select_trajectories(args), args)
    assert [t.id for t in kept] == ["short/demo_0"]
    assert "short_demo.hdf5:demo_1 (4 frames)" in caplog.text


def test_a_missing_camera_names_the_file_and_demo(tmp_path, model_dir, no_model_loading):
    data = tmp_path / "data"
    path = write_libero_hdf5(data / "nocam_demo.hdf5", "open the drawer", num_demos=2, num_steps=10)
    with h5py.File(path, "a") as file:
        del file["data/demo_1/obs/agentview_rgb"]
    with pytest.raises(eval_world_model.EvaluationError, match=r"nocam_demo.hdf5, data/demo_1: missing \['obs/agentview_rgb'\]"):
        eval_world_model.main(cli_args(model_dir, data, tmp_path / "out", "--split", "all"))


def test_bad_selections_are_clear_errors(tmp_path, model_dir, data_dir, no_model_loading):
    with pytest.raises(eval_world_model.EvaluationError, match="not FILE:DEMO"):
        eval_world_model.main(cli_args(model_dir, data_dir, tmp_path, "--demos", "demo_3"))
    with pytest.raises(eval_world_model.EvaluationError, match="no data/demo_42"):
        eval_world_model.main(cli_args(model_dir, data_dir, tmp_path, "--demos", "task_00_demo.hdf5:demo_42"))
    small = tmp_path / "small"
    write_libero_folder(small, num_tasks=2, num_demos=3)
    with pytest.raises(eval_world_model.EvaluationError, match="no held_out trajectories.*--demos"):
        eval_world_model.main(cli_args(model_dir, small, tmp_path / "out"))
    with pytest.raises(SystemExit):
        eval_world_model.parse_args(cli_args(model_dir, data_dir, tmp_path, "--lpips-weights", str(tmp_path / "none.pth")))


def test_named_demos_are_selected_in_order(tmp_path, model_dir, data_dir):
    args = eval_world_model.parse_args(
        cli_args(model_dir, data_dir, tmp_path, "--demos", "task_01_demo.hdf5:demo_2,task_00_demo.hdf5:demo_9")
    )
    selected = eval_world_model.select_trajectories(args)
    assert [(t.id, t.split) for t in selected] == [("task_01/demo_2", "train"), ("task_00/demo_9", "val_ind")]


def test_rerunning_with_other_settings_names_the_difference(tmp_path, model_dir, data_dir, monkeypatch):
    eval_world_model.main(cli_args(model_dir, data_dir, tmp_path, "--max-trajectories", "1", "--no-video"))
    monkeypatch.setattr(eval_world_model, "load_models", lambda *a: pytest.fail("loaded a model for a mismatched run"))
    changed = cli_args(model_dir, data_dir, tmp_path, "--max-trajectories", "1", "--no-video")
    changed[changed.index("--horizons") + 1] = "3,4"
    with pytest.raises(eval_world_model.EvaluationError, match=r"other settings.*horizons: \[3, 5\] in the folder, \[3, 4\] now"):
        eval_world_model.main(changed)
    with pytest.raises(eval_world_model.EvaluationError, match="first_frame: 'include' in the folder, 'exclude' now"):
        eval_world_model.main(cli_args(model_dir, data_dir, tmp_path, "--max-trajectories", "1", "--first-frame", "exclude"))
    # Batch size, device and video options do not change greedy results: the same settings, nothing to do.
    eval_world_model.main(cli_args(model_dir, data_dir, tmp_path, "--max-trajectories", "1", "--batch-size", "3"))


def test_benchmark_loops_give_the_same_tokens_as_generate(small_worldvla):
    """bench/world_model.py's hand-written greedy loops (its speed suggestions) must stay exact."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_world_model", ROOT / "bench" / "world_model.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    model, processor = small_worldvla
    inputs = bench.world_model_prompts(processor, 2, seed=0)
    reference = model.generate_image_tokens(inputs["input_ids"], inputs["attention_mask"])
    assert len(bench.frame_template(model.config)) == reference.shape[1] == model.config.image_sequence_length
    for fuse in (False, True):
        assert torch.equal(bench.manual_greedy(model, inputs["input_ids"], fuse_forced=fuse), reference)


def test_load_lpips_is_a_frozen_differentiable_module(vgg_weights):
    """`load_lpips` (train_vq.py's perceptual loss): tensors in [-1, 1], gradients reach the inputs only."""
    network = metrics.load_lpips(vgg_weights)
    network.train(True)  # torchmetrics' module stays in evaluation mode
    assert not network.training and not any(p.requires_grad for p in network.parameters())
    generator = torch.Generator().manual_seed(6)
    target = torch.rand(2, 3, 32, 32, generator=generator) * 2 - 1
    prediction = (target + 0.2 * torch.randn(2, 3, 32, 32, generator=generator)).clamp(-1, 1).requires_grad_(True)
    loss = network(prediction, target)
    assert loss.shape == (2, 1, 1, 1)
    loss.mean().backward()
    assert prediction.grad is not None and prediction.grad.abs().sum() > 0
    frames = ((prediction.detach() + 1) / 2 * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    truth = ((target + 1) / 2 * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(metrics.LPIPSVGG(vgg_weights)(frames, truth),
                               100 * network(metrics.frames_to_signed_tensor(truth), metrics.frames_to_signed_tensor(frames)).flatten().detach().numpy(),
                               rtol=1e-5)


def test_max_trajectories_takes_an_even_spread_over_tasks(tmp_path, model_dir, data_dir):
    args = eval_world_model.parse_args(cli_args(model_dir, data_dir, tmp_path, "--split", "all", "--max-trajectories", "3"))
    everything = eval_world_model.folder_trajectories(args.data_dir, args.val_split)
    tasks = sorted({t.path.name for t in everything})
    assert len(tasks) >= 2
    selected = eval_world_model.select_trajectories(args)
    first_of = {task: next(t.id for t in everything if t.path.name == task) for task in tasks}
    assert [t.id for t in selected[: len(tasks)]] == [first_of[task] for task in tasks][:3]
