"""`squirrel bench latency`: how long the agent takes to decide (capture to action sent), and how fast
the whole act-and-learn loop runs compared with the scripted oracle on the same tasks.

The loop runs first, as `squirrel learn` runs (in a scratch home), so the decisions are then timed as users
meet them: with the memory its successes wrote to recall from, and the episode's history."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import numpy as np

from agent.learner import AgentConfig


@dataclass
class BenchLatencyConfig:
    """Measure decision latency and the learning loop's speed."""

    json: str = ""
    """Write the results here (JSON)."""
    tasks: str = "click-button,click-shape,enter-text"
    """Comma-separated playground tasks."""
    decisions: int = 300
    """Decisions to time (no learning while timing them)."""
    loop_steps: int = 512
    """Env steps of the full loop (acting + learning) to time."""
    display: str = ""
    """An existing X display. Empty: a private virtual display."""
    agent: AgentConfig = field(default_factory=AgentConfig)


def main(argv: list[str], prog: str) -> int:
    import tempfile

    from agent.learn_cli import LearnConfig, LearnRun, make_task_env
    from agent.policy import History
    from squirrel.config import parse

    cfg = parse(BenchLatencyConfig, argv, prog)
    tasks = [t for t in cfg.tasks.split(",") if t]
    env = make_task_env(tasks, cfg.display or None)
    env.get_wrapper_attr("config").max_actions_per_s = 1e6  # measure the agent, not the rate cap
    base = env.unwrapped
    out: dict = {"tasks": tasks, "encoder": cfg.agent.encoder, "threads": cfg.agent.threads}
    home = tempfile.TemporaryDirectory(prefix="squirrel-latency-")
    run = None
    try:
        # 1. the oracle's speed on these tasks
        n, t = 0, 0.0
        for s in range(30):
            obs, _ = env.reset(seed=100 + s, options={"task": tasks[s % len(tasks)]})
            while (a := base.oracle_action()) is not None:
                t0 = time.perf_counter()
                _, _, term, trunc, _ = env.step(a)
                t += time.perf_counter() - t0
                n += 1
                if term or trunc:
                    break
        out["oracle_steps_per_s"] = n / t
        # 2. the whole loop of `squirrel learn`, learning included (its successes fill episodic memory, as in use)
        run = LearnRun(LearnConfig(tasks=",".join(tasks), steps=cfg.loop_steps, home=home.name, tensorboard=False,
                                   progress=False, checkpoint_every=10**9, agent=cfg.agent), tasks, env=env)
        run.start()
        learner, agent = run.learner, run.agent
        t0 = time.perf_counter()
        learner.run(cfg.loop_steps)
        el = time.perf_counter() - t0
        out.update(loop_steps_per_s=learner.env_steps / el, loop_updates_per_s=learner.updates / el,
                   memory_entries=agent.recall.memory.count() if agent.recall is not None else None)
        out["loop_to_oracle_ratio"] = out["loop_steps_per_s"] / out["oracle_steps_per_s"]
        print(f"loop while learning: {out['loop_steps_per_s']:.1f} steps/s ({out['loop_updates_per_s']:.2f} updates/s); "
              f"oracle {out['oracle_steps_per_s']:.0f} steps/s; ratio {out['loop_to_oracle_ratio']:.3f}")
        # 3. decision latency: capture -> policy -> action sent (XTest round-trip included), with the inputs the
        # learner gives the policy (offered tools, recalled memory, the episode so far)
        obs, _ = env.reset(seed=0, options={"task": tasks[0]})
        history = History()
        lat, parts, first, serial = [], {"capture": [], "decide": [], "send": []}, [], []
        for i in range(cfg.decisions + 10):
            # every third decision matches the words after the encoder instead of during it: the overlap's gain,
            # measured side by side on the same screens
            agent.policy.concurrent_matching = i % 3 != 1
            new_instruction = obs["instruction"] not in agent.instructions._cache
            t0 = time.perf_counter()
            frame = base._grab()
            t1 = time.perf_counter()
            # as the learner decides: Agent._forward adds the offered tools and the recalled memory it is not given
            a = agent.act(agent.obs_batch(dict(obs, screen=frame), history))[0]
            action = agent.policy.to_action(a)
            reason = env.check(action)
            t2 = time.perf_counter()
            if reason is None:
                base._act(action)
            t3 = time.perf_counter()
            history.after(a, True)  # (whether the screen changed does not change the cost)
            if i >= 10 and not agent.policy.concurrent_matching:
                serial.append((t3 - t0) * 1e3)
            elif i >= 10:  # warm-up excluded
                lat.append((t3 - t0) * 1e3)
                first.append(new_instruction)
                for k, v in zip(parts, ((t1 - t0), (t2 - t1), (t3 - t2))):
                    parts[k].append(v * 1e3)
            if i % 3 == 2:  # new screens now and then
                obs, _ = env.reset(seed=i, options={"task": tasks[i % len(tasks)]})
                history = History()
        lat_a, first_a = np.array(lat), np.array(first)
        out.update(decision_ms_median=float(np.median(lat)), decision_ms_p90=float(np.percentile(lat, 90)),
                   parts_ms_median={k: float(np.median(v)) for k, v in parts.items()},
                   # a new instruction is encoded once (MiniLM + rendering its words), on its first decision
                   decision_known_instruction_ms_median=float(np.median(lat_a[~first_a])) if (~first_a).any() else None,
                   decision_new_instruction_ms_median=float(np.median(lat_a[first_a])) if first_a.any() else None,
                   decision_serial_matching_ms_median=float(np.median(serial)))
        agent.policy.concurrent_matching = True
        print(f"decision latency: median {out['decision_ms_median']:.1f} ms, p90 {out['decision_ms_p90']:.1f} ms "
              f"(capture {out['parts_ms_median']['capture']:.2f}, decide {out['parts_ms_median']['decide']:.1f}, "
              f"send {out['parts_ms_median']['send']:.2f}); known instruction {out['decision_known_instruction_ms_median']:.1f} ms, "
              f"first decision on a new one {out['decision_new_instruction_ms_median']:.1f} ms; with the word matching "
              f"after the encoder instead of beside it {out['decision_serial_matching_ms_median']:.1f} ms"
              + (f"; {out['memory_entries']} memory entries to recall from" if out["memory_entries"] is not None else ""))
    finally:
        if run is not None:
            run.close()
        env.close()
        home.cleanup()
    if cfg.json:
        with open(cfg.json, "w") as f:
            json.dump(out, f, indent=1)
        print(f"wrote {cfg.json}")
    return 0
