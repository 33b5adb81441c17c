"""Packaging: save/load, remote code in a fresh process, Hub push and pull, LoRA adapters."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file

from hub_server import hub_env, local_hub
from modeling_worldvla import WorldVLAForConditionalGeneration
from processing_worldvla import WorldVLAProcessor
from scripts.build_small_checkpoint import build_small_worldvla

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Loads a checkpoint only through the Auto classes and remote code, then writes what it computed.
CHILD = """
import sys, numpy as np, torch
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoProcessor
torch.set_num_threads(1)
source, output = sys.argv[1], sys.argv[2]
config = AutoConfig.from_pretrained(source, trust_remote_code=True)
model = AutoModelForCausalLM.from_pretrained(source, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(source, trust_remote_code=True)
assert type(config).__name__ == "WorldVLAConfig", type(config)
assert type(model).__name__ == "WorldVLAForConditionalGeneration", type(model)
assert type(processor).__name__ == "WorldVLAProcessor", type(processor)
rng = np.random.default_rng(0)
frames = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(2)]
inputs = processor(text="put the bowl on the plate", images=frames)
with torch.no_grad():
    logits = model(**inputs).logits
actions = torch.from_numpy(model.predict_action(**inputs, processor=processor))
frame = torch.from_numpy(model.predict_next_frame(frames[1], np.zeros(7), processor))
save_file({"logits": logits.contiguous(), "actions": actions, "frame": frame}, output)
"""


def expected_outputs(model, processor):
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(2)]
    inputs = processor(text="put the bowl on the plate", images=frames)
    with torch.no_grad():
        logits = model(**inputs).logits
    return {
        "logits": logits,
        "actions": torch.from_numpy(model.predict_action(**inputs, processor=processor)),
        "frame": torch.from_numpy(model.predict_next_frame(frames[1], np.zeros(7), processor)),
    }


def run_child(source, output, env):
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(source), str(output)], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return load_file(output)


def assert_same_outputs(got, expected):
    assert torch.equal(got["actions"], expected["actions"])
    assert torch.equal(got["frame"], expected["frame"])
    torch.testing.assert_close(got["logits"], expected["logits"], rtol=0, atol=1e-6)


def test_save_and_load_round_trip(small_worldvla, tmp_path):
    model, processor = small_worldvla
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    for name in ("configuration_worldvla.py", "modeling_worldvla.py", "processing_worldvla.py", "model.safetensors"):
        assert (tmp_path / name).exists(), name
    assert not list(tmp_path.rglob("*.bin")) and not list(tmp_path.rglob("*.pt"))
    loaded = WorldVLAForConditionalGeneration.from_pretrained(tmp_path).eval()
    saved_config = {k: v for k, v in loaded.config.to_dict().items() if k != "_name_or_path"}
    assert saved_config == {k: v for k, v in model.config.to_dict().items() if k != "_name_or_path"}
    for (name, parameter), (_, other) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(parameter, other), name
    assert_same_outputs(expected_outputs(loaded, WorldVLAProcessor.from_pretrained(tmp_path)), expected_outputs(model, processor))


def test_fresh_process_loads_remote_code(small_worldvla, tmp_path):
    model, processor = small_worldvla
    folder = tmp_path / "checkpoint"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "home"), "PYTHONPATH": ""}
    # Run from outside the repository so that only the checkpoint's own code files can be imported.
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(folder), str(tmp_path / "out.safetensors")],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert_same_outputs(load_file(tmp_path / "out.safetensors"), expected_outputs(model, processor))


@pytest.fixture
def hub(tmp_path, monkeypatch):
    yield from local_hub(tmp_path, monkeypatch)


def test_push_to_hub_and_load_by_name(small_worldvla, hub, tmp_path):
    model, processor = small_worldvla
    model.push_to_hub("lab/worldvla-small")
    processor.save_pretrained(tmp_path / "processor", push_to_hub=True, repo_id="lab/worldvla-small")
    stored = hub.repo_dir("lab/worldvla-small")
    assert stored.exists()
    env = {**os.environ, **hub_env(hub.endpoint, tmp_path / "child-home")}
    got = run_child("lab/worldvla-small", tmp_path / "out.safetensors", env)
    assert_same_outputs(got, expected_outputs(model, processor))
    downloads = {path for method, path in hub.requests if "/resolve/" in path}
    for name in ("model.safetensors", "modeling_worldvla.py", "processing_worldvla.py", "vqgan/model.safetensors"):
        assert any(path.endswith(name) for path in downloads), name


def test_lora_adapter_round_trip_and_merge(tmp_path, frames):
    model, processor = build_small_worldvla(seed=3)
    lora = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in lora.named_parameters():
            if "lora_B" in name:  # B starts at zero: give the adapter an effect to carry
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    lora.eval()
    inputs = processor(text="turn on the stove", images=frames)
    with torch.no_grad():
        adapted = lora(**inputs).logits
    lora.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()

    base, _ = build_small_worldvla(seed=3)
    reloaded = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    with torch.no_grad():
        assert torch.equal(reloaded(**inputs).logits, adapted)
        base_logits = build_small_worldvla(seed=3)[0](**inputs).logits
    assert (base_logits - adapted).abs().max() > 1e-3

    merged = reloaded.merge_and_unload()
    merged.save_pretrained(tmp_path / "merged")
    processor.save_pretrained(tmp_path / "merged")
    assert (tmp_path / "merged" / "modeling_worldvla.py").exists()
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", trust_remote_code=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, adapted, rtol=0, atol=1e-5)
    actions = loaded.predict_action(**inputs, processor=processor)
    np.testing.assert_array_equal(actions, merged.predict_action(**inputs, processor=processor))
