"""Scale out on Ray (DESIGN.md decision 11): many actors acting, one learner.

Each actor is a Ray actor process that owns its own desktop (a private Xvfb with the playground app, or
Chromium for MiniWoB++, built by `make_task_env`) and a CPU copy of the policy (one torch thread). It acts
whole episodes and returns each finished one tagged with the policy version that acted. The learner is the
driver process (inside `LearnRun`, so the home, database, checkpoints, curve and progress bar all work as
in the single-process loop): it keeps `inflight` episode calls queued on every actor, turns the finished
episodes into PPO batches (`ppo_batch`, the single loop's batch building) and updates every module,
encoder included. After every `sync_every` updates it puts the policy's weights into Ray's object store
once (`ray.put`); each call carries that reference, and an actor fetches and loads it only when the
version changed. A version is the number of updates behind the weights.

Off-policy correction: PPO's ratio clipping against the behaviour policy's log-probability, stored with
every step by the actor that acted. An episode acted by version v and learned from at version u has lag
u - v (recorded: `status()["policy_lag"]`). With one learner and a few desktops the lag is a version or
two, the same order as the staleness PPO already handles within an update (its second epoch learns from
steps the first epoch's weights did not act), so the ratio stays near 1 and the clip bounds the step just
as it does there. V-trace also corrects the value targets, which matters when the lag reaches tens of
versions (IMPALA's hundreds of actors per learner); this setup does not produce that, and `bench scale`
measures it.

An actor whose process dies (its display or app crashed, or it was killed) is restarted by Ray
(`max_restarts`); its unfinished episode was never sent, so it is simply dropped and nothing else is lost.
An error inside an episode ends the actor's process on purpose, so that Ray restarts it with a fresh
desktop. A watchdog process per actor stops the actor's Xvfb and app when the actor dies without closing
them (Ray kills a worker's process, not the session-leader children it started).

Memory and tools stay in the learner's database: `LearnRun` records every episode and writes successes to
episodic memory there. With recall on (the default), the actors get their memory lookups from the
learner's database through a `MemoryService` on the learner's machine (read-only): one lookup per
instruction per episode, not per step; the actor matches the recalled targets on its own screen. The policy
does not use the tool library yet, so the actors receive no tools.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter, deque
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np
import torch

from agent.learner import (Agent, AgentConfig, EpisodeResult, OutcomeReplay, SelfImitationBuffer, Step, greedy_episodes,
                           ppo_batch)
from agent.policy import History
from agent.recall import Recall
from squirrel import interrupt
from squirrel.errors import UserError
from trainer.ppo import ppo_update


@dataclass
class ScaleConfig:
    """How the actors run (`--actors N`)."""

    inflight: int = 2
    """Episode calls queued per actor (2: it starts the next while the learner takes the last; more: more lag)."""
    sync_every: int = 1
    """Updates between weight broadcasts."""
    max_restarts: int = 20
    """Times Ray restarts a dead actor before giving it up."""
    actor_cpus: float = 1.0
    """CPUs Ray reserves per actor (on a cluster, actors spread over the nodes' CPUs)."""
    object_store_mb: int = 512
    """Object store of a local Ray (weights and episodes in transit)."""


class Episode(NamedTuple):
    """One finished episode, as an actor sends it."""

    actor: int
    pid: int  # the actor process that acted (a new one after a restart)
    node: str  # the IP address of its machine
    version: int  # policy version that acted
    task: str
    seed: int
    instruction: str
    steps: list  # list[Step]
    final: tuple  # (value, state) of the final observation
    success: bool | None
    ret: float
    seconds: float  # reset to last step
    ask_person: bool = False  # the outcome is a person's: not learned from here
    recalled: int = 0  # targets recalled from the learner's memory for the episode


# -- the actor's watchdog ---------------------------------------------------------------------------------

_WATCHDOG = r"""
import os, signal, sys, time
parent, pidfile = int(sys.argv[1]), sys.argv[2]
while os.getppid() == parent and os.path.exists(pidfile):
    time.sleep(0.5)
if os.path.exists(pidfile):  # the actor died without closing its desktop
    def start(pid):
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[19]
        except OSError:
            return None
    with open(pidfile) as f:
        procs = [(int(p), s) for p, s in (line.split() for line in f if line.strip())]
    for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 0.0)):
        live = [p for p, s in procs if start(p) == s]
        for p in live:
            try:
                os.kill(p, sig)
            except OSError:
                pass
        deadline = time.time() + wait
        while time.time() < deadline and any(start(p) == s for p, s in procs):
            time.sleep(0.05)
    os.remove(pidfile)
"""


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state, ppid, ...; starttime at index 19)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    st = _proc_stat(pid)
    return st is not None and st[0] != "Z"


def descendants(pid: int) -> list[tuple[int, str]]:
    """(pid, start time) of every process below `pid`."""
    children: dict[int, list[tuple[int, str]]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _proc_stat(int(name))
            if st is not None:
                children.setdefault(int(st[1]), []).append((int(name), st[19]))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child[0])
    return out


class _Watchdog:
    """A small process that stops this process's children (Xvfb, app, browser) if this process dies."""

    def __init__(self):
        fd, self.pidfile = tempfile.mkstemp(prefix="squirrel-actor-", suffix=".pids")
        os.close(fd)
        self.proc = subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(os.getpid()), self.pidfile],
                                     start_new_session=True, stdin=subprocess.DEVNULL)
        self.refreshed = 0.0

    def refresh(self, every_s: float = 5.0) -> None:
        """Record the processes to stop (apps may restart their processes, so this runs now and then)."""
        if time.monotonic() - self.refreshed < every_s:
            return
        procs = [p for p in descendants(os.getpid()) if p[0] != self.proc.pid]
        tmp = self.pidfile + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(f"{p} {s}\n" for p, s in procs)
        os.replace(tmp, self.pidfile)
        self.refreshed = time.monotonic()

    def close(self) -> None:
        """The desktop was closed properly: nothing to stop (and no need to wait for the watchdog's next look)."""
        try:
            os.remove(self.pidfile)
        except OSError:
            pass
        self.proc.terminate()  # without its pidfile it would only exit, up to 0.5 s later
        self.proc.wait()


# -- an actor ---------------------------------------------------------------------------------------------

class EpisodeActor:
    """Acts whole episodes on its own desktop with its own copy of the policy (a Ray actor)."""

    def __init__(self, index: int, tasks: list[str], agent_cfg: AgentConfig, seed: int, memory=None):
        from agent.learn_cli import make_task_env

        torch.set_num_threads(1)
        torch.manual_seed(seed * 1000 + index * 7919 + os.getpid())  # a restarted actor samples afresh
        import ray

        self.index, self.version = index, -1
        self.node = ray.util.get_node_ip_address()
        self.watchdog = _Watchdog()
        self.env = make_task_env(tasks, None)
        self.watchdog.refresh(0)
        self.agent = Agent(replace(agent_cfg, threads=1))
        if memory is not None:  # recall, with lookups in the learner's memory
            self.agent.recall = RemoteRecall(memory, agent_cfg.memory_k)

    def episode(self, weights: list, version: int, task: str, seed: int) -> Episode:
        """One whole episode with the policy of `version` (weights[0]: its ObjectRef, fetched only when new)."""
        try:
            return self._episode(weights, version, task, seed)
        except Exception:  # the display or app is broken: die, and Ray restarts this actor with a fresh desktop
            traceback.print_exc()
            sys.stderr.flush()
            os._exit(1)

    def evaluate(self, weights: list, version: int, task: str, seeds: list[int]) -> tuple[int, int]:
        """Greedy episodes on fixed seeds, not learned from: (successes, env steps)."""
        try:
            self._load(weights, version)
            return greedy_episodes(self.agent, self.env, task, seeds)
        except Exception:
            traceback.print_exc()
            sys.stderr.flush()
            os._exit(1)

    def _load(self, weights: list, version: int) -> None:
        import ray

        if version != self.version:
            state = ray.get(weights[0])
            self.agent.policy.load_state_dict({k: torch.tensor(v) for k, v in state.items()})
            self.version = version

    def _episode(self, weights: list, version: int, task: str, seed: int) -> Episode:
        self._load(weights, version)
        t0 = time.perf_counter()
        if isinstance(self.agent.recall, RemoteRecall):
            self.agent.recall.cache.clear()  # look up afresh each episode: the memory may have grown
        obs, info = self.env.reset(seed=seed, options={"task": task})
        ask = bool(info.get("ask_person"))
        steps, ret, instruction = [], 0.0, obs["instruction"]
        self.agent.goal_text.start(obs["screen"], instruction)
        hist = History()
        while True:
            ob = self.agent.obs_batch(obs, hist)
            a, logp, value, state, af, _, match = self.agent.act(ob)
            next_obs, reward, terminated, truncated, info = self.env.step(self.agent.policy.to_action(a))
            changed = not np.array_equal(next_obs["screen"], obs["screen"])
            ended = terminated or (truncated and self.agent.cfg.timeout_is_failure)
            shaped = (self.agent.learning_reward(self.env, reward, terminated, info)
                      + self.agent.goal_text.shape(next_obs["screen"], ended))
            steps.append(Step(obs["screen"], obs["instruction"], a, float(logp[0]), float(value[0]), float(shaped),
                              bool(terminated), bool(truncated), state[0], af[0], changed, match[0] if match else None,
                              success=info.get("success"), history=ob.history[0] if ob.history else None))
            ret += float(reward)
            hist.after(a, changed)
            obs = next_obs
            if terminated or truncated:
                break
        # the final observation: its value (bootstrap on truncation) and embedding (world-model target)
        _, _, v_final, s_final, *_ = self.agent.act(self.agent.obs_batch(obs, hist))
        self.watchdog.refresh()
        rec = self.agent.recall
        recalled = sum(len(c) for c, *_ in rec.cache.values()) if isinstance(rec, RemoteRecall) else 0
        final = (float(v_final[0]), s_final[0])
        return Episode(self.index, os.getpid(), self.node, version, task, seed, instruction, steps, final,
                       info.get("success"), ret, time.perf_counter() - t0, ask, recalled)

    def close(self) -> None:
        self.env.close()
        self.watchdog.close()


# -- memory lookups from the learner -------------------------------------------------------------------------

class MemoryService:
    """The learner's episodic memory, read-only, answering the actors' recall lookups (a Ray actor placed on
    the learner's machine, beside its database; SQLite's WAL lets it read while the learner writes)."""

    def __init__(self, home: str, k: int):
        from memory.db import AgentDB
        from memory.episodic import EpisodicMemory

        self.db = AgentDB.open(home, readonly=True)
        self.memory, self.k, self.lookups = EpisodicMemory(self.db, key_dim=384), k, 0

    def lookup(self, instruction: str, key: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(M,16,48,3) uint8 crops, (M,) weights and (M,MEM_F) token features of the nearest remembered successes."""
        from agent.recall import Recall

        self.lookups += 1
        return Recall(self.memory, self.k).lookup(instruction, key)  # a fresh Recall: no cache across writes

    def count(self) -> int:
        return self.lookups


class RemoteRecall(Recall):
    """Recall in an actor: the lookup goes to the learner's `MemoryService`, the matching on screen stays here."""

    def __init__(self, service, k: int):
        super().__init__(None, k)
        self.service, self.cache = service, {}

    def lookup(self, instruction: str, key: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        import ray

        if instruction not in self.cache:  # one lookup per instruction per episode (the actor clears it)
            self.cache[instruction] = ray.get(self.service.lookup.remote(instruction, np.asarray(key, np.float32)))
        return self.cache[instruction]

    def remember(self, *args, **kwargs) -> None:
        raise RuntimeError("actors do not write memory: the learner does")


# -- Ray --------------------------------------------------------------------------------------------------

def _check_reachable(address: str) -> None:
    """A cluster address that nothing answers on makes ray.init wait for minutes: say so at once."""
    if address == "auto":
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--ray-address {address!r}: expected HOST:PORT (as `ray start --head` prints), "
                        "ray://HOST:PORT or auto")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as e:
        raise UserError(f"no Ray cluster answers at {address} ({e.strerror or e}); start one with `ray start --head` "
                        "or check the address") from None


def connect(address: str, actors: int, cfg: ScaleConfig) -> bool:
    """Join the cluster at `address`, or start a small local Ray. True when Ray was started here."""
    try:
        import ray
    except ImportError:
        raise UserError("ray is not installed; run scripts/setup (it installs the project's dependencies)") from None
    import logging

    if ray.is_initialized():
        return False
    if address:
        _check_reachable(address)
    import signal

    on_term = signal.getsignal(signal.SIGTERM)  # ray.init replaces it with sys.exit: keep ours (checkpoint, then exit)
    try:
        if address:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True)
        else:  # a private instance on this machine, small: no dashboard, a modest object store
            ray.init(address="local", num_cpus=max(os.cpu_count() or 1, int(np.ceil(actors * cfg.actor_cpus))),
                     object_store_memory=cfg.object_store_mb * 2**20, include_dashboard=False,
                     logging_level=logging.WARNING, log_to_driver=True)
    except Exception as e:  # noqa: BLE001 - Ray raises many kinds; the user needs one line
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        where = f"join the Ray cluster at {address}" if address else "start a local Ray instance"
        raise UserError(f"could not {where}: {msg}") from None
    finally:
        if callable(on_term):
            signal.signal(signal.SIGTERM, on_term)
    return not address


# -- the learner ------------------------------------------------------------------------------------------

@dataclass
class ActorStats:
    episodes: int = 0
    steps: int = 0
    restarts: int = 0
    dropped: int = 0  # episodes lost with the actor's process (the one it was acting)
    recalled: int = 0  # episodes that recalled targets from the learner's memory
    pid: int = 0
    node: str = ""
    version: int = -1  # the last version it acted with
    dead: str = ""  # why, once Ray gave it up
    restarting: bool = False  # its process died; Ray is bringing it back
    retry_at: float = 0.0  # when to send it a call again (monotonic)

    def __post_init__(self):
        self.recent: deque = deque(maxlen=50)  # (time received, steps)

    def rate(self) -> float:
        """Env steps per second over the recent episodes."""
        if len(self.recent) < 2:
            return 0.0
        dt = self.recent[-1][0] - self.recent[0][0]
        return sum(n for _, n in list(self.recent)[1:]) / dt if dt > 0 else 0.0


class DistributedLearner:
    """The learner end: the same interface `LearnRun` uses on `Learner` (counters, callbacks, run)."""

    def __init__(self, agent: Agent, tasks: list[str], actors: int, address: str = "", scale: ScaleConfig | None = None,
                 seed: int = 0):
        if actors < 1:
            raise UserError("--actors must be at least 1 to scale out (0 runs the single-process loop)")
        self.agent, self.tasks, self.cfg = agent, list(tasks), agent.cfg
        self.scale = scale or ScaleConfig()
        self.rng = np.random.default_rng(seed)
        self.sil = SelfImitationBuffer(self.cfg.sil_capacity, self.cfg.gamma, self.cfg.replay == "balanced")
        self.outcomes = OutcomeReplay.for_config(self.cfg)
        self.env_steps = self.episodes = self.updates = 0
        self.buffer: list[Step] = []
        self._finals: dict[int, tuple[float, torch.Tensor]] = {}
        self._versions: list[int] = []  # the version that acted each buffered step
        self.err_mean = 1e-2
        self.last_losses: dict[str, float] = {}
        self.episode_callbacks: list = []
        self.update_callbacks: list = []
        self.pending: dict = {}  # (LearnRun reads it: no episode waits for a person's verdict here)
        self.stop_requested = False
        self._task_i = 0
        self.lags: Counter = Counter()  # policy lag (versions) -> learned steps
        self.version, self._weights = -1, None
        self.broadcasts, self.broadcast_bytes, self.broadcast_s = 0, 0, 0.0
        self.update_s: list[float] = []
        self._calls: dict = {}  # ObjectRef -> actor index
        connect(address, actors, self.scale)  # (a one-line error when Ray cannot start or the cluster is unreachable)
        import ray

        self.t0 = time.time()
        cfg = replace(self.cfg, encoder=_abs_if_file(self.cfg.encoder), pretrained=_abs_if_file(self.cfg.pretrained))
        remote = ray.remote(EpisodeActor).options(
            num_cpus=self.scale.actor_cpus, max_restarts=self.scale.max_restarts, max_task_retries=0,
            scheduling_strategy="SPREAD")
        self.memory = None
        if self.cfg.memory and agent.recall is not None:  # the actors' recall looks up the memory here
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
            service = ray.remote(MemoryService).options(num_cpus=0, scheduling_strategy=here, max_restarts=-1)
            self.memory = service.remote(str(agent.recall.memory.db.home), self.cfg.memory_k)
        self.stats = [ActorStats() for _ in range(actors)]
        self.handles = [remote.remote(i, self.tasks, cfg, seed, self.memory) for i in range(actors)]

    # -- LearnRun's interface ---------------------------------------------------------------------------
    def counters(self) -> dict:
        return {"env_steps": self.env_steps, "episodes": self.episodes, "updates": self.updates, "task_i": self._task_i}

    def load_counters(self, c: dict) -> None:
        self.env_steps, self.episodes, self.updates = c["env_steps"], c["episodes"], c["updates"]
        self._task_i = c.get("task_i", 0)

    @property
    def decisions(self) -> int:
        return self.env_steps  # the actors call no tools (--agent.tools is refused with --actors): one each

    def run(self, total_steps: int) -> None:
        """Gather and learn until `total_steps` env steps in all (counting earlier runs when resumed)."""
        import ray
        from ray.exceptions import ActorDiedError, RayActorError

        if self.version != self.updates:
            self._broadcast()
        for i, st in enumerate(self.stats):
            if not (st.dead or st.restarting):
                self._top_up(i)
        while self.env_steps < total_steps and not self.stop_requested:
            interrupt.check()
            now = time.monotonic()
            for i, st in enumerate(self.stats):
                if st.restarting and now >= st.retry_at and i not in self._calls.values():
                    self._top_up(i, 1)  # one call, which waits while Ray brings the actor back
            if not self._calls:
                if all(st.dead for st in self.stats):
                    reasons = "; ".join(f"actor {i}: {st.dead}" for i, st in enumerate(self.stats))
                    raise UserError(f"every actor died and Ray gave them up ({reasons[:400]})")
                time.sleep(0.2)
                continue
            ready, _ = ray.wait(list(self._calls), num_returns=1, timeout=1.0)
            for ref in ready:
                i = self._calls.pop(ref, None)
                if i is None:  # a call of an actor already known to have died
                    continue
                st = self.stats[i]
                try:
                    ep = ray.get(ref)
                except ActorDiedError as e:  # restarts used up, or its constructor failed: give it up
                    st.dead, st.restarting = _last_line(e), False
                    self._forget_calls(i)
                    continue
                except RayActorError:  # its process died: Ray restarts it; the episode it was acting is dropped
                    if not st.restarting:
                        st.dropped += 1
                    st.restarting, st.retry_at = True, time.monotonic() + 1.0
                    self._forget_calls(i)
                    continue
                self._receive(ep)
                self._top_up(i)
                if len(self.buffer) >= self.cfg.rollout:
                    self._update()

    def evaluate(self, task: str, episodes: int, seed: int = 1_000_000) -> tuple[float, int]:
        """Greedy episodes of `task` on fixed seeds, spread over the live actors with the current weights:
        (success rate over the episodes that finished, env steps). Nothing is learned from them."""
        import ray
        from ray.exceptions import RayActorError

        if self.version != self.updates:
            self._broadcast()
        live = [i for i, st in enumerate(self.stats) if not (st.dead or st.restarting)]
        if not live:
            return 0.0, 0
        seeds = [seed + k for k in range(episodes)]
        calls = [self.handles[i].evaluate.remote(self._weights, self.version, task, seeds[j::len(live)])
                 for j, i in enumerate(live)]
        wins = steps = done = 0
        for j, call in enumerate(calls):
            try:
                w, n = ray.get(call)
            except RayActorError:  # that actor died meanwhile: its share is missing (the episode loop sees it)
                continue
            wins, steps, done = wins + w, steps + n, done + len(seeds[j::len(live)])
        return wins / max(done, 1), steps

    def status(self) -> dict:
        """The actors and their rates, the learner's rate and the policy lag (the run's JSON curve shows it)."""
        el = max(time.time() - self.t0, 1e-6)
        lags = np.repeat(np.array(list(self.lags.keys()), dtype=float), list(self.lags.values())) if self.lags else None
        return {
            "actors": [{"actor": i, "pid": s.pid, "node": s.node, "episodes": s.episodes, "steps": s.steps,
                        "steps_per_s": round(s.rate(), 2), "restarts": s.restarts, "dropped_episodes": s.dropped,
                        "recalled_episodes": s.recalled, "version": s.version, "alive": not s.dead,
                        "restarting": s.restarting, **({"dead": s.dead} if s.dead else {})}
                       for i, s in enumerate(self.stats)],
            "version": self.version, "updates_per_s": self.updates / el,
            "update_s_mean": float(np.mean(self.update_s)) if self.update_s else None,
            "policy_lag": None if lags is None else {"median": float(np.median(lags)), "mean": float(lags.mean()),
                                                      "max": int(lags.max()), "steps": int(len(lags))},
            "broadcasts": self.broadcasts, "broadcast_mb": self.broadcast_bytes / 2**20,
            "broadcast_put_ms": 1e3 * self.broadcast_s / max(self.broadcasts, 1),
            "memory_lookups": self._memory_lookups(),
        }

    def _memory_lookups(self) -> int | None:
        import ray

        if self.memory is None:
            return None
        try:
            return ray.get(self.memory.count.remote(), timeout=5)
        except Exception:  # noqa: BLE001 - a figure for the status only
            return None

    def close(self) -> None:
        """Close every actor's desktop, then leave Ray (and stop it when it was started here)."""
        import ray

        if not ray.is_initialized():
            return
        for ref in self._calls:  # episodes queued behind the one each actor is acting: never start them
            try:
                ray.cancel(ref)
            except Exception:  # noqa: BLE001 - already finished, or its actor is gone
                pass
        closing = [h.close.remote() for h, s in zip(self.handles, self.stats) if not s.dead]
        try:
            ray.wait(closing, num_returns=len(closing), timeout=30)
        finally:
            for h in self.handles + ([self.memory] if self.memory is not None else []):
                ray.kill(h, no_restart=True)
            self._calls.clear()
            _stop_monitor_now()
            ray.shutdown()

    # -- parts ------------------------------------------------------------------------------------------
    def _top_up(self, i: int, n: int | None = None) -> None:
        while sum(1 for j in self._calls.values() if j == i) < (n or self.scale.inflight):
            task = self.tasks[self._task_i % len(self.tasks)]
            self._task_i += 1
            seed = int(self.rng.integers(0, 2**31 - 1))
            self._calls[self.handles[i].episode.remote(self._weights, self.version, task, seed)] = i

    def _forget_calls(self, i: int) -> None:
        """Stop waiting for an actor's queued calls (they fail with it; none of them had started)."""
        self._calls = {r: j for r, j in self._calls.items() if j != i}

    def _broadcast(self) -> None:
        import ray

        t = time.perf_counter()
        state = {k: v.detach().cpu().numpy() for k, v in self.agent.policy.state_dict().items()}
        self._weights = [ray.put(state)]  # in a list, so a call carries the reference unfetched
        self.broadcast_s += time.perf_counter() - t
        self.broadcast_bytes = sum(v.nbytes for v in state.values())
        self.version = self.updates
        self.broadcasts += 1

    def _receive(self, ep: Episode) -> None:
        s = self.stats[ep.actor]
        if s.restarting or (s.pid and ep.pid != s.pid):
            s.restarts += 1
        s.restarting = False
        s.pid, s.node, s.version = ep.pid, ep.node, ep.version
        s.episodes, s.steps, s.recalled = s.episodes + 1, s.steps + len(ep.steps), s.recalled + (ep.recalled > 0)
        s.recent.append((time.time(), len(ep.steps)))
        self.env_steps += len(ep.steps)
        self.episodes += 1
        if not ep.ask_person:
            self.buffer.extend(ep.steps)
            self._finals[len(self.buffer) - 1] = ep.final
            self._versions.extend([ep.version] * len(ep.steps))
            if ep.success:
                self.sil.add_episode(ep.steps, ep.task)
            if self.outcomes is not None:
                self.outcomes.add_episode(ep.steps)
        res = EpisodeResult(task=ep.task, success=ep.success, ret=ep.ret, steps=len(ep.steps), decisions=len(ep.steps), env_steps=self.env_steps,
                            episode=self.episodes, seed=ep.seed, instruction=ep.instruction, transitions=ep.steps)
        if any(cb(res) is False for cb in self.episode_callbacks):
            self.stop_requested = True

    def _update(self) -> None:
        batch, self.err_mean = ppo_batch(self.agent, self.buffer, self._finals, None, self.err_mean)
        self.lags.update(self.updates - v for v in self._versions)
        t0 = time.perf_counter()
        self.last_losses = ppo_update(self.agent, self.agent.world_model, self.agent.optimizer, batch, self.cfg.ppo,
                                      self.sil.sample if len(self.sil) >= self.cfg.ppo.sil_batch else None,
                                      map_sampler=self.outcomes.sample if self.outcomes is not None else None)
        self.agent.plasticity()
        self.last_losses["update_s"] = time.perf_counter() - t0
        self.update_s.append(self.last_losses["update_s"])
        self.updates += 1
        self.buffer, self._finals, self._versions = [], {}, []
        if self.updates % self.scale.sync_every == 0:
            self._broadcast()
        info = dict(self.last_losses, updates=self.updates, env_steps=self.env_steps)
        if any(cb(info) is False for cb in self.update_callbacks):
            self.stop_requested = True


def _stop_monitor_now() -> None:
    """Ray's autoscaler monitor ignores the SIGTERM of `ray.shutdown`, which waits a full second before it SIGKILLs it
    (measured: 1.0 of a 1.4 s shutdown). It scales clusters, so a Ray started here has no use for it: kill it first.
    (Ray's internals: if they change, the shutdown only takes that second again.)"""
    try:
        import ray

        node = ray._private.worker._global_node
        for info in node.all_processes.get("monitor", []) if node is not None and node.is_head() else []:
            info.process.kill()
    except Exception:  # noqa: BLE001 - a speed-up only
        pass


def _abs_if_file(path: str) -> str:
    """Actors may run in another directory: a local file the config names is passed by absolute path."""
    return os.path.abspath(path) if path and os.path.exists(path) else path


def _last_line(e: Exception) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[-1][:200] if lines else type(e).__name__
