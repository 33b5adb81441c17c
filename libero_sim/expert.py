"""Scripted LIBERO expert that reads privileged simulator state.

It parses the task's goal predicates (`env.env.parsed_problem["goal_state"]`, e.g.
`(On akita_black_bowl_1 plate_1)`, `(In ketchup_1 basket_1_contain_region)`), reads object and
target poses from MuJoCo, and moves the end effector with proportional OSC_POSE deltas:
above the object, down, close, lift, above the target, down, open; one goal predicate after the
other. Grasps are chosen from the scene's collision geometry (ray casts): across the narrow side of
small objects, clear of taller neighbours for the palm, across the rim of wide open ones (bowls),
and across the handle of wide closed ones (moka pots).
Cabinet drawers are opened by grasping the handle with the fingers turned to point into the
cabinet and pulling along the slide joint (also, unasked, before putting something into a drawer),
and closed by pushing the handle with closed fingers; a stove is switched on by gripping its knob
from above and turning the wrist. Other goals (`Close` of the microwave door, `Turnoff`, ...) raise
NotImplementedError in `reset`.

It is a policy like the learned one (`reset(instruction)`, `act(observation)` returning a chunk
of one action) so that `eval_libero.py` drives both through the same loop; it also writes the
demonstrations of `scripts/collect_demos.py`.
"""

import mujoco
import numpy as np

# OSC_POSE maps an action of 1 to a 5 cm position (0.5 rad rotation) offset of the controller goal.
POSITION_GAIN = 12.0
INTEGRAL_GAIN = 1.0
INTEGRAL_ZONE = 0.03
ROTATION_GAIN = 2.0
GRIPPER_OPEN = -1.0
GRIPPER_CLOSED = 1.0
# The Panda gripper opens to about 8 cm: wider objects (bowls) are grasped at their rim.
MAX_GRASP_WIDTH = 0.065
RIM_INSET = 0.015
RIM_GRASP_DEPTH = 0.03
# Parts of a closed wide object further than this from its body origin form its handle.
HANDLE_RADIUS = 0.05
# Half the open finger span: where the fingers come down around the grasp point.
FINGER_REACH = 0.045
# Footprint of the Panda hand's palm around the grip site, and its height above it.
PALM_HALF_LENGTH = 0.09
PALM_HALF_WIDTH = 0.03
PALM_ABOVE_GRIP = 0.03
# Heights in metres relative to the object or target tops.
APPROACH_CLEARANCE = 0.08
CARRY_CLEARANCE = 0.06
LIFT_HEIGHT = 0.1
CLOSE_RISE = 0.0
RELEASE_GAP = 0.015
POSITION_TOLERANCE = 0.01
CLOSE_STEPS = 12
OPEN_STEPS = 12
PHASE_TIMEOUT_STEPS = 60
LIFT_CHECK_HEIGHT = 0.02
LIFT_CHECK_STEPS = 8
MAX_GRASP_ATTEMPTS = 3
DESCENT_STALL_STEPS = 5
# After a place, the hand keeps its height while further than this (xy) from the spot above the
# next grasp, so that the fingers do not sweep through a basket wall on a diagonal way down.
DESCEND_WITHIN = 0.04
# Objects that LIBERO's initial states leave intersecting are thrown up and may land next to the
# object to grasp: the grasp is chosen anew once nothing moves faster than this (m/s).
REST_SPEED = 0.05
# Drawers: the hand waits this far in front of the handle, and leads it by this much when it
# pulls or pushes; LIBERO calls a cabinet drawer open below -0.14 and closed above 0 (metres).
DRAWER_STANDOFF = 0.12
DRAWER_APPROACH_HEIGHT = 0.1
DRAWER_PUSH_TILT = 0.6
DRAWER_LEAD = 0.05
DRAWER_OPEN_POSITION = -0.15
DRAWER_CLOSED_POSITION = 0.002
# Stove knob: its ridge stands at least this high above the disc; the fingers grip it this far
# below its top and turn it by this angle (LIBERO's stove is on from 0.5 rad).
KNOB_RIDGE_HEIGHT = 0.01
KNOB_GRASP_DEPTH = 0.015
KNOB_TURN = 1.2
KNOB_ON_POSITION = 0.8
# MuJoCo geom groups searched by ray casts: robosuite puts collision geoms in group 0.
COLLISION_GROUPS = np.array([1, 0, 0, 0, 0, 0], dtype=np.uint8)
UNIT_CORNERS = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)])


def quat_wxyz_to_matrix(quat):
    matrix = np.zeros(9)
    mujoco.mju_quat2Mat(matrix, np.asarray(quat, dtype=np.float64))
    return matrix.reshape(3, 3)


def quat_xyzw_to_matrix(quat):
    x, y, z, w = quat
    return quat_wxyz_to_matrix([w, x, y, z])


def yaw_matrix(yaw):
    cos, sin = np.cos(yaw), np.sin(yaw)
    return np.array([[cos, -sin, 0.0], [sin, cos, 0.0], [0.0, 0.0, 1.0]])


def closing_yaw(direction):
    """Gripper yaw (about world z, in (-pi/2, pi/2]) that makes the fingers, which close along
    the world y axis at yaw 0, close along the horizontal `direction`."""
    yaw = np.arctan2(-direction[0], direction[1])
    return (yaw + np.pi / 2) % np.pi - np.pi / 2


def turn_about(axis, angle):
    """Rotation matrix of `angle` about a unit axis (Rodrigues)."""
    x, y, z = axis
    skew = np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])
    return np.eye(3) + np.sin(angle) * skew + (1 - np.cos(angle)) * skew @ skew


def rotation_error(target_matrix, current_matrix):
    """Axis-angle (world frame) of the rotation that takes the current orientation to the target."""
    error = target_matrix @ current_matrix.T
    quat = np.zeros(4)
    mujoco.mju_mat2Quat(quat, error.reshape(-1))
    axis_angle = np.zeros(3)
    mujoco.mju_quat2Vel(axis_angle, quat, 1.0)
    return axis_angle


class SceneGeometry:
    """World-frame poses and collision boxes of the objects of one LIBERO scene."""

    def __init__(self, env):
        self.env = env.env if hasattr(env, "env") else env
        self.model = self.env.sim.model._model
        self.data = self.env.sim.data._data
        root_of_geom = self.model.body_rootid[self.model.geom_bodyid]
        collides = (self.model.geom_contype != 0) | (self.model.geom_conaffinity != 0)
        self.collision_geoms_of_root = {
            root: np.flatnonzero(collides & (root_of_geom == root)) for root in np.unique(root_of_geom)
        }
        # The arm, its mount and the gripper hang from one root body below the world.
        robot_base = self.model.body(self.env.robots[0].robot_model.root_body).id
        self.robot_roots = {int(self.model.body_rootid[robot_base])}

    def body_id(self, name):
        return self.env.obj_body_id[name]

    def position(self, name):
        """Body position of an object or fixture, or the position of a region site."""
        if name in self.env.obj_body_id:
            return self.data.xpos[self.body_id(name)].copy()
        return self.data.site(name).xpos.copy()

    def body_rotation(self, name):
        return self.data.xmat[self.body_id(name)].reshape(3, 3).copy()

    def geom_boxes(self, geoms):
        """World axis-aligned (low, high) corners of each geom's bounding box, shape (n, 3)."""
        rotation = self.data.geom_xmat[geoms].reshape(-1, 3, 3)
        centre = self.data.geom_xpos[geoms] + np.einsum("nij,nj->ni", rotation, self.model.geom_aabb[geoms, :3])
        half = np.einsum("nij,nj->ni", np.abs(rotation), self.model.geom_aabb[geoms, 3:])
        return centre - half, centre + half

    def bounds(self, name):
        """(low, high) corners of the world box around the collision geoms of an object."""
        low, high = self.geom_boxes(self.collision_geoms_of_root[self.body_id(name)])
        return low.min(axis=0), high.max(axis=0)

    def local_bounds(self, name):
        """(low, high) corners of the object's collision geoms in its own body frame."""
        geoms = self.collision_geoms_of_root[self.body_id(name)]
        body_rotation = self.body_rotation(name)
        corners = []
        for geom in geoms:
            centre, half = self.model.geom_aabb[geom, :3], self.model.geom_aabb[geom, 3:]
            world = self.data.geom_xpos[geom] + (centre + UNIT_CORNERS * half) @ self.data.geom_xmat[geom].reshape(3, 3).T
            corners.append((world - self.position(name)) @ body_rotation)
        corners = np.concatenate(corners)
        return corners.min(axis=0), corners.max(axis=0)

    def surface_height(self, xy, start_z, ignore):
        """Height of the first collision surface straight below (x, y, start_z), looking through
        the robot and the object `ignore`; -inf where nothing is hit."""
        start = np.array([xy[0], xy[1], start_z], dtype=np.float64)
        down = np.array([0.0, 0.0, -1.0])
        ignored_roots = self.robot_roots | {self.body_id(ignore)}
        geom_id = np.zeros(1, dtype=np.int32)
        for _ in range(20):  # each pass skips one ignored surface
            distance = mujoco.mj_ray(self.model, self.data, start, down, COLLISION_GROUPS, 1, -1, geom_id)
            if geom_id[0] < 0:
                return -np.inf
            hit_z = start[2] - distance
            if self.model.body_rootid[self.model.geom_bodyid[geom_id[0]]] not in ignored_roots:
                return hit_z
            start[2] = hit_z - 1e-4
        return -np.inf

    def at_rest(self):
        """Whether every free object moves slower than REST_SPEED."""
        free = np.flatnonzero(self.model.jnt_type == mujoco.mjtJoint.mjJNT_FREE)
        speeds = [np.linalg.norm(self.data.qvel[self.model.jnt_dofadr[j] : self.model.jnt_dofadr[j] + 3]) for j in free]
        return max(speeds, default=0.0) < REST_SPEED

    def site_bounds(self, site_name):
        """(low, high) corners of a region site's box."""
        site = self.data.site(site_name)
        half_size = self.model.site_size[site.id]
        corners = site.xpos + (UNIT_CORNERS * half_size) @ site.xmat.reshape(3, 3).T
        return corners.min(axis=0), corners.max(axis=0)

    def site_parent(self, site_name):
        return self.env.object_sites_dict[site_name].parent_name


def goal_predicates(env):
    """The task's goal as a list like [("on", "akita_black_bowl_1", "plate_1")], lower case."""
    inner = env.env if hasattr(env, "env") else env
    return [tuple(str(term).lower() for term in predicate) for predicate in inner.parsed_problem["goal_state"]]


class ScriptedExpert:
    """Pick-and-place state machine over the goal predicates, one action per call.

    `lift_height`: how far above its grasp point an object is lifted before it is carried, and the lowest
    carrying height. At the default, the lifted hand is about where it hovered before the descent, so the two
    moments differ in the frames by where the object is, not by the arm's pose; 0.2 keeps them apart in the
    pose too (a policy trained on such demos still closed at the hover: results/round7-lift).

    `close_rise`: how far (m) the hand rises at each of the steps in which the fingers close. At the default of 0 the
    hand holds still for those steps, and two frames of a still hand cannot show how long it has waited: a policy
    trained on such demos closed in time, then never lifted (results/task0-specialist). A rising hand makes the wait
    visible in the frames and in the actions (at 0.003 such a policy lifted, but closed early: results/task0-close-rise).
    """

    def __init__(self, env, lift_height=LIFT_HEIGHT, close_rise=CLOSE_RISE):
        self.env = env
        self.lift_height = lift_height
        self.close_rise = close_rise

    # Policy interface -----------------------------------------------------------------------
    def reset(self, instruction=None):
        # robosuite rebuilds the simulation on every reset: read the model afresh.
        self.inner = self.env.env
        self.geometry = SceneGeometry(self.env)
        predicates = goal_predicates(self.env)
        unsupported = [p for p in predicates if not self.can_solve(p)]
        if unsupported:
            raise NotImplementedError(f"The scripted expert cannot solve {unsupported} yet.")
        self.subgoals = self.plan_subgoals(predicates)
        self.place_goals = [p for p in predicates if p[0] in ("on", "in")]
        self.phase = None
        self.home_rotation = None
        self.tilt = np.eye(3)
        self.hand_in_container = False

    def can_solve(self, predicate):
        kind, target = predicate[0], predicate[-1]
        if kind in ("on", "in"):
            return True
        if kind in ("open", "close"):
            return self.drawer_joint(target) is not None
        if kind == "turnon":
            return hasattr(self.inner.get_object(target), "turn_on") if target in self.inner.obj_body_id else False
        return False

    def plan_subgoals(self, predicates):
        """Drawers are opened first (also, unasked, a drawer that something must go into), then
        objects are placed, then drawers closed and stoves switched on: closing shuts in what was
        placed, and a knob is turned last so that the hand does not knock it back (unless the
        stove itself is a place target)."""
        opens = [p for p in predicates if p[0] == "open"]
        for p in predicates:
            if p[0] == "in" and self.drawer_joint(p[2]) is not None and ("open", p[2]) not in opens:
                opens.append(("open", p[2]))
        places = [p for p in predicates if p[0] in ("on", "in")]
        # A stove that something goes onto is switched on first: a pot on it blocks the knob.
        targets = {self.inner.object_sites_dict[p[2]].parent_name for p in places if p[2] in self.inner.object_sites_dict}
        first = [p for p in predicates if p[0] == "turnon" and p[1] in targets]
        last = [p for p in predicates if p[0] in ("close", "turnon") and p not in first]
        return opens + first + places + last

    def drawer_joint(self, name):
        """Id of the slide joint of a cabinet's drawer region, or None for anything else."""
        site = self.inner.object_sites_dict.get(name)
        for joint in getattr(site, "joints", None) or []:
            joint_id = self.geometry.model.joint(joint).id
            if self.geometry.model.jnt_type[joint_id] == mujoco.mjtJoint.mjJNT_SLIDE:
                return joint_id
        return None

    def satisfied(self, predicate):
        """The environment's own judgement of one goal predicate."""
        return bool(self.inner._eval_predicate(list(predicate)))

    def select_action(self, observation, instruction=None):
        """The next 7-D action from LIBERO's observation dict: a proportional move of the current phase."""
        return self.next_action(observation)

    # Motion primitives ----------------------------------------------------------------------
    def next_action(self, state):
        eef = np.asarray(state["robot0_eef_pos"], dtype=np.float64)
        rotation = quat_xyzw_to_matrix(state["robot0_eef_quat"])
        if self.home_rotation is None:
            # The initial top-down orientation; grasps only add a yaw about the world z axis.
            self.home_rotation = rotation
            self.yaw = 0.0
        if self.phase is None:
            # Articulations already where the goal wants them (a drawer left open) need no move.
            while self.subgoals and self.subgoals[0][0] not in ("on", "in") and self.satisfied(self.subgoals[0]):
                self.subgoals.pop(0)
            if not self.subgoals:
                return self.move(eef, rotation, eef, GRIPPER_OPEN)
            self.tilt = np.eye(3)
            kind = self.subgoals[0][0]
            if kind in ("open", "close"):
                self.start_drawer(*self.subgoals[0])
            elif kind == "turnon":
                self.start_knob(self.subgoals[0][1])
            else:
                _, self.object_name, self.target_name = self.subgoals[0]
                self.attempts = 0
                self.failed_rim_angles = []
                self.rim_angle = None
                self.enter("approach")
        self.phase_steps += 1
        return getattr(self, "phase_" + self.phase)(eef, rotation)

    def enter(self, phase):
        self.phase = phase
        self.phase_steps = 0
        self.heights = []
        self.error_integral = np.zeros(3)

    def move(self, eef, rotation, target, gripper, speed=1.0):
        """Proportional-integral step towards `target`; the integral removes the steady-state
        offset that the OSC controller leaves under a load."""
        error = target - eef
        if np.linalg.norm(error) < INTEGRAL_ZONE:  # integrating large errors would wind up
            self.error_integral = self.error_integral + error
        action = np.zeros(7)
        integral_term = np.clip(INTEGRAL_GAIN * self.error_integral, -0.5, 0.5)
        action[:3] = np.clip(error * POSITION_GAIN + integral_term, -speed, speed)
        action[3:6] = np.clip(rotation_error(self.target_rotation(), rotation) * ROTATION_GAIN, -1, 1)
        action[6] = gripper
        return action

    def timed_out(self, limit=PHASE_TIMEOUT_STEPS):
        return self.phase_steps > limit

    def target_rotation(self):
        """The top-down home orientation turned by `yaw` about world z, then by `tilt` (a world
        rotation: fingers pointing sideways at drawer handles)."""
        return self.tilt @ yaw_matrix(self.yaw) @ self.home_rotation

    def yaw_error(self, rotation):
        return np.linalg.norm(rotation_error(self.target_rotation(), rotation))

    # Grasp and place geometry ---------------------------------------------------------------
    def choose_grasp(self, eef):
        """Grip-site point and gripper yaw for the object: across the narrow side of a small
        object; across the rim wall of a wide one (bowls), where the fingers have most room."""
        name = self.object_name
        low, high = self.geometry.bounds(name)
        centre = self.geometry.position(name)
        local_low, local_high = self.geometry.local_bounds(name)
        extent = local_high - local_low
        body_rotation = self.geometry.body_rotation(name)
        height = high[2] - low[2]
        middle = body_rotation @ ((local_low + local_high) / 2) + centre
        if min(extent[0], extent[1]) <= MAX_GRASP_WIDTH:
            narrow_x = extent[0] < extent[1]
            narrow_axis = body_rotation[:, 0] if narrow_x else body_rotation[:, 1]
            long_axis = body_rotation[:, 1] if narrow_x else body_rotation[:, 0]
            long_half = (extent[1] if narrow_x else extent[0]) / 2
            grasp_z = max(high[2] - 0.03, low[2] + min(0.02, height / 2))
            # Slide along the long side, away from taller neighbours that the palm would hit.
            best = None
            for shift in np.clip([0.0, -0.015, 0.015, -0.03, 0.03], -(long_half - 0.01), long_half - 0.01):
                point = np.array([*(middle[:2] + shift * long_axis[:2]), grasp_z])
                clearance = self.palm_clearance(point, narrow_axis[:2], long_axis[:2])
                score = min(clearance, 0.01) - 0.1 * abs(shift)
                if best is None or score > best[0]:
                    best = (score, point)
            return best[1], closing_yaw(narrow_axis[:2])
        handle = self.handle_grasp(name, centre, high[2])
        if handle is not None:
            return handle
        radius = min(extent[0], extent[1]) / 2 - RIM_INSET
        grasp_z = high[2] - RIM_GRASP_DEPTH
        best = None
        for angle in np.arange(8) * np.pi / 4:
            if angle in self.failed_rim_angles:
                continue
            radial = np.array([np.cos(angle), np.sin(angle)])
            tangent = np.array([-radial[1], radial[0]])
            point = np.array([*(middle[:2] + radius * radial), grasp_z])
            # Free height under both fingers, sampled across the finger pads: the fingertips
            # reach about 1 cm below the grip site.
            samples = [
                point[:2] + side * FINGER_REACH * radial + across * tangent
                for side in (-1, 1)
                for across in (-0.012, 0.0, 0.012)
            ]
            obstacle_top = max(self.geometry.surface_height(xy, high[2] + 0.05, name) for xy in samples)
            clearance = grasp_z - 0.01 - obstacle_top
            # Prefer little wrist rotation when the clearances are alike.
            yaw = closing_yaw(radial)
            score = min(clearance, 0.02) - 0.005 * abs(yaw)
            if best is None or score > best[0]:
                best = (score, point, yaw, angle)
        self.rim_angle = best[3]
        return best[1], best[2]

    def handle_grasp(self, name, centre, top):
        """Grip point and yaw across the handle of a wide object with a closed top (a moka pot),
        or None for open ones (bowls): a closed top offers no rim to grasp. The handle is made of
        the geoms that stand out beyond HANDLE_RADIUS on the side of the furthest one."""
        low, high = self.geometry.geom_boxes(self.geometry.collision_geoms_of_root[self.geometry.body_id(name)])
        middles = (low + high) / 2
        over_centre = np.all((low[:, :2] <= centre[:2]) & (high[:, :2] >= centre[:2]), axis=1)
        if not over_centre.any() or high[over_centre, 2].max() < top - 0.02:
            return None
        offsets = middles[:, :2] - centre[:2]
        furthest = offsets[np.argmax(np.linalg.norm(offsets, axis=1))]
        radial = furthest / np.linalg.norm(furthest)
        parts = (offsets @ radial) > HANDLE_RADIUS
        if not parts.any():
            return None
        point = middles[parts].mean(axis=0)
        # The fingers close across the handle's plane, which holds the radial direction.
        return point, closing_yaw(np.array([-radial[1], radial[0]]))

    def palm_clearance(self, point, closing_axis, across_axis):
        """Height between the bottom of the palm, were the grip site at `point`, and the highest
        obstacle under the palm's footprint (the object itself excluded)."""
        samples = [
            point[:2] + along * closing_axis + across * across_axis
            for along in np.linspace(-PALM_HALF_LENGTH, PALM_HALF_LENGTH, 7)
            for across in (-PALM_HALF_WIDTH, 0.0, PALM_HALF_WIDTH)
        ]
        top = max(self.geometry.surface_height(xy, point[2] + 0.3, self.object_name) for xy in samples)
        return point[2] + PALM_ABOVE_GRIP - top

    def target_point(self):
        """Centre (x, y) of the place target and the height of its top surface."""
        name = self.target_name
        if name in self.inner.obj_body_id:
            _, high = self.geometry.bounds(name)
            centre = self.geometry.position(name)
            return np.array([centre[0], centre[1], high[2]])
        low, high = self.geometry.site_bounds(name)
        parent = self.geometry.site_parent(name)
        centre = self.geometry.position(name)
        # Several objects for one region (both moka pots on the stove): each goes a quarter of the
        # region off its centre, away from the others, along the fingers' closing axis: the
        # side a handle does not stick out of.
        others = [self.geometry.position(p[1]) for p in self.place_goals if p[2] == name and p[1] != self.object_name]
        if others:
            side = yaw_matrix(self.yaw) @ [0.0, 1.0, 0.0] * np.min(high[:2] - low[:2]) / 4
            spots = [centre + side, centre - side]
            centre = max(spots, key=lambda spot: min(np.linalg.norm((spot - other)[:2]) for other in others))
        top = low[2]
        if self.drawer_joint(name) is not None:
            # Inside an open drawer: its floor, not the cabinet's top.
            top = self.geometry.surface_height(centre[:2], centre[2], self.object_name)
        elif parent in self.inner.obj_body_id:
            top = max(top, self.geometry.bounds(parent)[1][2])
        return np.array([centre[0], centre[1], top])

    def placement_offset(self, eef):
        """Grip site minus object centre in xy: keeps the object, not the hand, over the target."""
        return eef[:2] - self.geometry.position(self.object_name)[:2]

    # Phases ---------------------------------------------------------------------------------
    def phase_approach(self, eef, rotation):
        if self.phase_steps == 1 or not self.grasp_at_rest:
            self.grasp_at_rest = self.geometry.at_rest()
            self.grasp, self.yaw = self.choose_grasp(eef)
        target = self.grasp + [0, 0, APPROACH_CLEARANCE]
        if self.hand_in_container and np.linalg.norm((target - eef)[:2]) > DESCEND_WITHIN:
            target[2] = max(target[2], eef[2])
        aligned = np.linalg.norm((target - eef)[:2]) < POSITION_TOLERANCE and self.yaw_error(rotation) < 0.05
        if self.hand_in_container:  # and down to the approach height before the slow descent
            aligned = aligned and abs(target[2] - eef[2]) < 0.02
        if (aligned and self.grasp_at_rest) or self.timed_out():
            self.enter("descend")
        return self.move(eef, rotation, target, GRIPPER_OPEN)

    def phase_descend(self, eef, rotation):
        self.heights.append(eef[2])
        # Blocked (a finger resting on something): close where the hand is rather than push.
        stalled = len(self.heights) > DESCENT_STALL_STEPS and self.heights[-DESCENT_STALL_STEPS - 1] - eef[2] < 0.002
        if np.linalg.norm(self.grasp - eef) < 0.006 or stalled or self.timed_out(40):
            self.enter("close")
        return self.move(eef, rotation, self.grasp, GRIPPER_OPEN, speed=0.5)

    def phase_close(self, eef, rotation):
        if self.phase_steps >= CLOSE_STEPS:
            self.height_before_lift = self.geometry.position(self.object_name)[2]
            self.enter("lift")
        return self.move(eef, rotation, self.grasp + [0, 0, self.close_rise * self.phase_steps], GRIPPER_CLOSED)

    def phase_lift(self, eef, rotation):
        target = np.array([self.grasp[0], self.grasp[1], self.grasp[2] + self.lift_height])
        if self.phase_steps >= LIFT_CHECK_STEPS:
            lifted = self.geometry.position(self.object_name)[2] - self.height_before_lift
            if lifted < LIFT_CHECK_HEIGHT:
                self.attempts += 1
                if self.rim_angle is not None:
                    self.failed_rim_angles.append(self.rim_angle)
                self.enter("regrasp" if self.attempts < MAX_GRASP_ATTEMPTS else "give_up")
            else:
                # How far the object hangs below the grip site, to set it down gently.
                self.hang = eef[2] - self.geometry.bounds(self.object_name)[0][2]
                self.enter("carry")
        return self.move(eef, rotation, target, GRIPPER_CLOSED)

    def phase_regrasp(self, eef, rotation):
        if self.phase_steps > 8:
            self.enter("approach")
        return self.move(eef, rotation, self.grasp + [0, 0, APPROACH_CLEARANCE], GRIPPER_OPEN)

    def phase_give_up(self, eef, rotation):
        return self.move(eef, rotation, eef, GRIPPER_OPEN)

    def phase_carry(self, eef, rotation):
        goal = self.target_point()
        # Travel no lower than the lift height: the object may start inside a drawer or on a shelf.
        travel_z = max(goal[2] + self.hang + CARRY_CLEARANCE, self.grasp[2] + self.lift_height)
        target = np.array([*(goal[:2] + self.placement_offset(eef)), travel_z])
        # Rise first, then travel, so that the object does not sweep other objects away.
        if eef[2] < target[2] - 0.03:
            target[:2] = eef[:2]
        arrived = np.linalg.norm((target - eef)[:2]) < POSITION_TOLERANCE and abs(target[2] - eef[2]) < 0.02
        if arrived or self.timed_out(90):
            self.enter("lower")
        return self.move(eef, rotation, target, GRIPPER_CLOSED)

    def phase_lower(self, eef, rotation):
        goal = self.target_point()
        target = np.array([*(goal[:2] + self.placement_offset(eef)), goal[2] + self.hang + RELEASE_GAP])
        if np.linalg.norm(target - eef) < 0.008 or self.timed_out(40):
            self.enter("release")
        return self.move(eef, rotation, target, GRIPPER_CLOSED, speed=0.5)

    def phase_release(self, eef, rotation):
        if self.phase_steps >= OPEN_STEPS:
            self.retreat_height = eef[2] + CARRY_CLEARANCE
            self.enter("retreat")
        return self.move(eef, rotation, eef, GRIPPER_OPEN)

    def phase_retreat(self, eef, rotation):
        if self.phase_steps > 10:
            self.finish_subgoal()
        # Slowly: a tilted bowl can still rest on a finger.
        return self.move(eef, rotation, np.array([eef[0], eef[1], self.retreat_height]), GRIPPER_OPEN, speed=0.3)

    def finish_subgoal(self):
        # After a place the hand may hang inside a container (a basket) whose wall it must clear.
        self.hand_in_container = self.phase == "retreat"
        self.subgoals.pop(0)
        self.phase = None

    # Drawers: grasp the handle with the hand turned sideways, pull or push along the slide ------
    def start_drawer(self, kind, region):
        model, data = self.geometry.model, self.geometry.data
        joint = self.drawer_joint(region)
        self.joint_address = model.jnt_qposadr[joint]
        # LIBERO's cabinets open at negative joint values: the drawer comes out along -axis.
        pull = -data.xaxis[joint].copy()
        pull[2] = 0.0
        self.pull = pull / np.linalg.norm(pull)
        # The handle is the part of the drawer that sticks out furthest along the pull.
        geoms = np.flatnonzero(model.geom_bodyid == model.jnt_bodyid[joint])
        geoms = geoms[(model.geom_contype[geoms] != 0) | (model.geom_conaffinity[geoms] != 0)]
        low, high = self.geometry.geom_boxes(geoms)
        self.handle_geom = geoms[np.argmax(((low + high) / 2) @ self.pull)]
        # To pull, the fingers point into the cabinet (a quarter turn about the horizontal axis
        # across the pull) and close vertically around the handle bar. To push, the closed
        # fingers lean into the cabinet, the hand's long side across the pull: upright, the
        # forearm hits the cabinet's top before the drawer is in.
        across = np.cross([0.0, 0.0, 1.0], self.pull)
        self.yaw = closing_yaw((self.pull if kind == "open" else across)[:2])
        self.drawer_tilt = turn_about(across, np.pi / 2 if kind == "open" else DRAWER_PUSH_TILT)
        self.enter("drawer_approach")

    def handle_centre(self):
        low, high = self.geometry.geom_boxes(np.array([self.handle_geom]))
        return (low[0] + high[0]) / 2

    def joint_position(self):
        return self.geometry.data.qpos[self.joint_address]

    def phase_drawer_approach(self, eef, rotation):
        # Turn the hand high above the objects in front of the cabinet, then come down.
        target = self.handle_centre() + DRAWER_STANDOFF * self.pull + [0, 0, DRAWER_APPROACH_HEIGHT]
        # The hand may start inside the cabinet's reach (after placing something in the drawer).
        self.tilt = self.drawer_tilt if np.linalg.norm((target - eef)[:2]) < 0.05 else np.eye(3)
        arrived = np.linalg.norm(target - eef) < 0.02 and self.yaw_error(rotation) < 0.1
        if arrived or self.timed_out(100):
            self.enter("drawer_descend")
        return self.move(eef, rotation, target, self.drawer_gripper())

    def phase_drawer_descend(self, eef, rotation):
        target = self.handle_centre() + DRAWER_STANDOFF * self.pull
        if np.linalg.norm(target - eef) < POSITION_TOLERANCE or self.timed_out(40):
            self.enter("drawer_reach" if self.subgoals[0][0] == "open" else "drawer_push")
        return self.move(eef, rotation, target, self.drawer_gripper())

    def drawer_gripper(self):
        """Open to grasp a handle and pull; closed to push with the fingertips."""
        return GRIPPER_OPEN if self.subgoals[0][0] == "open" else GRIPPER_CLOSED

    def phase_drawer_reach(self, eef, rotation):
        target = self.handle_centre()
        if np.linalg.norm(target - eef) < 0.006 or self.timed_out(40):
            self.enter("drawer_grip")
        return self.move(eef, rotation, target, GRIPPER_OPEN)

    def phase_drawer_grip(self, eef, rotation):
        if self.phase_steps >= CLOSE_STEPS:
            self.enter("drawer_pull")
        return self.move(eef, rotation, self.handle_centre(), GRIPPER_CLOSED)

    def phase_drawer_pull(self, eef, rotation):
        # Pull a little ahead of the handle until the drawer is well inside the open range.
        if self.joint_position() < DRAWER_OPEN_POSITION or self.timed_out(80):
            self.enter("drawer_release")
        return self.move(eef, rotation, self.handle_centre() + DRAWER_LEAD * self.pull, GRIPPER_CLOSED)

    def phase_drawer_push(self, eef, rotation):
        # Closed fingers press on the handle's front until the drawer is past its closed stop.
        if self.joint_position() > DRAWER_CLOSED_POSITION or self.timed_out(100):
            self.enter("drawer_release")
        return self.move(eef, rotation, self.handle_centre() - DRAWER_LEAD * self.pull, GRIPPER_CLOSED, speed=0.5)

    def phase_drawer_release(self, eef, rotation):
        if self.phase_steps == 1:
            # Straight back off the handle, then up: turning the hand near the handle would
            # knock the drawer back.
            self.retreat_point = eef + DRAWER_STANDOFF * self.pull
        if self.phase_steps >= OPEN_STEPS:
            self.enter("drawer_retreat")
        return self.move(eef, rotation, eef, GRIPPER_OPEN)

    def phase_drawer_retreat(self, eef, rotation):
        if np.linalg.norm(self.retreat_point - eef) < 0.02 or self.timed_out(30):
            self.retreat_point = self.retreat_point + [0, 0, DRAWER_APPROACH_HEIGHT]
            self.enter("drawer_rise")
        return self.move(eef, rotation, self.retreat_point, GRIPPER_OPEN)

    def phase_drawer_rise(self, eef, rotation):
        if np.linalg.norm(self.retreat_point - eef) < 0.02 or self.timed_out(30):
            self.tilt = np.eye(3)
            self.enter("drawer_unturn")
        return self.move(eef, rotation, self.retreat_point, GRIPPER_OPEN)

    def phase_drawer_unturn(self, eef, rotation):
        # Back to top-down on the spot: turning while travelling swings the hand into the handle.
        if self.yaw_error(rotation) < 0.15 or self.timed_out(30):
            self.finish_subgoal()
        return self.move(eef, rotation, self.retreat_point, GRIPPER_OPEN)

    # Stove knob: grasp the knob's ridge from above and turn the wrist ---------------------------
    def start_knob(self, name):
        model, data = self.geometry.model, self.geometry.data
        stove = self.inner.get_object(name)
        joint = model.joint(stove.joints[0]).id
        self.joint_address = model.jnt_qposadr[joint]
        # Turning on raises the joint value: turn the wrist the same way about the knob's axis.
        self.turn_sign = np.sign(data.xaxis[joint][2])
        knob = model.jnt_bodyid[joint]
        geoms = np.flatnonzero(model.geom_bodyid == knob)
        geoms = geoms[(model.geom_contype[geoms] != 0) | (model.geom_conaffinity[geoms] != 0)]
        # The ridge is what stands above the knob's flat disc.
        low, high = self.geometry.geom_boxes(geoms)
        ridge = high[:, 2] > np.min(high[:, 2]) + KNOB_RIDGE_HEIGHT
        body_rotation = data.xmat[knob].reshape(3, 3)
        corners = np.concatenate([low[ridge], high[ridge]]) @ body_rotation  # in the knob's frame
        extent = corners.max(axis=0) - corners.min(axis=0)
        narrow_axis = body_rotation[:, 0] if extent[0] < extent[1] else body_rotation[:, 1]
        top = high[ridge, 2].max()
        centre = (low[ridge].min(axis=0) + high[ridge].max(axis=0)) / 2
        self.grasp = np.array([centre[0], centre[1], top - KNOB_GRASP_DEPTH])
        self.yaw = closing_yaw(narrow_axis[:2])
        self.enter("knob_approach")

    def phase_knob_approach(self, eef, rotation):
        target = self.grasp + [0, 0, APPROACH_CLEARANCE]
        aligned = np.linalg.norm((target - eef)[:2]) < POSITION_TOLERANCE and self.yaw_error(rotation) < 0.05
        if aligned or self.timed_out():
            self.enter("knob_descend")
        return self.move(eef, rotation, target, GRIPPER_OPEN)

    def phase_knob_descend(self, eef, rotation):
        if np.linalg.norm(self.grasp - eef) < 0.006 or self.timed_out(40):
            self.enter("knob_grip")
        return self.move(eef, rotation, self.grasp, GRIPPER_OPEN, speed=0.5)

    def phase_knob_grip(self, eef, rotation):
        if self.phase_steps >= CLOSE_STEPS:
            self.enter("knob_turn")
        return self.move(eef, rotation, self.grasp, GRIPPER_CLOSED)

    def phase_knob_turn(self, eef, rotation):
        if self.phase_steps == 1:
            self.yaw += self.turn_sign * KNOB_TURN
        if self.joint_position() > KNOB_ON_POSITION or self.timed_out(40):
            self.enter("knob_release")
        return self.move(eef, rotation, self.grasp, GRIPPER_CLOSED)

    def phase_knob_release(self, eef, rotation):
        if self.phase_steps >= OPEN_STEPS:
            self.enter("knob_retreat")
        return self.move(eef, rotation, self.grasp, GRIPPER_OPEN)

    def phase_knob_retreat(self, eef, rotation):
        target = self.grasp + [0, 0, APPROACH_CLEARANCE]
        if np.linalg.norm(target - eef) < 0.02 or self.timed_out(20):
            self.finish_subgoal()
        return self.move(eef, rotation, target, GRIPPER_OPEN)
