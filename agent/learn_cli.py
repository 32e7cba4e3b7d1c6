"""`squirrel learn`: the act-and-learn loop, headless, with a progress bar, TensorBoard scalars,
checkpoints and a JSON learning curve. Ctrl-C or SIGTERM saves a checkpoint and exits cleanly;
`--resume` continues the same learning curve."""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict, deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from agent.distributed import ScaleConfig
from agent.learner import AgentConfig
from squirrel import interrupt
from squirrel.errors import UserError


@dataclass
class LearnConfig:
    """Learn GUI tasks from pixels, online, on this machine."""

    tasks: str = "click-button"
    """Comma-separated tasks (playground names like click-button, or user-<name> for your TOML tasks)."""
    steps: int = 20_000
    """Total env steps to reach (counting earlier runs when resuming)."""
    seed: int = 0
    """Random seed (weights, task seeds)."""
    home: str = ".squirrel/agent"
    """Agent home: checkpoints, TensorBoard logs, learning curve."""
    resume: bool = False
    """Continue from the newest good checkpoint in --home."""
    actors: int = 0
    """Ray actors acting at once, each on its own virtual display with a copy of the policy, sending episodes to
    this process, which learns (0: the single-process loop)."""
    ray_address: str = ""
    """With --actors: join the Ray cluster at this address (HOST:PORT, as `ray start --head` prints). Empty: start Ray
    on this machine."""
    scale: ScaleConfig = field(default_factory=ScaleConfig)
    display: str = ""
    """An existing X display to act on (needs --target-window). Empty: a private virtual display."""
    target_window: str = ""
    """With --display: title (or part of it) of the only window the agent may act on; it stops when the window goes."""
    json: str = ""
    """Also write the learning curve here."""
    curve_every: int = 500
    """Env steps between learning-curve points."""
    window: int = 50
    """Episodes per task in the moving success rate."""
    eval_every: int = 0
    """Env steps between greedy evaluations (0: off): --eval-episodes episodes per task on fixed seeds, the
    policy's best guess without exploration; not learned from, not counted as training steps."""
    eval_episodes: int = 20
    """Episodes per task in each greedy evaluation."""
    stage_steps: int = 0
    """Learn the tasks one after another (a task stream, in the order given), this many env steps each, and after
    every stage evaluate all the tasks greedily (--eval-episodes each); --steps becomes tasks x this.
    0: the tasks interleaved, one episode each in turn."""
    tool_support: int = 5
    """With --agent.tools: a tool mined from at least this many of the agent's successes starts active (offered to
    the policy) at once; 0: every mined tool waits as a candidate for a person to approve in the panel."""
    mine_every: int = 20
    """With --agent.tools: mine the new successes for tools every this many successful episodes."""
    db_budget_mb: float = 1024.0
    """Keep the agent database under this size: past it, the oldest decided episodes and their steps are deleted
    (episodic memory entries, tools and pending episodes stay). 0: keep everything."""
    checkpoint_every: int = 2000
    """Env steps between checkpoints."""
    tensorboard: bool = True
    """Write TensorBoard scalars to HOME/tb."""
    progress: bool = True
    """Show a progress bar."""
    agent: AgentConfig = field(default_factory=AgentConfig)


class Curve:
    """Per-task moving success rate, sampled against that task's env steps."""

    def __init__(self, window: int, every: int):
        self.window, self.every = window, every
        self.recent: dict[str, deque] = defaultdict(lambda: deque(maxlen=window))
        self.task_steps: dict[str, int] = defaultdict(int)
        self.points: dict[str, list] = defaultdict(list)
        self.episodes: dict[str, int] = defaultdict(int)
        self.eval_points: dict[str, list] = defaultdict(list)  # [task steps, greedy success]
        self.eval_steps = 0
        self.solved: dict[str, deque] = defaultdict(lambda: deque(maxlen=window))  # (decisions, tool calls) per success

    def add(self, task: str, success: bool | None, steps: int, decisions: int | None = None, tool_calls: int = 0) -> bool:
        """Record an episode; True when it added a curve point."""
        self.recent[task].append(1.0 if success else 0.0)
        if success:
            self.solved[task].append((steps if decisions is None else decisions, tool_calls))
        self.episodes[task] += 1
        before = self.task_steps[task]
        self.task_steps[task] += steps
        if self.task_steps[task] // self.every > before // self.every:
            self.points[task].append([self.task_steps[task], self.rate(task)])
            return True
        return False

    def rate(self, task: str) -> float:
        r = self.recent[task]
        return float(np.mean(r)) if r else 0.0

    def runs(self, agent: str, seed: int) -> list[dict]:
        out = []
        for task in self.episodes:  # every task that ran, with or without a curve point yet
            pts = self.points.get(task, [])
            s80 = next((s for s, v in pts if v >= 0.8), None)
            out.append({"task": task, "agent": agent, "seed": seed, "curve": pts, "final_success": self.rate(task),
                        "steps_to_80": s80, "episodes": self.episodes[task], "env_steps": self.task_steps[task]})
            solved = self.solved.get(task)
            if solved:  # the last `window` successes: decisions each (a tool call is one) and tool calls each
                out[-1].update(decisions_per_success=float(np.mean([d for d, _ in solved])),
                               tool_calls_per_success=float(np.mean([c for _, c in solved])))
            ev = self.eval_points.get(task)
            if ev:
                out[-1].update(eval_curve=ev, eval_final_success=ev[-1][1],
                               eval_steps_to_80=next((s for s, v in ev if v >= 0.8), None),
                               eval_steps_to_90=next((s for s, v in ev if v >= 0.9), None))
        return out

    def state(self) -> dict:
        return {"recent": {k: list(v) for k, v in self.recent.items()}, "task_steps": dict(self.task_steps),
                "points": dict(self.points), "episodes": dict(self.episodes), "eval_points": dict(self.eval_points),
                "eval_steps": self.eval_steps, "solved": {k: [list(x) for x in v] for k, v in self.solved.items()}}

    def load(self, st: dict) -> None:
        for k, v in st["recent"].items():
            self.recent[k].extend(v)
        self.task_steps.update(st["task_steps"])
        self.points.update(st["points"])
        self.episodes.update(st["episodes"])
        self.eval_points.update(st.get("eval_points", {}))
        self.eval_steps = st.get("eval_steps", 0)
        for k, v in st.get("solved", {}).items():
            self.solved[k].extend(tuple(x) for x in v)


def make_task_env(tasks: list[str], display: str | None, target_window: str = ""):
    """One gated env on one desktop that can run any of `tasks` (reset(options={"task": ...})). On a display
    Squirrel did not start, the gate confines every action to `target_window` (required there)."""
    if display and not all(t.startswith("fake-") for t in tasks):
        if not target_window:
            raise UserError(f"acting on display {display} (one Squirrel did not start) needs --target-window TITLE, "
                            "the one window the agent may act on")
        env = _task_env(tasks, display)
        env.get_wrapper_attr("config").target_window = target_window
        return env
    return _task_env(tasks, display)


def _task_env(tasks: list[str], display: str | None):
    from agent.registration import PLAYGROUND_TASKS, make_env

    if all(t.startswith("fake-") for t in tasks):  # the display-free fake desktop (tests, CI smoke runs)
        from agent.fake import FakeTasksEnv
        from agent.gate import SafetyGate

        unknown = [t for t in tasks if t not in ("fake-click", "fake-type")]
        if unknown:
            raise UserError(f"the fake desktop runs fake-click and fake-type, not {unknown[0]}")
        return SafetyGate(FakeTasksEnv())
    if any(t.startswith("miniwob-") for t in tasks):  # MiniWoB++ in Chromium on its own display
        from agent.tasks.miniwob import make_miniwob_env, task_name

        if not all(t.startswith("miniwob-") for t in tasks):
            raise UserError("MiniWoB++ tasks (miniwob-...) cannot be mixed with other tasks in one run")
        for t in tasks:
            task_name(t)  # a UserError naming an unknown task
        return make_miniwob_env(tasks[0], display=display)
    if any(t.startswith("user-") for t in tasks):  # a user-defined TOML task: its own app, one per run
        from agent.tasks.user import make_user_env, scan

        if len(set(tasks)) > 1:
            raise UserError("a user-defined task (user-...) runs alone: its app owns the episode")
        name = tasks[0][len("user-"):]
        found = [p for p, spec, _ in scan() if spec is not None and spec.name == name]
        if not found:
            raise UserError(f"no valid user task named {name!r}; `squirrel tasks` lists them (and says what is wrong)")
        return make_user_env(str(found[0]), display=display)
    unknown = [t for t in tasks if t not in PLAYGROUND_TASKS]
    if unknown:
        raise UserError(f"unknown task {unknown[0]!r}; `squirrel tasks` lists the tasks")
    return make_env(tasks[0], display=display)


def main(argv: list[str], prog: str) -> int:
    from squirrel.config import parse

    cfg = parse(LearnConfig, argv, prog)
    tasks = [t for t in cfg.tasks.split(",") if t]
    if not tasks:
        raise UserError("--tasks is empty; name at least one task (squirrel tasks lists them)")
    _refuse_person_judged(tasks)
    run = LearnRun(cfg, tasks)
    try:
        run.start()
        run.loop()
    except KeyboardInterrupt:
        if not hasattr(run, "learner"):
            raise
        interrupt.handled()
        print("\nsquirrel: stop requested; saving a checkpoint", flush=True)
        run.save()
    finally:
        run.close()
    run.report()
    return 0


def _refuse_person_judged(tasks: list[str]) -> None:
    """Headless, nobody can give an "ask the person" task its outcome: say where it can be learned."""
    user = [t[len("user-"):] for t in tasks if t.startswith("user-")]
    if not user:
        return
    from agent.tasks.user import scan

    for _, spec, _ in scan():
        if spec is not None and spec.name in user and spec.checker["kind"] == "ask":
            raise UserError(f"user-{spec.name} is judged by a person (checker kind \"ask\"): assign it in "
                            "`squirrel panel`, where thumbs up/down give each episode its outcome")


def _did_something(step, i: int, last: int) -> bool:
    """Step i of an episode whose last step is `last` did something: the screen changed, or the episode ended there."""
    return step.changed or i == last


class LearnRun:
    """The pieces of one `squirrel learn` run, so the CLI, the benchmark and the demo share them."""

    def __init__(self, cfg: LearnConfig, tasks: list[str], env=None, agent_name: str = "squirrel"):
        self.cfg, self.tasks, self.agent_name = cfg, tasks, agent_name
        self.home = Path(cfg.home)
        self.env, self._own_env = env, env is None
        self.curve = Curve(cfg.window, cfg.curve_every)
        self.writer = self.bar = self.db = self.lock = None
        self.t0 = time.time()
        self._last_ckpt = self._last_eval = 0
        self._pending_db: dict[int, int] = {}  # database episode id -> learner episode, waiting for a person
        self._unmined = 0  # successes since tools were last mined
        self.stages: list[dict] = []  # --stage-steps: per finished stage, its task, end and every task's greedy success
        if cfg.stage_steps:
            cfg.steps = cfg.stage_steps * len(tasks)

    def start(self) -> None:
        import torch

        from agent.home import HomeLock
        from agent.learner import Agent, Learner
        from memory.db import AgentDB
        from trainer.checkpoint import load_latest, restore

        self.lock = HomeLock(self.home).acquire()  # one agent per home; a killed one's lock is taken over
        self.db = AgentDB.open(self.home)
        self.db.abandon_unfinished()
        torch.manual_seed(self.cfg.seed)
        np.random.seed(self.cfg.seed)
        self.agent = Agent(self.cfg.agent)
        if self.cfg.agent.memory:
            from agent.recall import Recall
            from memory.episodic import EpisodicMemory

            self.agent.recall = Recall(EpisodicMemory(self.db, key_dim=384), self.cfg.agent.memory_k)
        if self.cfg.agent.tools:
            from agent.tools import ToolSet
            from memory.tools import ToolLibrary

            if self.cfg.actors:
                raise UserError("--agent.tools runs in the single-process loop; leave out --actors to use tools")
            # crop clusters keep their spectra in memory (~30 KB each): 5,000 of them, the oldest seen-once go first
            self.agent.tools = ToolSet(ToolLibrary(self.db, target_match="crop", auto_activate=self.cfg.tool_support or None,
                                                   max_targets=5000), self.cfg.agent.tool_threshold)
        if self.env is None and not self.cfg.actors:  # (actors start their own desktops)
            self.env = make_task_env(self.tasks, self.cfg.display or None, self.cfg.target_window)
        self.learner = (self._distributed_learner() if self.cfg.actors
                        else Learner(self.agent, self.env, self.tasks, seed=self.cfg.seed))
        if self.cfg.resume:
            found = load_latest(self.home / "checkpoints")
            if found is None:
                print(f"squirrel: no checkpoint in {self.home / 'checkpoints'}; starting from scratch")
            else:
                path, tensors, meta = found
                try:
                    restore(tensors, meta, self.agent.modules(), self.agent.optimizer)
                except UserError as e:
                    written = meta.get("config", {}).get("learn", {}).get("agent", {})
                    flags = option_flags(written, asdict(self.cfg.agent))
                    raise UserError(f"{e}; {path.name} was written with {' '.join(flags)}" if flags else str(e)) from None
                self.learner.load_counters(meta["counters"])
                self.curve.load(meta["counters"]["curve"])
                self.stages = meta["counters"].get("stages", [])
                self._last_ckpt = self._last_eval = self.learner.env_steps
                print(f"squirrel: resumed from {path.name} at {self.learner.env_steps} env steps")
        if self.cfg.stage_steps:  # a task stream: the stage's task only
            self.learner.tasks = [self.tasks[min(len(self.stages), len(self.tasks) - 1)]]
        self.learner.episode_callbacks.append(self._on_episode)
        self.learner.update_callbacks.append(self._on_update)
        if self.cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.home / "tb"))
        if self.cfg.progress:
            from tqdm import tqdm

            self.bar = tqdm(total=self.cfg.steps, initial=self.learner.env_steps, unit="step", desc="learning",
                            dynamic_ncols=True)

    def _distributed_learner(self):
        """--actors N: Ray actors act on their own desktops, this process learns (agent/distributed.py)."""
        from agent.distributed import DistributedLearner

        if self.cfg.display:
            raise UserError("--display is for the single-process loop: each actor starts its own virtual display")
        return DistributedLearner(self.agent, self.tasks, self.cfg.actors, self.cfg.ray_address, self.cfg.scale,
                                  seed=self.cfg.seed)

    def loop(self) -> None:
        self.learner.run(self.cfg.steps)
        if self.cfg.stage_steps and len(self.stages) < len(self.tasks) and not self.learner.stop_requested:
            self.end_stage(self.learner.env_steps)  # the last stage ran out of steps mid-episode
        self.save()

    def end_stage(self, env_steps: int) -> None:
        """A task stream's stage is over: every task's greedy success now, then the next task."""
        done = self.tasks[len(self.stages)]
        rates = {}
        for task in dict.fromkeys(self.tasks):
            rates[task], steps = self.learner.evaluate(task, self.cfg.eval_episodes)
            self.curve.eval_steps += steps
            if self.writer:
                self.writer.add_scalar(f"stage_success/{task}", rates[task], env_steps)
        self.stages.append({"task": done, "env_steps": env_steps, "eval": rates})
        if len(self.stages) < len(self.tasks):
            self.learner.tasks = [self.tasks[len(self.stages)]]  # the learner's next reset starts one
        if self.bar:
            self.bar.write(f"stage {len(self.stages)} ({done}) done at {env_steps} steps; greedy success: "
                           + ", ".join(f"{t} {v:.2f}" for t, v in rates.items()))
        self.write_curve()

    def _record(self, r) -> None:
        """The episode and its steps into the agent's database (episodes survive a crash once written); an
        undecided one ("ask the person") is recorded as pending."""
        from agent.tools import CROP_H, CROP_W, target_crop, target_png

        D = self.agent.policy.encoder.dim
        crops = self.agent.tools is not None and r.success  # what tools are mined from: targets by appearance
        eid = self.db.begin_episode(r.task, r.seed, r.instruction)
        i, last = 0, len(r.transitions) - 1
        for n, st in enumerate(r.transitions):
            for frame, act, tool in self._primitives(st):
                d = dict(act.to_dict(), kind=act.type.name.lower())
                if tool is not None:
                    d["tool"] = tool
                target = thumb = None
                # as recall keeps: only a point that did something (or a tool's step) is a target; a click that
                # missed is no step of a routine (on confirm-dialog "click[blank] -> click[Cancel]" was mined)
                if "x" in d and crops:
                    if _did_something(st, n, last) or tool is not None:
                        target = target_crop(frame, act.x, act.y)
                        thumb = target_png(target.reshape(CROP_H, CROP_W, 3).astype(np.uint8))
                elif "x" in d and tool is None:
                    target = st.action_features[self.agent.n_types:self.agent.n_types + D].numpy()
                self.db.add_step(eid, i, d, st.reward if tool is None else 0.0, target=target, thumbnail=thumb)
                i += 1
        self.db.end_episode(eid, r.success if r.success is None and r.episode in self.learner.pending else bool(r.success),
                            r.ret, r.steps)
        r.db_id = eid

    def _primitives(self, st) -> list:
        """The env actions a step took: [(frame acted on, Action, tool id or None)] (a tool call took several)."""
        return [(st.frame, self.agent.policy.to_action(st.action), None)] if st.prims is None else st.prims

    def _remember(self, r) -> None:
        """A success's targets into episodic memory (recall), when the agent uses it."""
        from agent.actions import POINTER_TYPES

        if self.agent.recall is None or not r.success:
            return
        points = []
        last = len(r.transitions) - 1
        for i, st in enumerate(r.transitions):
            for frame, act, _ in self._primitives(st):
                # only points that did something: a click that missed on the way to a success is not a target
                # worth finding again
                if act.type in POINTER_TYPES and _did_something(st, i, last):
                    points.append((frame, act.x, act.y, dict(act.to_dict(), step=i)))
        self.agent.recall.remember(r.task, self.agent.instructions(r.instruction).sentence.numpy(), points, r.ret,
                                   episode_id=r.db_id)

    def judge(self, episode_id: int, good: bool) -> bool:
        """A person's verdict on an episode in the database (the panel's thumbs). A pending episode of this run
        is then learned from and counted in the curve; any other just gets its outcome. False: no such episode."""
        try:
            ep = self.db.episode(episode_id)
        except KeyError:
            return False
        self.db.end_episode(episode_id, good, (ep.ret or 0.0) + (1.0 if good else -1.0) * (ep.outcome == "pending"),
                            ep.steps or 0)
        learner_episode = self._pending_db.pop(episode_id, None)
        r = self.learner.judge(learner_episode, good) if learner_episode is not None else None
        if r is not None:
            self._remember(r)
            if self.curve.add(r.task, r.success, r.steps):
                self.write_curve()
        return True

    def _on_episode(self, r) -> None:
        if self.db is not None:
            self._record(r)
            if self.cfg.db_budget_mb and r.episode % 100 == 0:
                self.db.trim(int(self.cfg.db_budget_mb * 2**20))
            if r.success is None and r.episode in self.learner.pending:
                self._pending_db[r.db_id] = r.episode
                return  # counted in the curve when a person gives the outcome
            self._remember(r)
            self._mine(r)
        calls = sum(st.prims is not None for st in r.transitions)
        if self.curve.add(r.task, r.success, r.steps, r.decisions or None, calls):
            self.write_curve()
        if self.writer:
            self.writer.add_scalar(f"success/{r.task}", float(bool(r.success)), r.env_steps)
            self.writer.add_scalar(f"return/{r.task}", r.ret, r.env_steps)
        if self.bar:
            self.bar.update(r.env_steps - self.bar.n)
            self.bar.set_postfix({t[:12]: f"{self.curve.rate(t):.2f}" for t in self.tasks}, refresh=False)
        if self.cfg.stage_steps and r.env_steps >= (len(self.stages) + 1) * self.cfg.stage_steps \
                and len(self.stages) < len(self.tasks):
            self.end_stage(r.env_steps)
        if self.cfg.eval_every and r.env_steps // self.cfg.eval_every > self._last_eval // self.cfg.eval_every:
            self.evaluate(r.env_steps)
        if r.env_steps - self._last_ckpt >= self.cfg.checkpoint_every:
            self.save()

    def _mine(self, r) -> None:
        """With tools: every --mine-every successes, mine the new ones; tools with enough support become active."""
        tools = self.agent.tools
        if tools is None or not r.success:
            return
        self._unmined += 1
        if self._unmined < self.cfg.mine_every:
            return
        self._unmined = 0
        before = {t.id for t in tools.tools}
        tools.library.mine_new()
        tools.refresh()
        new = [t for t in tools.tools if t.id not in before]
        if new and self.bar:
            self.bar.write("tools offered: " + "; ".join(f"{t.name} (from {t.support} successes)" for t in new))
        if self.writer:
            self.writer.add_scalar("tools/offered", len(tools.tools), r.env_steps)

    def evaluate(self, env_steps: int) -> None:
        """Greedy episodes of every task (between training episodes): the eval curve."""
        self._last_eval = env_steps
        for task in dict.fromkeys(self.learner.tasks):
            rate, steps = self.learner.evaluate(task, self.cfg.eval_episodes)
            self.curve.eval_points[task].append([self.curve.task_steps[task], rate])
            self.curve.eval_steps += steps
            if self.writer:
                self.writer.add_scalar(f"eval_success/{task}", rate, env_steps)
        self.write_curve()

    def _on_update(self, info: dict) -> None:
        if self.writer:
            el = max(time.time() - self.t0, 1e-6)
            for k, v in info.items():
                if k not in ("updates", "env_steps"):
                    self.writer.add_scalar(f"loss/{k}", v, info["env_steps"])
            self.writer.add_scalar("speed/steps_per_s", self.learner.env_steps / el, info["env_steps"])
            self.writer.add_scalar("speed/updates_per_s", self.learner.updates / el, info["env_steps"])

    def save(self) -> None:
        from trainer.checkpoint import save_checkpoint

        counters = dict(self.learner.counters(), curve=self.curve.state(), stages=self.stages)
        save_checkpoint(self.home / "checkpoints", self.learner.env_steps, self.agent.modules(), self.agent.optimizer,
                        {"learn": asdict(self.cfg), "tasks": self.tasks}, counters)
        self._last_ckpt = self.learner.env_steps
        self.write_curve()

    def result(self) -> dict:
        info = {"runs": self.curve.runs(self.agent_name, self.cfg.seed), "env_steps": self.learner.env_steps,
                "eval_env_steps": self.curve.eval_steps,
                "updates": self.learner.updates, "seconds": time.time() - self.t0,
                "decisions": self.learner.decisions, "pretrained": self.agent.pretrained_from}
        if self.cfg.stage_steps:
            info.update(stage_steps=self.cfg.stage_steps, stages=self.stages)
        if self.cfg.actors:  # the actors and their rates, the learner's rate, the policy lag
            info["scale"] = self.learner.status()
        return info

    def write_curve(self) -> None:
        out = json.dumps(self.result(), indent=1)
        for p in [self.home / "curve.json"] + ([Path(self.cfg.json)] if self.cfg.json else []):
            tmp = p.with_suffix(".tmp")
            tmp.write_text(out)
            os.replace(tmp, p)

    def report(self) -> None:
        for r in self.curve.runs(self.agent_name, self.cfg.seed):
            print(f"{r['task']:<18} success {r['final_success']:.2f} (last {self.cfg.window} episodes), "
                  f"{r['episodes']} episodes, {r['env_steps']} steps, 80% at {r['steps_to_80']}"
                  + (f"; greedy {r['eval_final_success']:.2f}, 80% at {r['eval_steps_to_80']}" if "eval_curve" in r else ""))

    def close(self) -> None:
        if self.cfg.actors and hasattr(self, "learner"):
            self.learner.close()  # the actors' desktops, then Ray
        if self.bar:
            self.bar.close()
        if self.writer:
            self.writer.close()
        if self.db is not None:
            self.db.close()
        if self._own_env and self.env is not None:
            self.env.close()
        if self.lock is not None:
            self.lock.release()


def option_flags(written: dict, current: dict) -> list[str]:
    """The agent options a checkpoint was written with (`written`, its config) that differ from this run's
    (`current`), as the flags that would set them back, e.g. ["--agent.no-memory", "--agent.fusion-layers 2"].
    An option on now that the checkpoint does not name came after it, when there was no such thing: off."""
    flags = []
    for key, value in {**{k: False for k, v in current.items() if v is True}, **written}.items():
        if key not in current or current[key] == value or isinstance(value, dict):
            continue
        name = key.replace("_", "-")
        flags.append(f"--agent.{'' if value else 'no-'}{name}" if isinstance(value, bool) else f"--agent.{name} {value}")
    return flags
