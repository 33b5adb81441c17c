"""WorldVLAPolicy: a WorldVLA checkpoint as a robot policy, one frame in and one action out per control step.

    policy = WorldVLAPolicy.from_pretrained("checkpoints/worldvla-libero-spatial-64")
    policy.reset()                                    # at the start of every episode
    action = policy.select_action(frame, instruction)  # every step: uint8 (H, W, 3) upright frame -> (7,)
    action = policy.select_action(frame, instruction, wrist_frame=wrist)  # a model with `wrist_camera`

The API follows LeRobot's policies (`reset`, `select_action` with an action queue, `predict_action_chunk`).
`select_action` records the frame in the history and, when its queue is empty, queries the model for a chunk of
K actions and queues the first `n_action_steps` of them: K (the default) executes the whole chunk open loop, as
the paper's evaluation does; fewer re-plans sooner (receding horizon). `gripper_hold=N` (off by default, the
paper's protocol) executes a gripper command that reverses the executed one only once N consecutive actions have
given it, so that one stray decoded action does not open a gripper that holds an object. It delays a close as
well, which cost the task-0 specialist its grasp; `gripper_hold_direction="release"` holds only the opening of a
closed gripper and executes a close as decoded, which costs the specialist its re-grasps (both measured:
`results/round9-ten-task-wrist/`).

The history is the last `history_frames` frames observed since `reset()`, with the rule that builds the
training samples (`processing_worldvla.history_indices`): after a reset the first query sees one frame, later
ones the frame of the previous control step too. Each frame is VQ-encoded at most once: its codes stay in the
history for the next query. A model trained with `wrist_camera` takes each step's wrist-camera frame beside the
third-person one (`wrist_frame`, upright like it) and raises without it; a model without one refuses it.

Several environments driven by one model (a batched evaluation): one policy per environment from
`policy.for_another_env()`, then `select_actions(policies, frames, instruction)` each step; the queries due at a
step go through the model as one batch.

Nothing silent reaches the robot: a frame of the wrong shape or type, an instruction that is not text,
statistics the processor does not have, or a chunk that is not K finite actions raise a `ValueError` or
`RuntimeError` that says what is wrong.
"""

import copy
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

try:
    from .processing_worldvla import history_indices, prompt_frames, uses_wrist_camera
except ImportError:
    from processing_worldvla import history_indices, prompt_frames, uses_wrist_camera

# "release": hold only the opening of a closed gripper (a stray open drops the object; a delayed close misses it).
GRIPPER_HOLD_DIRECTIONS = ("both", "release")


def missing_local_checkpoint(name_or_path):
    """Why `name_or_path` cannot be a checkpoint, when it reads as a local folder that does not exist; None
    otherwise. A Hub id (`owner/name`, or a bare legacy name) has at most one slash and no leading '.', '/' or
    '~'. Without this, a mistyped path is reported by the Hub client as a malformed repo id."""
    name = str(name_or_path)
    path = Path(name).expanduser()
    if path.exists():
        return None if path.is_dir() else f"{name} is a file, not a checkpoint folder"
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or name.endswith("/"):
        return f"{name}: no such folder (and not a Hub id of the form owner/name)"
    return None


def load_merged_adapter(adapter_name_or_path, revision=None, **model_kwargs):
    """The base a LoRA adapter records, with the adapter merged into its weights (no LoRA layers left to slow
    every query down)."""
    from peft import PeftConfig, PeftModel
    from transformers import AutoModelForCausalLM

    adapter_config = PeftConfig.from_pretrained(adapter_name_or_path, revision=revision)
    base_name = adapter_config.base_model_name_or_path
    problem = missing_local_checkpoint(base_name)
    if problem:
        raise FileNotFoundError(f"the LoRA adapter {adapter_name_or_path} names its base {base_name!r}: {problem}")
    base = AutoModelForCausalLM.from_pretrained(base_name, revision=adapter_config.revision, trust_remote_code=True, **model_kwargs)
    return PeftModel.from_pretrained(base, adapter_name_or_path, revision=revision).merge_and_unload()


class WorldVLAPolicy:
    """A WorldVLA model and its processor driven one control step at a time.

    Args:
        model (`WorldVLAForConditionalGeneration`): the policy network, in eval mode on its device.
        processor (`WorldVLAProcessor`): its processor (text and image tokenizers, action statistics).
        unnorm_key (`str`, *optional*): the action statistics to un-normalise with; the processor's default.
        n_action_steps (`int`, *optional*): actions of each predicted chunk executed before the next query;
            defaults to the whole chunk (`action_chunk_size`).
        decoding (`str`): "parallel" (the K blocks together, the default) or "sequential" (token by token).
        gripper_hold (`int`): consecutive actions that must reverse the executed gripper command (its sign) before
            the reversal is executed; until then the executed gripper command is repeated. 1 (the default) executes
            every action as decoded.
        gripper_hold_direction (`str`): the reversals `gripper_hold` applies to: "both" (the default), or "release"
            (only the opening of a closed gripper; a close is executed as decoded).
    """

    def __init__(self, model, processor, unnorm_key=None, n_action_steps=None, decoding="parallel", gripper_hold=1,
                 gripper_hold_direction="both"):
        processor.check_compatible(model.config, check_weights=True)
        config = model.config
        self.model = model.eval()
        self.processor = processor
        self.unnorm_key = processor.default_unnorm_key if unnorm_key is None else unnorm_key
        if self.unnorm_key not in processor.action_statistics:
            raise ValueError(
                f"unnorm_key {self.unnorm_key!r} has no action statistics in this processor; it has "
                f"{sorted(processor.action_statistics)}"
            )
        self.chunk_size = int(config.action_chunk_size)
        self.history_frames = int(config.history_frames)
        self.image_size = int(config.image_size)
        self.wrist_camera = uses_wrist_camera(config)
        self.action_dim = int(config.action_dim)
        self.n_action_steps = self.chunk_size if n_action_steps is None else n_action_steps
        if isinstance(self.n_action_steps, bool) or not isinstance(self.n_action_steps, int) or not 1 <= self.n_action_steps <= self.chunk_size:
            raise ValueError(f"n_action_steps must be an integer in [1, {self.chunk_size}] (the chunk size), got {n_action_steps!r}")
        if decoding not in ("parallel", "sequential"):
            raise ValueError(f"decoding must be 'parallel' or 'sequential', got {decoding!r}")
        self.decoding = decoding
        if isinstance(gripper_hold, bool) or not isinstance(gripper_hold, int) or gripper_hold < 1:
            raise ValueError(f"gripper_hold must be an integer >= 1 (1: every action as decoded), got {gripper_hold!r}")
        self.gripper_hold = gripper_hold
        if gripper_hold_direction not in GRIPPER_HOLD_DIRECTIONS:
            raise ValueError(f"gripper_hold_direction must be one of {GRIPPER_HOLD_DIRECTIONS}, got {gripper_hold_direction!r}")
        self.gripper_hold_direction = gripper_hold_direction
        self.reset()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, revision=None, device=None, unnorm_key=None, n_action_steps=None, decoding="parallel", gripper_hold=1, gripper_hold_direction="both", **model_kwargs):
        """Load model and processor of a checkpoint folder or Hub repo (remote code) onto `device`
        (default: CUDA when present). The VQ encoder runs on the same device.

        A LoRA adapter (a folder or repo with `adapter_config.json`, as `train.py --lora-rank` writes) loads on the
        base it records (`base_model_name_or_path` at `revision`) and is merged into it; the processor, with the
        action statistics of the fine-tuning data, is the adapter's."""
        from transformers import AutoModelForCausalLM, AutoProcessor
        from transformers.utils import find_adapter_config_file

        problem = missing_local_checkpoint(pretrained_model_name_or_path)
        if problem:
            raise FileNotFoundError(problem)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if find_adapter_config_file(str(pretrained_model_name_or_path), revision=revision):
            model = load_merged_adapter(pretrained_model_name_or_path, revision, **model_kwargs)
        else:
            model = AutoModelForCausalLM.from_pretrained(pretrained_model_name_or_path, revision=revision, trust_remote_code=True, **model_kwargs)
        processor = AutoProcessor.from_pretrained(pretrained_model_name_or_path, revision=revision, trust_remote_code=True)
        processor.vq_model.to(device)
        return cls(model.to(device), processor, unnorm_key=unnorm_key, n_action_steps=n_action_steps, decoding=decoding, gripper_hold=gripper_hold,
                   gripper_hold_direction=gripper_hold_direction)

    def reset(self):
        """Forget the history and the queued actions: call at the start of every episode."""
        self._steps = 0
        self._history = deque(maxlen=self.history_frames)  # ObservedStep
        self._action_queue = deque()
        self._instruction = None
        self._executed_gripper = None  # the last executed gripper command
        self._gripper_reversals = 0  # consecutive actions reversing it

    # ------------------------------------------------------------------------------------------------------------

    def _check_frame(self, frame, name="frame"):
        if isinstance(frame, torch.Tensor):
            frame = frame.cpu().numpy()
        frame = np.asarray(frame)
        expected = (self.image_size, self.image_size, 3)
        if frame.shape != expected:
            raise ValueError(
                f"{name} has shape {frame.shape}; this model takes uint8 {expected} upright RGB frames "
                f"(render the camera at {self.image_size} px)"
            )
        if frame.dtype != np.uint8:
            raise ValueError(f"{name} has dtype {frame.dtype}; the model takes uint8 pixels in [0, 255]")
        return np.ascontiguousarray(frame)

    def _check_wrist_frame(self, wrist_frame):
        if self.wrist_camera and wrist_frame is None:
            raise ValueError("this model was trained with the wrist camera (wrist_camera=True): pass wrist_frame too")
        if not self.wrist_camera and wrist_frame is not None:
            raise ValueError("this model takes the third-person camera only (wrist_camera=False): wrist_frame would be ignored")
        return None if wrist_frame is None else self._check_frame(wrist_frame, "wrist_frame")

    def _check_instruction(self, instruction):
        if not isinstance(instruction, str) or not instruction.strip():
            raise ValueError(f"instruction must be a non-empty string, got {instruction!r}")
        if instruction != self._instruction:
            # Actions queued for another instruction must not be executed for this one.
            self._action_queue.clear()
            self._instruction = instruction

    def observe(self, frame, wrist_frame=None):
        """Record one control step's frames in the history (done by `select_action` and `predict_action_chunk`)."""
        frames = (self._check_frame(frame),)
        wrist_frame = self._check_wrist_frame(wrist_frame)
        if wrist_frame is not None:
            frames += (wrist_frame,)
        self._history.append(ObservedStep(self._steps, frames, [None] * len(frames)))
        self._steps += 1

    def history_codes(self):
        """VQ codes (h, w) of the frames the next query sees, in prompt order (`prompt_frames`), each frame
        encoded once."""
        return _history_codes([self])[0]

    def _wanted_history(self):
        if not self._history:
            raise RuntimeError("no frame observed since reset(): pass the current frame first")
        by_step = {entry.step: entry for entry in self._history}
        return [by_step[step] for step in history_indices(self._steps - 1, self.history_frames)]

    def for_another_env(self):
        """A policy with this one's model, processor and settings and a history and queue of its own: one per
        environment of a batch stepped by `select_actions`."""
        policy = copy.copy(self)
        policy.reset()
        return policy

    def _query(self, instruction):
        return _query_chunks([self], instruction)[0]

    def predict_action_chunk(self, frame, instruction, wrist_frame=None):
        """Observe `frame` (and `wrist_frame`) and return the next chunk of actions (K, action_dim),
        un-normalised; the queue is left as it is."""
        self._check_instruction(instruction)
        self.observe(frame, wrist_frame)
        return self._query(instruction)

    def select_action(self, frame, instruction, wrist_frame=None):
        """Observe `frame` (and `wrist_frame`) and return the action (action_dim,) to execute now."""
        self._check_instruction(instruction)
        self.observe(frame, wrist_frame)
        if not self._action_queue:
            self._action_queue.extend(self._query(instruction)[: self.n_action_steps])
        return self._next_action()

    def _next_action(self):
        action = self._action_queue.popleft()
        gripper = action[-1]
        reverses = self._executed_gripper is not None and (gripper > 0) != (self._executed_gripper > 0)
        if reverses and (self.gripper_hold_direction == "both" or self._executed_gripper > 0):
            self._gripper_reversals += 1
            if self._gripper_reversals < self.gripper_hold:
                action = action.copy()
                action[-1] = self._executed_gripper
                return action
        self._gripper_reversals = 0
        self._executed_gripper = gripper
        return action


@dataclass
class ObservedStep:
    """One control step of a policy's history: its frames (the third-person camera's, then the wrist camera's for
    a `wrist_camera` model) and their VQ codes, None until encoded."""

    step: int
    frames: tuple
    codes: list


def _history_codes(policies):
    """The prompt codes of each policy, the frames not yet encoded encoded together in one VQ call."""
    wanted = [policy._wanted_history() for policy in policies]
    missing = [(entry, camera) for entries in wanted for entry in entries for camera, codes in enumerate(entry.codes) if codes is None]
    if missing:
        encoded = policies[0].processor.encode_images([entry.frames[camera] for entry, camera in missing])
        for (entry, camera), codes in zip(missing, encoded):
            entry.codes[camera] = codes
    return [
        prompt_frames([entry.codes[0] for entry in entries], [entry.codes[1] for entry in entries] if policy.wrist_camera else None)
        for policy, entries in zip(policies, wanted)
    ]


@torch.no_grad()
def _query_chunks(policies, instruction):
    """One chunk (K, action_dim) per policy, from one forward over their prompts (right-padded)."""
    first = policies[0]
    if any(policy.model is not first.model or policy.processor is not first.processor for policy in policies):
        raise ValueError("policies queried together must share one model and processor (use for_another_env)")
    prompts = [first.processor.build_action_sample(instruction, codes)["input_ids"] for codes in _history_codes(policies)]
    longest = max(len(prompt) for prompt in prompts)
    input_ids = torch.full((len(prompts), longest), first.model.config.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for row, prompt in enumerate(prompts):
        input_ids[row, : len(prompt)] = torch.tensor(prompt)
        attention_mask[row, : len(prompt)] = 1
    device = first.model.device
    bins = first.model.generate_action_tokens(input_ids.to(device), attention_mask.to(device), decoding=first.decoding)
    chunks = []
    for policy, row_bins in zip(policies, bins.cpu().numpy()):
        actions = policy.processor.decode_actions(row_bins[None], unnorm_key=policy.unnorm_key)
        actions = np.asarray(actions, dtype=np.float64).reshape(policy.chunk_size, policy.action_dim)
        if not np.isfinite(actions).all():
            raise RuntimeError(f"the model produced non-finite actions {actions.tolist()}: not sent to the robot")
        chunks.append(actions)
    return chunks


def select_actions(policies, frames, instruction, wrist_frames=None):
    """`select_action` for several environments at once: policy i observes frames[i] (and wrist_frames[i]) and
    returns its action;
    the policies whose queue is empty are queried together, in one batched forward of their shared model (on a
    GPU, the cost of one query for all of them). The policies come from `for_another_env` of one policy."""
    if len(policies) != len(frames):
        raise ValueError(f"{len(policies)} policies but {len(frames)} frames")
    if wrist_frames is not None and len(wrist_frames) != len(frames):
        raise ValueError(f"{len(frames)} frames but {len(wrist_frames)} wrist frames")
    for index, (policy, frame) in enumerate(zip(policies, frames)):
        policy._check_instruction(instruction)
        policy.observe(frame, None if wrist_frames is None else wrist_frames[index])
    querying = [policy for policy in policies if not policy._action_queue]
    if querying:
        for policy, chunk in zip(querying, _query_chunks(querying, instruction)):
            policy._action_queue.extend(chunk[: policy.n_action_steps])
    return [policy._next_action() for policy in policies]
