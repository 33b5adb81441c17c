"""Demonstrations with recoveries: the expert's actions perturbed when executed, its own actions kept as labels.

A policy trained on clean demonstrations only ever sees the expert's path; its first mistake (the gripper
closed a few centimetres above the bowl, the hand off to one side) leads it to states no demonstration
shows, and it stalls there. DART (Laskey et al., 2017, "DART: Noise Injection for Robust Imitation
Learning") collects demonstrations with noise injected into the executed actions, so that the states
visited drift off the expert's path, while the label of every step stays the action the expert chose from
that state: the data then shows how to come back.

`PerturbedExpert` wraps `ScriptedExpert` (a reactive state machine that reads the simulator, so it
corrects any drift). At every step a perturbation starts with probability `rate` and lasts a few steps:
a push of the hand in a random direction, added to the expert's move; or, while the hand is still on its
way to the object with the gripper open, a premature close. Nothing perturbs the gripper once the object
is held, which would drop it. The recorded demo keeps both: `actions` (what was executed, so that
replaying it reproduces the states) and `expert_actions` (the labels), see `libero_sim/demos.py`.
"""

import numpy as np

# A push adds a vector of this norm (OSC_POSE units: 1 is about 1.2 cm of hand motion per step) to the
# expert's position command, for a number of steps drawn from PERTURBATION_STEPS (inclusive bounds).
PUSH_MAGNITUDE = 0.6
PERTURBATION_STEPS = (3, 8)
# While the gripper is open on the way to the object, this fraction of perturbations closes it instead.
PREMATURE_CLOSE_FRACTION = 0.3
GRIPPER_OPEN_PHASES = ("approach", "descend")


class PerturbedExpert:
    """The expert's policy interface (`reset`, `select_action`) executing perturbed actions.

    `labels` holds, after an episode, the expert's own action at every step `select_action` answered.
    `rng` (a numpy Generator) makes the perturbations repeatable."""

    def __init__(self, expert, rate, rng):
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"the perturbation rate is a probability per step, got {rate}")
        self.expert = expert
        self.rate = rate
        self.rng = rng
        self.labels = []

    def reset(self, instruction=None):
        self.expert.reset(instruction)
        self.labels = []
        self.push = np.zeros(3)
        self.close_gripper = False
        self.steps_left = 0

    def select_action(self, observation, instruction=None):
        label = np.asarray(self.expert.select_action(observation, instruction), dtype=np.float64)
        self.labels.append(label)
        gripper_open_phase = self.expert.phase in GRIPPER_OPEN_PHASES
        if self.steps_left == 0 and self.rng.random() < self.rate:
            self.steps_left = int(self.rng.integers(PERTURBATION_STEPS[0], PERTURBATION_STEPS[1] + 1))
            self.close_gripper = gripper_open_phase and self.rng.random() < PREMATURE_CLOSE_FRACTION
            direction = self.rng.normal(size=3)
            self.push = np.zeros(3) if self.close_gripper else PUSH_MAGNITUDE * direction / np.linalg.norm(direction)
        if self.steps_left == 0:
            return label
        self.steps_left -= 1
        executed = label.copy()
        executed[:3] = np.clip(label[:3] + self.push, -1.0, 1.0)
        # A close that began on the way stops as soon as the expert itself closes (the grasp has come).
        if self.close_gripper and gripper_open_phase:
            executed[6] = 1.0
        return executed
