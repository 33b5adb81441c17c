"""Upload a WorldVLA checkpoint folder to the Hugging Face Hub as it is.

    python scripts/push_checkpoint.py checkpoints/worldvla-libero-spatial-64 --repo-id you/worldvla-libero-spatial-64
    python scripts/push_checkpoint.py runs/ft/adapter --repo-id you/worldvla-spatial-lora --private

Everything in the folder goes up in one commit: the weights, the code files (`trust_remote_code`), the processor
with its action statistics, and the project's own model card, `training_summary.json`, `training_curves.png` and
evaluation results. (`model.push_to_hub` alone uploads the weights with transformers' placeholder card.)
`train.py --push-to-hub` uses the same upload. Before anything is sent the folder is checked: a model
(`config.json` + `model.safetensors`) or a LoRA adapter (`adapter_config.json` + `adapter_model.safetensors`),
every safetensors file complete, no pickle files, and an adapter's base resolvable from another machine (a Hub
id, not a local path). The token comes from `--token`, `HF_TOKEN` or `hf auth login`; `HF_ENDPOINT` selects
another Hub (e.g. `tests/hub_server.py`, the local Hub-compatible server).
"""

import argparse
import json
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from modeling_worldvla import safetensors_problem  # noqa: E402
from worldvla_cli import HelpFormatter, configure_logging  # noqa: E402

logger = logging.getLogger("push_checkpoint")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def checkpoint_problems(folder):
    """What would make the uploaded folder unusable, as sentences (empty when it is fine to push)."""
    folder = Path(folder)
    if not folder.is_dir():
        return [f"{folder}: no such folder"]
    problems = []
    is_adapter = (folder / "adapter_config.json").is_file()
    weights = folder / ("adapter_model.safetensors" if is_adapter else "model.safetensors")
    if not is_adapter and not (folder / "config.json").is_file():
        problems.append(f"{folder}: neither config.json (a model) nor adapter_config.json (a LoRA adapter)")
    if not weights.is_file():
        problems.append(f"{folder}: no {weights.name}")
    problems += [problem for path in sorted(folder.rglob("*.safetensors")) if (problem := safetensors_problem(path))]
    pickles = sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.suffix in PICKLE_SUFFIXES)
    if pickles:
        problems.append(f"{folder}: pickle files {pickles} (a published checkpoint holds safetensors only; delete them)")
    if is_adapter:
        base = json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path")
        if not base or Path(base).is_absolute() or Path(base).exists():
            problems.append(
                f"{folder / 'adapter_config.json'}: base_model_name_or_path is {base!r}, which another machine cannot "
                "load; publish the base and record its Hub id (train.py --base-model-id, or edit the file)"
            )
    return problems


def push_folder(folder, repo_id, token=None, private=False, revision=None, commit_message=None):
    """Uploads `folder` to the model repo `repo_id` (created when missing) in one commit; returns the CommitInfo."""
    from huggingface_hub import HfApi

    problems = checkpoint_problems(folder)
    if problems:
        raise ValueError(f"not pushing {folder}: " + "; ".join(problems))
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    if revision is not None:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    commit = api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        revision=revision,
        commit_message=commit_message or f"Upload {Path(folder).name} (WorldVLA)",
    )
    logger.info("pushed %s to %s", folder, commit.commit_url)
    return commit


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("folder", type=Path, help="checkpoint folder: a from_pretrained model, or a LoRA adapter")
    parser.add_argument("--repo-id", required=True, help="Hub model repo, e.g. you/worldvla-libero-spatial-64")
    parser.add_argument("--revision", default=None, help="branch to commit to (created when missing); default: main")
    parser.add_argument("--private", action="store_true", help="create the repo private")
    parser.add_argument("--token", default=None, help="Hub token; default: HF_TOKEN or the stored login")
    parser.add_argument("--commit-message", default=None, help="default: 'Upload <folder name> (WorldVLA)'")
    return parser.parse_args(argv)


def main(argv=None):
    configure_logging()
    args = parse_args(argv)
    try:
        commit = push_folder(args.folder, args.repo_id, args.token, args.private, args.revision, args.commit_message)
    except ValueError as error:
        raise SystemExit(str(error)) from None
    print(commit.commit_url)
    return commit


if __name__ == "__main__":
    main()
