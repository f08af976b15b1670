"""Soft vs hard LIBERO resets, measured: for each fixed initial state, one env resets the LIBERO way (`hard_reset`:
the model rebuilt from XML) and one the soft way (`vla.libero_env.clear_soft_reset`), the soft one given the
fixture placement the hard one drew; both then settle and run the scripted expert. Prints each reset's time and
whether the two episodes are bit-identical (end-effector and gripper every step, the last agentview frame), then the
fixture placement of successive hard resets with one seed (LIBERO moves it from the previous placement).

    python scripts/check_soft_reset.py --suite libero_spatial --task 4 --states 0,1,2 --steps 120

Runs LIBERO in this process: do not import TensorFlow here (the two segfault together).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from vla.env_pool import observe
from vla.expert import ScriptedExpert
from vla.libero_env import (
    DUMMY_ACTION,
    NUM_STEPS_WAIT,
    clear_soft_reset,
    list_tasks,
    load_init_states,
    make_env,
    setup_libero,
)


def episode(env, init_state, bddl: str, steps: int, seed: int, fixtures=None):
    """(reset seconds, fixture placement used, per-step eef + gripper, last agentview frame) of one expert episode;
    `fixtures` (body_pos, body_quat) overrides where the reset put the fixtures."""
    env.seed(seed)
    started = time.perf_counter()
    env.reset()
    reset_s = time.perf_counter() - started
    if not env.env.hard_reset:
        clear_soft_reset(env)
    model = env.env.sim.model
    if fixtures is not None:
        model.body_pos[:], model.body_quat[:] = fixtures
    placed = (model.body_pos.copy(), model.body_quat.copy())
    obs = env.set_init_state(init_state)
    for _ in range(NUM_STEPS_WAIT):
        obs, *_ = env.step(DUMMY_ACTION.copy())
    expert, trace = ScriptedExpert.from_bddl(bddl), []
    for _ in range(steps):
        obs, _, done, _ = env.step(expert.act(observe(env, obs)))
        trace.append(np.concatenate([obs["robot0_eef_pos"], obs["robot0_gripper_qpos"]]))
        if done:
            break
    return reset_s, placed, np.array(trace), obs["agentview_image"]


def main(args: argparse.Namespace) -> list[dict]:
    setup_libero(args.libero_assets)
    task = list_tasks(args.suite)[args.task]
    init_states = load_init_states(args.suite, args.task)
    hard = make_env(task.bddl_file, image_size=128, cameras=("agentview",), hard_reset=True)
    soft = make_env(task.bddl_file, image_size=128, cameras=("agentview",), hard_reset=False)
    rows = []
    print(f"{args.suite} task {args.task}: {task.language}")
    print(f"{'state':>5} {'hard reset s':>12} {'soft reset s':>12} {'steps':>5} {'identical':>9} {'max |diff|':>10}")
    for state in args.states:
        h_s, placed, h_trace, h_img = episode(hard, init_states[state], task.bddl_file, args.steps, args.seed)
        s_s, _, s_trace, s_img = episode(soft, init_states[state], task.bddl_file, args.steps, args.seed, placed)
        n = min(len(h_trace), len(s_trace))
        same = len(h_trace) == len(s_trace) and np.array_equal(h_trace, s_trace) and np.array_equal(h_img, s_img)
        diff = float(np.abs(h_trace[:n] - s_trace[:n]).max()) if n else 0.0
        print(f"{state:>5} {h_s:>12.2f} {s_s:>12.2f} {len(h_trace):>5} {str(same):>9} {diff:>10.2e}")
        rows.append({"state": state, "hard_s": h_s, "soft_s": s_s, "identical": same, "max_diff": diff})
    names = [hard.env.sim.model.body_id2name(i) for i in range(hard.env.sim.model.nbody)]
    fixtures = [n for n in names if n.endswith("_main") and n.removesuffix("_main") in hard.env.fixtures_dict]
    for label, env in (("hard", hard), ("soft", soft)):
        placements = []
        for _ in range(3):
            env.seed(args.seed)
            env.reset()
            placements.append(np.round(env.env.sim.model.body_pos[names.index(fixtures[0])][:2], 4).tolist())
        print(f"{label} resets with seed {args.seed}, {fixtures[0]} xy: {placements}")
    hard.close()
    soft.close()
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", default="libero_spatial")
    parser.add_argument("--task", type=int, default=4, help="a task with fixtures (4: the bowl in the cabinet)")
    parser.add_argument("--states", type=lambda s: [int(t) for t in s.split(",")], default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=120, help="expert steps per episode after settling")
    parser.add_argument("--seed", type=int, default=0, help="env.seed() before every reset (the eval's env_seed)")
    parser.add_argument("--libero_assets", default=None)
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
