"""The real push_to_hub / from_pretrained code of transformers, peft and huggingface_hub against tests/hub_server.py."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

try:
    from tests.hub_server import LocalHubServer, hub_env, local_hub
except ImportError:  # pytest run without the repo root on sys.path (tests/ is not a package)
    from hub_server import LocalHubServer, hub_env, local_hub

huggingface_hub = pytest.importorskip("huggingface_hub")
transformers = pytest.importorskip("transformers")
from huggingface_hub import HfApi, hf_hub_download  # noqa: E402
from huggingface_hub.errors import RemoteEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM  # noqa: E402

torch.set_num_threads(1)
REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def hub(tmp_path, monkeypatch):
    for server in local_hub(tmp_path, monkeypatch):
        yield server
        assert server.unrouted == [], f"the client called endpoints the local hub lacks: {server.unrouted}"


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    return LlamaForCausalLM(config).eval()


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate("pick up the red block".split())}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>",
                                                eos_token="</s>")


IDS = torch.tensor([[1, 5, 9, 3, 7, 2, 11, 4]])


@torch.no_grad()
def logits(model, ids=IDS):
    return model(ids).logits


def test_push_then_from_pretrained_gives_identical_logits(hub):
    model, tok = tiny_llama(), tiny_tokenizer()
    commit = model.push_to_hub("org/tiny")
    tok.push_to_hub("org/tiny")
    assert commit.oid in commit.commit_url and commit.commit_url.startswith(hub.endpoint)

    loaded = AutoModelForCausalLM.from_pretrained("org/tiny").eval()
    assert torch.equal(logits(model), logits(loaded))
    loaded_tok = AutoTokenizer.from_pretrained("org/tiny")
    assert loaded_tok("pick up the red block")["input_ids"] == tok("pick up the red block")["input_ids"]

    # the bytes went through the server: they are in its storage and were downloaded over HTTP
    head = (hub.repo_dir("org/tiny") / "refs" / "main").read_text()
    assert (hub.repo_dir("org/tiny") / "commits" / head / "tree" / "model.safetensors").is_file()
    assert ("POST", "/api/models/org/tiny/commit/main") in hub.requests
    assert any(m == "GET" and p.endswith("/model.safetensors") for m, p in hub.requests)
    files = HfApi().list_repo_files("org/tiny")
    assert {".gitattributes", "README.md", "config.json", "model.safetensors", "tokenizer.json"} <= set(files)


def test_second_push_makes_new_revision_and_old_sha_stays_loadable(hub):
    first, second = tiny_llama(seed=0), tiny_llama(seed=1)
    sha1 = first.push_to_hub("org/tiny").oid
    sha2 = second.push_to_hub("org/tiny").oid
    assert sha1 != sha2
    assert HfApi().model_info("org/tiny").sha == sha2
    assert HfApi().model_info("org/tiny", revision=sha1).sha == sha1

    latest = AutoModelForCausalLM.from_pretrained("org/tiny").eval()
    old = AutoModelForCausalLM.from_pretrained("org/tiny", revision=sha1).eval()
    assert torch.equal(logits(latest), logits(second))
    assert torch.equal(logits(old), logits(first))
    assert not torch.equal(logits(old), logits(latest))


def test_missing_repo_revision_and_file_raise_the_usual_errors(hub):
    with pytest.raises(OSError, match="not a valid model identifier"):
        AutoModelForCausalLM.from_pretrained("org/does-not-exist")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("org/does-not-exist", "config.json")
    tiny_llama().push_to_hub("org/tiny")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download("org/tiny", "config.json", revision="no-such-branch")
    with pytest.raises(OSError, match="not a valid git identifier"):
        AutoModelForCausalLM.from_pretrained("org/tiny", revision="0" * 40)
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download("org/tiny", "nope.bin")


def test_hfapi_upload_delete_tree_branch_and_snapshot(hub, tmp_path):
    api = HfApi()
    api.create_repo("org/data", repo_type="dataset")
    with pytest.raises(huggingface_hub.errors.HfHubHTTPError):
        api.create_repo("org/data", repo_type="dataset")  # 409 without exist_ok
    api.create_repo("org/data", repo_type="dataset", exist_ok=True)
    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("a")
    (folder / "sub" / "b.bin").write_bytes(bytes(range(256)))
    api.upload_folder(repo_id="org/data", repo_type="dataset", folder_path=folder)
    assert api.list_repo_files("org/data", repo_type="dataset") == [".gitattributes", "a.txt", "sub/b.bin"]
    infos = api.get_paths_info("org/data", ["a.txt", "sub", "missing"], repo_type="dataset")
    assert [(type(i).__name__, i.path) for i in infos] == [("RepoFile", "a.txt"), ("RepoFolder", "sub")]

    api.create_branch("org/data", branch="dev", repo_type="dataset")
    api.delete_file("sub/b.bin", repo_id="org/data", repo_type="dataset", revision="dev")
    assert api.list_repo_files("org/data", repo_type="dataset", revision="dev") == [".gitattributes", "a.txt"]
    assert "sub/b.bin" in api.list_repo_files("org/data", repo_type="dataset")  # main untouched
    local = huggingface_hub.snapshot_download("org/data", repo_type="dataset")
    assert Path(local, "sub", "b.bin").read_bytes() == bytes(range(256))
    # re-uploading an unchanged file is detected through the preupload oid: no new commit
    before = api.dataset_info("org/data").sha
    api.upload_file(path_or_fileobj=b"a", path_in_repo="a.txt", repo_id="org/data", repo_type="dataset")
    assert api.dataset_info("org/data").sha == before


def test_peft_lora_adapter_push_and_load(hub):
    peft = pytest.importorskip("peft")
    base = tiny_llama()
    lora = peft.get_peft_model(base, peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    lora.eval()
    expected = logits(lora)
    lora.push_to_hub("org/tiny-lora")
    assert "adapter_model.safetensors" in HfApi().list_repo_files("org/tiny-lora")

    reloaded = peft.PeftModel.from_pretrained(tiny_llama(), "org/tiny-lora").eval()
    assert torch.equal(logits(reloaded), expected)
    assert not torch.equal(logits(tiny_llama()), expected)  # the adapter matters


def test_fresh_subprocess_loads_by_environment_only(hub, tmp_path):
    """The in-process push reached the server, and a fresh process configured by HF_ENDPOINT alone can load it."""
    model = tiny_llama()
    sha = model.push_to_hub("org/tiny").oid
    script = (
        "import json, sys, torch\n"
        "torch.set_num_threads(1)\n"
        "from huggingface_hub import constants\n"
        "from transformers import AutoModelForCausalLM\n"
        "m = AutoModelForCausalLM.from_pretrained('org/tiny').eval()\n"
        f"out = m(torch.tensor({IDS.tolist()})).logits\n"
        "json.dump({'endpoint': constants.ENDPOINT, 'logits': out.tolist()}, open(sys.argv[1], 'w'))\n"
    )
    out = tmp_path / "child.json"
    env = {**os.environ, **hub_env(hub.endpoint, tmp_path / "child-home")}
    proc = subprocess.run([sys.executable, "-c", script, str(out)], env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["endpoint"] == hub.endpoint
    assert torch.equal(torch.tensor(result["logits"]), logits(model))
    assert ("GET", f"/org/tiny/resolve/{sha}/model.safetensors") in hub.requests


def test_server_context_manager_and_storage_persist_across_restarts(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # explicit endpoint, no env needed
    storage = tmp_path / "store"
    with LocalHubServer(storage) as hub:
        api = HfApi(endpoint=hub.endpoint, token="anything")
        api.create_repo("org/keep")
        sha = api.upload_file(path_or_fileobj=b"{}", path_in_repo="x.json", repo_id="org/keep").oid
    with LocalHubServer(storage) as hub2:  # a new port, the same repos
        assert HfApi(endpoint=hub2.endpoint, token="x").model_info("org/keep").sha == sha


def test_command_line_server_prints_its_environment_and_serves(tmp_path):
    server = subprocess.Popen([sys.executable, str(REPO_ROOT / "tests" / "hub_server.py"), "--port", "0", "--storage", str(tmp_path / "hub")],
                              stdout=subprocess.PIPE, text=True)
    try:
        exports = {}
        for line in server.stdout:
            if line.startswith("export "):
                key, value = line[len("export "):].strip().split("=", 1)
                exports[key] = value
            if line.startswith("Ctrl-C"):
                break
        assert exports["HF_HUB_OFFLINE"] == "0" and exports["HF_HOME"] == str(tmp_path / "hub" / "client-home")
        client = """
from huggingface_hub import HfApi, hf_hub_download
api = HfApi()
api.create_repo("org/notes")
api.upload_file(path_or_fileobj=b"served", path_in_repo="notes.txt", repo_id="org/notes")
print(open(hf_hub_download("org/notes", "notes.txt")).read())
"""
        # Exactly the printed environment: a user pastes those lines and the libraries talk to this server.
        result = subprocess.run([sys.executable, "-c", client], env={**os.environ, **exports}, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-2000:]
        assert result.stdout.strip() == "served" and (tmp_path / "hub" / "models" / "org" / "notes").is_dir()
    finally:
        server.terminate()
        server.wait(timeout=30)
