"""train_vq.py: the image tokenizer trains, resumes exactly, keeps its codebook in use, and refuses bad data."""

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import train_vq
import worldvla_vq_training as vq_training
from modeling_worldvla import WorldVLAVQModel
from processing_worldvla import WorldVLAProcessor
from tests.libero_hdf5_fixture import write_libero_folder

TINY = ["--image-size", "32", "--downsample", "8", "--codebook-size", "32", "--base-channels", "8", "--embed-dim", "8",
        "--num-res-blocks", "1", "--batch-size", "4", "--warmup-steps", "2", "--eval-frames", "16", "--final-eval-frames", "16",
        "--logging-steps", "2", "--threads", "1"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vq_data")
    write_libero_folder(folder, num_tasks=2, num_demos=4, num_steps=12, image_size=32)
    return folder


def run(data_dir, output_dir, *extra):
    train_vq.main(["--data-dir", str(data_dir), "--output-dir", str(output_dir), *TINY, *extra])
    return json.loads((output_dir / "eval" / "metrics.json").read_text())


def test_training_lowers_the_reconstruction_error_and_writes_a_processor(data_dir, tmp_path):
    metrics = run(data_dir, tmp_path / "run", "--max-steps", "40", "--eval-every", "10", "--save-every", "20", "--learning-rate", "3e-3")
    curve = metrics["curve"]
    assert [record["step"] for record in curve] == [10, 20, 30, 40]
    assert curve[-1]["psnr"] > curve[0]["psnr"] + 1.0
    assert metrics["final"]["frames"] == 16  # held-out: the last of the 4 demos of each file, 12 frames each
    for name in ("results.md", "reconstructions.png", "psnr_curve.png"):
        assert (tmp_path / "run" / "eval" / name).is_file()
    assert len(vq_training.list_checkpoints(tmp_path / "run")) == 2


def test_saved_processor_gives_the_same_codes(data_dir, tmp_path):
    run(data_dir, tmp_path / "run", "--max-steps", "4", "--eval-every", "4", "--save-every", "4")
    processor = WorldVLAProcessor.from_pretrained(tmp_path / "run" / "processor")
    checkpoint = WorldVLAVQModel.from_pretrained(tmp_path / "run" / "checkpoint-4" / "vq")
    frames, _, _ = vq_training.load_frames([data_dir], 32)
    from processing_worldvla import images_to_pixel_values

    expected = checkpoint.encode(images_to_pixel_values(list(frames[:8])))
    assert torch.equal(processor.encode_images(list(frames[:8])), expected)
    assert processor.layout["image_size"] == 32 and processor.layout["image_patch_size"] == 8
    assert processor.layout["image_codebook_size"] == 32


def test_processor_feeds_a_model_built_and_trained_from_scratch(data_dir, tmp_path):
    """The user's path: train_vq.py -> build_small_checkpoint.py --processor -> train.py --from-scratch-config."""
    import subprocess
    import sys

    import train

    run(data_dir, tmp_path / "vq", "--max-steps", "2", "--eval-every", "2", "--save-every", "2")
    script = Path(__file__).resolve().parent.parent / "scripts" / "build_small_checkpoint.py"
    subprocess.run([sys.executable, str(script), "--output-dir", str(tmp_path / "init"), "--processor", str(tmp_path / "vq" / "processor"),
                    "--layers", "1", "--hidden-size", "32"], check=True, capture_output=True)
    built = WorldVLAProcessor.from_pretrained(tmp_path / "init")
    trained = WorldVLAProcessor.from_pretrained(tmp_path / "vq" / "processor")
    frames, _, _ = vq_training.load_frames([data_dir], 32)
    assert torch.equal(built.encode_images(list(frames[:4])), trained.encode_images(list(frames[:4])))
    config = json.loads((tmp_path / "init" / "config.json").read_text())
    assert config["image_size"] == 32 and config["image_patch_size"] == 8 and config["num_hidden_layers"] == 1
    train.main(["--from-scratch-config", str(tmp_path / "init" / "config.json"), "--processor", str(tmp_path / "init"),
                "--data-dir", str(data_dir), "--data-cache-dir", str(tmp_path / "cache"), "--output-dir", str(tmp_path / "model"),
                "--max-steps", "2", "--per-device-train-batch-size", "2", "--global-batch-size", "2", "--save-strategy", "no",
                "--eval-strategy", "no", "--disable-tqdm", "true", "--report-to", "none", "--use-cpu"])
    summary = json.loads((tmp_path / "model" / "model" / "training_summary.json").read_text())
    assert summary["action_stats"] == "quantile"
    saved = WorldVLAProcessor.from_pretrained(tmp_path / "model" / "model")
    assert torch.equal(saved.encode_images(list(frames[:4])), trained.encode_images(list(frames[:4])))


def test_resume_equals_an_uninterrupted_run(data_dir, tmp_path):
    common = ("--eval-every", "3", "--save-every", "3")
    run(data_dir, tmp_path / "straight", "--max-steps", "6", *common)
    run(data_dir, tmp_path / "resumed", "--max-steps", "3", *common)
    run(data_dir, tmp_path / "resumed", "--max-steps", "6", *common)
    straight = load_file(tmp_path / "straight" / "checkpoint-6" / "vq" / "model.safetensors")
    resumed = load_file(tmp_path / "resumed" / "checkpoint-6" / "vq" / "model.safetensors")
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
    ema_straight = load_file(tmp_path / "straight" / "checkpoint-6" / vq_training.TRAINING_STATE)
    ema_resumed = load_file(tmp_path / "resumed" / "checkpoint-6" / vq_training.TRAINING_STATE)
    assert all(torch.equal(ema_straight[name], ema_resumed[name]) for name in ema_straight)


def test_resume_with_other_settings_is_refused(data_dir, tmp_path):
    run(data_dir, tmp_path / "run", "--max-steps", "2", "--eval-every", "2", "--save-every", "2")
    with pytest.raises(SystemExit, match="codebook_size"):
        train_vq.main(["--data-dir", str(data_dir), "--output-dir", str(tmp_path / "run"), *TINY[:4], "--codebook-size", "64", *TINY[6:], "--max-steps", "4"])


def test_incomplete_checkpoint_is_skipped(tmp_path, caplog):
    (tmp_path / "checkpoint-4").mkdir()
    (tmp_path / "checkpoint-2").mkdir()
    (tmp_path / "checkpoint-2" / vq_training.TRAINER_STATE).write_text("{}")
    assert vq_training.list_checkpoints(tmp_path) == [tmp_path / "checkpoint-2"]
    assert "checkpoint-4 is incomplete" in caplog.text


def test_dead_code_restarts_keep_every_code_in_use():
    """Four clusters of latents and eight codes initialised far away: without restarts, at most four codes are
    ever used; with them, every code is put back on the data and ends up used."""
    torch.manual_seed(0)
    embedding = torch.nn.Embedding(8, 2)
    embedding.weight.data = torch.full((8, 2), 50.0) + torch.arange(8.0)[:, None]
    codebook = vq_training.EMACodebook(embedding, decay=0.9)
    centres = torch.tensor([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0], [4.0, 4.0]])
    generator = np.random.default_rng(0)
    for step in range(200):
        latents = centres.repeat(16, 1) + 0.8 * torch.randn(64, 2)
        codes = torch.cdist(latents, embedding.weight).argmin(1)
        codebook.update(latents, codes)
        if step % 10 == 9:
            dead = codebook.dead_codes(0.5)
            if len(dead):
                codebook.restart(dead, latents[torch.from_numpy(generator.choice(64, len(dead), replace=False))])
    latents = centres.repeat(64, 1) + 0.8 * torch.randn(256, 2)
    used = torch.cdist(latents, embedding.weight).argmin(1).unique()
    assert len(used) == 8


def test_codebook_usage_and_perplexity_known_values():
    usage = vq_training.codebook_usage(torch.tensor([0, 1, 2, 3] * 5), 8)
    assert usage["codebook_usage"] == 0.5
    assert usage["perplexity"] == pytest.approx(4.0)


def test_no_frames_is_an_error_naming_the_folder(tmp_path):
    with pytest.raises(SystemExit):
        train_vq.parse_args(["--data-dir", str(tmp_path), "--output-dir", str(tmp_path / "out")])


def test_wrong_frame_shape_names_the_file(tmp_path):
    path = write_libero_folder(tmp_path, num_tasks=1, num_demos=2, num_steps=4, image_size=32)[0]
    with h5py.File(path, "a") as file:
        del file["data/demo_1/obs/agentview_rgb"]
        file["data/demo_1/obs/agentview_rgb"] = np.zeros((4, 32, 32, 4), np.uint8)
    with pytest.raises(ValueError, match=rf"{path.name}.*demo_1.*\(T, H, W, 3\)"):
        vq_training.load_frames([tmp_path], 32)


def test_nan_frames_name_the_file(tmp_path):
    path = write_libero_folder(tmp_path, num_tasks=1, num_demos=2, num_steps=4, image_size=32)[0]
    with h5py.File(path, "a") as file:
        del file["data/demo_0/obs/agentview_rgb"]
        file["data/demo_0/obs/agentview_rgb"] = np.full((4, 32, 32, 3), np.nan, np.float32)
    with pytest.raises(ValueError, match=rf"{path.name}.*demo_0.*uint8"):
        vq_training.load_frames([tmp_path], 32)
