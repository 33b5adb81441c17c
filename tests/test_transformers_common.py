"""transformers' own common model tests (`ModelTesterMixin` of tests/test_modeling_common.py) on a tiny WorldVLA.

The tests ship in transformers' source distribution, not in the wheel. Get the pinned one and point at it:

    pip download transformers==5.23.0 --no-binary :all: --no-deps -d /tmp/sdist
    TRANSFORMERS_TESTS_SDIST=/tmp/sdist/transformers-5.23.0.tar.gz python -m pytest -q tests/test_transformers_common.py

(an extracted source folder works too; `parameterized` must be installed). Without it the module is skipped.
The sdist lacks tests/generation/ and tests/exporters/, so `GenerationTesterMixin` cannot run and
`ExportTesterMixin` is replaced by an empty mixin. Failures here are the places where WorldVLA deliberately
differs from a plain causal LM (e.g. an action mask that needs token ids) or where a common test assumes
something this model does not have; they are reported, not hidden.
"""

import importlib.util
import os
import sys
import tarfile
import tempfile
import types
import unittest
from pathlib import Path

import pytest
import torch
import transformers
from transformers.models.auto import modeling_auto

from configuration_worldvla import WorldVLAConfig
from modeling_worldvla import WorldVLAForConditionalGeneration, WorldVLAModel

SDIST = os.environ.get("TRANSFORMERS_TESTS_SDIST")
PACKAGE = "transformers_sdist_tests"


def sdist_tests_folder(source):
    """The `tests/` folder of an extracted source tree, or of a .tar.gz extracted once into the temp folder."""
    source = Path(source)
    if source.is_dir():
        return source / "tests"
    target = Path(tempfile.gettempdir()) / f"worldvla-{source.name.removesuffix('.tar.gz')}"
    if not (target / "tests" / "test_modeling_common.py").exists():
        with tarfile.open(source) as archive:
            members = [m for m in archive.getmembers() if "/tests/" in m.name and m.isfile()]
            for member in members:
                member.name = member.name.split("/", 1)[1]
            archive.extractall(target, members=members, filter="data")
    return target / "tests"


def import_common_tests(tests):
    """Import test_modeling_common from `tests` as a package module, with the two folders the sdist lacks stubbed."""
    package = types.ModuleType(PACKAGE)
    package.__path__ = [str(tests)]
    sys.modules[PACKAGE] = package
    stubs = {"exporters.test_export": "ExportTesterMixin", "generation.test_utils": "GenerationTesterMixin"}
    for name, mixin in stubs.items():
        folder = types.ModuleType(f"{PACKAGE}.{name.split('.')[0]}")
        folder.__path__ = []
        module = types.ModuleType(f"{PACKAGE}.{name}")
        setattr(module, mixin, type(mixin, (), {}))
        sys.modules[folder.__name__], sys.modules[module.__name__] = folder, module
    spec = importlib.util.spec_from_file_location(f"{PACKAGE}.test_modeling_common", tests / "test_modeling_common.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


if SDIST is None:
    pytest.skip("TRANSFORMERS_TESTS_SDIST is not set (see the module docstring)", allow_module_level=True)
pytest.importorskip("parameterized")
if f"transformers-{transformers.__version__}" not in Path(SDIST).name:
    pytest.skip(f"{SDIST} is not the sdist of transformers {transformers.__version__}", allow_module_level=True)
common = import_common_tests(sdist_tests_folder(SDIST))


class WorldVLAModelTester:
    """What `ModelTesterMixin` reads: sizes, and a batch of action-model samples (text, a frame, action blocks)."""

    batch_size = 2
    hidden_size = 32
    num_hidden_layers = 2
    num_attention_heads = 4
    is_training = True

    def __init__(self, parent):
        self.parent = parent
        self.layout = WorldVLAConfig.compact_token_layout(text_vocab_size=40, image_codebook_size=16, n_action_bins=8)
        self.vocab_size = self.layout["vocab_size"]
        self.seq_length = len(self.sample(torch.Generator().manual_seed(0)))

    def get_config(self):
        return WorldVLAConfig(
            **self.layout,
            hidden_size=self.hidden_size,
            intermediate_size=2 * self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            image_size=32,
            image_patch_size=16,
            history_frames=1,
            action_chunk_size=2,
            max_position_embeddings=128,
            residual_dropout=0.0,
        )

    def sample(self, generator):
        layout = self.layout

        def randint(low, high, count):
            return torch.randint(low, high, (count,), generator=generator).tolist()

        # A 32-px frame: 2 x 2 codes (written out so that this tester runs against older versions of the model too).
        grid = layout["image_grid_token_offset"] + 1
        codes = [layout["image_token_offset"] + code for code in randint(0, layout["image_codebook_size"], 4)]
        row_end = layout["image_row_end_token_id"]
        frame = [layout["image_start_token_id"], grid, grid, *codes[:2], row_end, *codes[2:], row_end]
        frame.append(layout["image_end_token_id"])
        ids = [layout["bos_token_id"], *randint(1, 40, 5), *frame, layout["separator_token_id"]]
        for _ in range(2):
            bins = [layout["action_token_offset"] + b for b in randint(1, layout["n_action_bins"] + 1, 7)]
            ids += [layout["action_start_token_id"], *bins, layout["action_end_token_id"]]
        return ids + [layout["separator_token_id"]]

    def prepare_config_and_inputs_for_common(self):
        generator = torch.Generator().manual_seed(0)
        input_ids = torch.tensor([self.sample(generator) for _ in range(self.batch_size)])
        return self.get_config(), {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}


class WorldVLACommonTest(common.ModelTesterMixin, unittest.TestCase):
    all_model_classes = (WorldVLAModel, WorldVLAForConditionalGeneration)
    pipeline_model_mapping = {}
    # The mixin decides by these name maps which class is a base model and which gets causal-LM labels; an in-tree
    # model is listed there, so the classes are listed for the duration of the tests.
    auto_names = {
        "MODEL_MAPPING_NAMES": "WorldVLAModel",
        "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES": "WorldVLAForConditionalGeneration",
    }

    @classmethod
    def setUpClass(cls):
        for mapping, name in cls.auto_names.items():
            getattr(modeling_auto, mapping)["worldvla"] = name

    @classmethod
    def tearDownClass(cls):
        for mapping in cls.auto_names:
            getattr(modeling_auto, mapping).pop("worldvla")

    def setUp(self):
        self.model_tester = WorldVLAModelTester(self)

    @unittest.skip("GenerationTesterMixin is not in the sdist (tests/generation/ is not shipped)")
    def test_generation_tester_mixin_inheritance(self):
        pass
