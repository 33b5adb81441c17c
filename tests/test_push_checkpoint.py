"""scripts/push_checkpoint.py: a checkpoint folder goes up as it is (card, training summary, results), checked first."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

try:
    from tests.hub_server import hub_env, local_hub
except ImportError:  # pytest run without the repo root on sys.path
    from hub_server import hub_env, local_hub

from scripts.push_checkpoint import checkpoint_problems, push_folder

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "checkpoints" / "worldvla-libero-spatial-64"


@pytest.fixture
def hub(tmp_path, monkeypatch):
    yield from local_hub(tmp_path, monkeypatch)


def test_the_shipped_checkpoint_goes_up_with_its_card_and_results_and_loads_by_id(hub, tmp_path):
    env = {**os.environ, **hub_env(hub.endpoint, tmp_path / "pusher-home"), "PYTHONPATH": str(ROOT)}
    pushed = subprocess.run([sys.executable, "scripts/push_checkpoint.py", str(SHIPPED), "--repo-id", "org/spatial-64"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert pushed.returncode == 0, pushed.stderr[-3000:]
    assert pushed.stdout.strip().startswith(f"{hub.endpoint}/org/spatial-64/commit/")
    script = """
import json, sys
from huggingface_hub import hf_hub_download
from transformers import AutoModelForCausalLM, AutoProcessor
model = AutoModelForCausalLM.from_pretrained("org/spatial-64", trust_remote_code=True)
processor = AutoProcessor.from_pretrained("org/spatial-64", trust_remote_code=True)
files = {name: open(hf_hub_download("org/spatial-64", name)).read() for name in sys.argv[1:]}
print(json.dumps({"parameters": sum(p.numel() for p in model.parameters()), "key": processor.default_unnorm_key, "files": files}))
"""
    names = ["README.md", "training_summary.json", "eval/summary.json", "eval/results.md"]
    loaded = subprocess.run([sys.executable, "-c", script, *names], cwd=tmp_path, env={**env, **hub_env(hub.endpoint, tmp_path / "client-home")},
                            capture_output=True, text=True, timeout=300)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    result = json.loads(loaded.stdout.strip().splitlines()[-1])
    assert result["key"] == "libero_spatial"
    from modeling_worldvla import WorldVLAForConditionalGeneration

    assert result["parameters"] == sum(p.numel() for p in WorldVLAForConditionalGeneration.from_pretrained(SHIPPED).parameters())
    for name in names:
        assert result["files"][name] == (SHIPPED / name).read_text()  # the project's card, not a placeholder


def test_a_folder_that_would_not_load_is_named_and_not_pushed(hub, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(SHIPPED, folder, ignore=shutil.ignore_patterns("eval", "vq_eval", "*.png"))
    assert checkpoint_problems(folder) == []
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:4096])
    (folder / "training_args.bin").write_bytes(b"pickle")
    with pytest.raises(ValueError, match="truncated") as error:
        push_folder(folder, "org/broken")
    assert "training_args.bin" in str(error.value) and not hub.repo_dir("org/broken").exists()

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tmp_path / "base")}))
    problems = checkpoint_problems(adapter)
    assert any("no adapter_model.safetensors" in p for p in problems)
    assert any("base_model_name_or_path" in p and "--base-model-id" in p for p in problems)
    assert checkpoint_problems(tmp_path / "missing") == [f"{tmp_path / 'missing'}: no such folder"]
