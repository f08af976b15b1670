"""Per-task success of the scripted expert on a suite's fixed initial states, without rendering (expert tuning).

python scripts/check_expert.py --suite libero_goal --tasks 0,3 --states 5 --workers 2
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

from vla.env_pool import EnvPool, ResetRequest
from vla.expert import ScriptedExpert, UnsupportedTaskError
from vla.libero_env import SUITE_MAX_STEPS, list_tasks, load_init_states, setup_libero


@dataclass
class CheckConfig:
    suite: str = "libero_goal"
    tasks: list[int] | None = None  # None: every task of the suite
    states: int = 5  # the first N fixed initial states per task
    first_state: int = 0
    workers: int = 1
    # `env.seed()` before each reset, as the benchmark evaluation (scripts/eval.py's env_seed): the fixtures (cabinet,
    # stove) are placed from it, not from the fixed initial state, so another seed moves a drawer around its bowl
    seed: int = 0
    verbose: bool = False


def run_task(pool: EnvPool, task_id: int, cfg: CheckConfig) -> tuple[int, int, list[str]]:
    """(successes, episodes, phase of each failure) over the task's fixed states, `cfg.workers` at a time."""
    init_states = load_init_states(cfg.suite, task_id)[cfg.first_state : cfg.first_state + cfg.states]
    bddl = pool.task_info(task_id).bddl_file
    successes, failures = 0, []
    for start in range(0, len(init_states), pool.num_workers):
        batch = init_states[start : start + pool.num_workers]
        experts = {i: ScriptedExpert.from_bddl(bddl) for i in range(len(batch))}
        results = pool.reset({i: ResetRequest(task_id, s, seed=cfg.seed) for i, s in enumerate(batch)})
        running = {i for i, r in results.items() if r.error is None and not r.done}
        successes += sum(r.done for r in results.values())
        for _ in range(SUITE_MAX_STEPS[cfg.suite]):
            if not running:
                break
            results = pool.step({i: experts[i].act(results[i].obs) for i in running})
            for i, r in results.items():
                if r.error is not None:
                    raise RuntimeError(r.error)
                if r.done:
                    successes += 1
                    running.discard(i)
        failures += [experts[i].phase for i in running]
    return successes, len(init_states), failures


def main(cfg: CheckConfig) -> dict[int, tuple[int, int]]:
    setup_libero()
    tasks = list_tasks(cfg.suite)
    table = {}
    with EnvPool(cfg.suite, cfg.workers, cameras=()) as pool:
        for task_id in cfg.tasks if cfg.tasks is not None else range(len(tasks)):
            t0 = time.time()
            try:
                ok, n, failures = run_task(pool, task_id, cfg)
            except UnsupportedTaskError as err:
                print(f"{cfg.suite} task {task_id}: unsupported ({err})", flush=True)
                continue
            table[task_id] = (ok, n)
            print(
                f"{cfg.suite} task {task_id}: {ok}/{n} ({time.time() - t0:.0f}s) {tasks[task_id].language}"
                + (f" failed in {failures}" if failures else ""),
                flush=True,
            )
    ok, n = sum(v[0] for v in table.values()), sum(v[1] for v in table.values())
    print(f"{cfg.suite} total: {ok}/{n}", flush=True)
    return table


def parse_args(argv: list[str] | None = None) -> CheckConfig:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", default=CheckConfig.suite)
    parser.add_argument("--tasks", default=None, help="comma-separated task ids (default: all)")
    parser.add_argument("--states", type=int, default=CheckConfig.states)
    parser.add_argument("--first_state", type=int, default=CheckConfig.first_state)
    parser.add_argument("--workers", type=int, default=CheckConfig.workers)
    args = parser.parse_args(argv)
    tasks = [int(t) for t in args.tasks.split(",")] if args.tasks else None
    return CheckConfig(args.suite, tasks, args.states, args.first_state, args.workers)


if __name__ == "__main__":
    main(parse_args())
