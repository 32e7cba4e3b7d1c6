"""The agent's own process, driven by the panel (Qt-free; torch and the GIL stay out of the UI).

    python -m gui.agent_process CMD_FD EVT_FD

Two pipes carry pickled tuples (`multiprocessing.connection.Connection`). The first command is
("start", {"argv": [...squirrel learn options...], "stop_file": path, "fps": 15}); then:

    panel -> agent: ("pause",) ("resume",) ("stop",) ("assign", [task, ...]) ("thumbs", episode_id, good)
                    ("takeover", on) ("demo_action", {"type": "click", "x": .., "y": ..})
    agent -> panel: ("status", state, detail)  state: starting | running | paused | stopped | finished
                    ("started", info) ("progress", info) ("frame", info) ("assigned", tasks)
                    ("verdict", episode_id, good) ("demo", info) ("saved", env_steps) ("error", text, traceback)

With `--actors N` (Ray, agent/distributed.py) this process is the learner only: the actors act on their own
displays, so there are no frames and no takeover; progress carries `"scale"` (the actors and their rates,
`DistributedLearner.status()`, at most every `SCALE_EVERY_S`); pause holds the learner between episodes, so no
new episode is sent to an actor until resumed (each finishes the ones it was sent); stop ends the learner's
loop, saves, closes the actors' desktops and shuts Ray down.

Everything the env or the learner touches happens on the main thread; the command thread only raises
flags (stop, pause, takeover) and queues the rest. Stop: the gate's stop flag (a file the panel
touches) refuses every action at once, and the loop ends before its next step, saves a checkpoint and
exits. If the loop is busy (an update takes seconds with a real encoder), the command thread
interrupts it after `INTERRUPT_AFTER_S`, never in the middle of an action. SIGTERM does the same; the
panel's SIGKILL is the last resort.
"""

from __future__ import annotations

import os
import queue
import signal
import sys
import threading
import time
import traceback
from collections import OrderedDict
from multiprocessing.connection import Connection

import gymnasium as gym
import numpy as np

from squirrel import interrupt

INTERRUPT_AFTER_S = 0.3  # a stop that the loop has not obeyed by then interrupts it
SCALE_EVERY_S = 0.5  # the actors' figures go with progress at most this often


class Stopped(Exception):
    """The panel asked the agent to stop: leave the loop without acting again."""


def make_env(tasks: list[str], display: str | None, target_window: str = ""):
    """The gated env the tasks run on: the fake desktop, or the playground on a (virtual) display (one the
    agent did not start needs `target_window`: every action is confined to it)."""
    from agent.learn_cli import make_task_env
    from gui.tasks import check_assignable

    err = check_assignable(tasks)
    if err:
        from squirrel.errors import UserError

        raise UserError(err)
    return make_task_env(tasks, display, target_window)


class PanelEnv(gym.Wrapper):
    """Around the gate: holds before each action while paused, stops before acting, shows each
    intended action to the panel, and runs a person's demonstration between the agent's episodes."""

    def __init__(self, env, worker: "AgentWorker"):
        super().__init__(env)
        self.worker = worker
        self.obs = None

    def reset(self, **kwargs):
        w = self.worker
        w.hold()
        while w.takeover.is_set():
            w.demonstrate(self.env, (kwargs.get("options") or {}).get("task"))
            w.hold()
        with w.acting():
            self.obs, info = self.env.reset(**kwargs)
        task = (kwargs.get("options") or {}).get("task", "")
        w.show(self.obs, None, None, task)
        return self.obs, info

    def step(self, action):
        w = self.worker
        w.hold()
        w.show(self.obs, action.to_dict(), w.heat(), None)
        with w.acting():
            out = self.env.step(action)
        self.obs = out[0]
        return out


class AgentWorker:
    def __init__(self, cmd: Connection, evt: Connection):
        self.cmd, self.evt = cmd, evt
        self._send_lock = threading.Lock()
        self.inbox: queue.Queue = queue.Queue()
        self.paused, self.stopping, self.takeover, self.done = (threading.Event() for _ in range(4))
        self.finishing = threading.Event()  # the loop is over: saving, closing (never interrupt that)
        self._acting = threading.Lock()  # held while an action is under way (never interrupt that either)
        self.run = self.gate = None
        self.actors = 0  # Ray actors acting for this learner (0: the single-process loop, on this process's desktop)
        self._last_scale = 0.0
        self.fps = 15.0
        self.live = None  # (frame, action, heat, task, instruction, demo): replaced whole, read by the feed thread
        self.rect = (0, 0, 0, 0)
        self.display = ""
        self._logits = None
        self._task = ""
        self.recent: OrderedDict = OrderedDict()  # database episode id -> EpisodeResult (for thumbs up)
        self._episodes: list[dict] = []
        self._losses: dict | None = None
        self._last_flush = 0.0

    # -- talking to the panel ---------------------------------------------------------------------
    def send(self, *msg) -> None:
        with self._send_lock:
            try:
                self.evt.send(msg)
            except (OSError, ValueError):  # the panel is gone: stop
                self.stopping.set()

    def error(self, text: str, tb: str = "") -> None:
        self.send("error", text, tb)

    def _commands(self) -> None:
        while True:
            try:
                msg = self.cmd.recv()
            except (EOFError, OSError):  # the panel is gone
                msg = ("stop",)
            kind = msg[0]
            if kind == "stop":
                self.stopping.set()
                if self.gate is not None:
                    self.gate.stop.set()
                if self.run is not None and hasattr(self.run, "learner"):
                    self.run.learner.stop_requested = True
                self.inbox.put(msg)
                self._interrupt_if_busy()
                return
            if kind == "pause":
                self.paused.set()
            elif kind == "resume":
                self.paused.clear()
            elif kind == "takeover" and self.actors:
                self.error("no takeover with Ray actors: they act on their own displays (start with 0 actors)")
            elif kind == "takeover":
                (self.takeover.set if msg[1] else self.takeover.clear)()
                self.inbox.put(msg)
            else:
                self.inbox.put(msg)

    def acting(self):
        """Held around every env call: a stop's interrupt waits for it (no key left pressed, no half drag)."""
        return self._acting

    def _interrupt_if_busy(self) -> None:
        """On the command thread after a stop: if the loop has not wound up within INTERRUPT_AFTER_S (it is in
        an update, or still loading), raise KeyboardInterrupt in it, outside any action."""
        if self.finishing.wait(INTERRUPT_AFTER_S):
            return
        with self._acting:
            if not self.finishing.is_set():
                # a real SIGINT to the main thread: it also cuts short a blocking call (a sleep, a wait)
                signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    # -- on the main thread, between steps ----------------------------------------------------------
    def hold(self) -> None:
        """Apply queued commands; wait here while paused; raise Stopped when stopping."""
        self.drain()
        if self.paused.is_set() and not self.stopping.is_set() and not self.takeover.is_set():
            self.send("status", "paused", "")
            while self.paused.is_set() and not self.stopping.is_set() and not self.takeover.is_set():
                self.drain(timeout=0.05)
                self.flush(0.5)
            if not self.stopping.is_set():
                self.send("status", "running", "")
        if self.stopping.is_set():
            raise Stopped

    def drain(self, timeout: float = 0.0) -> None:
        try:
            msg = self.inbox.get(timeout=timeout) if timeout else self.inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            self.apply(msg)
            try:
                msg = self.inbox.get_nowait()
            except queue.Empty:
                return

    def apply(self, msg: tuple) -> None:
        kind = msg[0]
        try:
            if kind == "assign":
                self.assign(list(msg[1]))
            elif kind == "thumbs":
                self.verdict(int(msg[1]), bool(msg[2]))
            elif kind == "demo_action":
                self.error("not taking over: that action was not sent")
        except Exception as e:  # noqa: BLE001 - a bad command is reported, the agent carries on
            self.error(f"{kind}: {e}", traceback.format_exc())

    def assign(self, tasks: list[str]) -> None:
        from gui.tasks import check_assignable, env_kind, same_desktop

        err = check_assignable(tasks)
        if not err and not same_desktop(tasks, self.run.tasks):
            err = (f"{', '.join(tasks)} need another desktop than the {env_kind(self.run.tasks[0])} one the agent "
                   "runs: stop the agent, then start it with these")
        if not err and self.actors and env_kind(tasks[0]) == "fake" and set(tasks) != set(self.run.tasks):
            err = (f"the Ray actors' fake desktops run {', '.join(sorted(set(self.run.tasks)))} only: stop the agent, "
                   "then start it with these")
        if err:
            self.error(f"assignment refused: {err}")
            return
        self.run.learner.tasks = list(tasks)
        self.run.tasks = list(tasks)
        self.send("assigned", list(tasks))

    def verdict(self, episode_id: int, good: bool) -> None:
        """A person's thumbs up/down: the episode's outcome in the database. A pending one ("ask the person")
        is then learned from like any outcome; on a decided one of this run, a thumbs up is imitated."""
        was_pending = episode_id in self.run._pending_db
        if not self.run.judge(episode_id, good):
            self.error(f"thumbs: no episode {episode_id} in this agent's database")
            return
        r = self.recent.get(episode_id)
        if good and not was_pending and r is not None and r.transitions:
            self.run.learner.sil.add_episode(r.transitions, r.task)
        self.send("verdict", episode_id, good)

    def heat(self) -> np.ndarray | None:
        """The click-point probabilities of the decision just taken, over the encoder's patch grid."""
        if self._logits is None:
            return None
        import torch

        gh, gw = self.run.agent.policy.grid
        return torch.softmax(self._logits.float(), 0).reshape(gh, gw).numpy()

    def show(self, obs, action: dict | None, heat, task: str | None, demo: bool = False) -> None:
        if task:
            self._task = task
            self.rect = tuple(self.gate.unwrapped.window_rect())
        self.live = (obs["screen"], action, heat, self._task, obs["instruction"], demo)

    def flush(self, every: float = 0.1) -> None:
        """Send the episodes and losses gathered since the last progress event (at most ~10 a second)."""
        now = time.monotonic()
        if now - self._last_flush < every and not self._episodes:
            return
        if now - self._last_flush < 0.1:
            return
        L = self.run.learner
        info = {"episodes": self._episodes, "losses": self._losses, "env_steps": L.env_steps,
                "episodes_total": L.episodes, "updates": L.updates, "t": time.time()}
        if self.actors and (now - self._last_scale >= SCALE_EVERY_S or every == 0.0):
            info["scale"] = L.status()  # the actors and their rates, the learner's rate, the policy lag
            self._last_scale = now
        self.send("progress", info)
        self._episodes, self._losses, self._last_flush = [], None, now

    def on_episode(self, r) -> None:
        eid = r.db_id
        self.recent[eid] = r
        while len(self.recent) > 20:
            self.recent.popitem(last=False)
        self._episodes.append({"id": eid, "task": r.task, "success": r.success, "ret": r.ret, "steps": r.steps,
                               "env_steps": r.env_steps, "episode": r.episode, "instruction": r.instruction,
                               "ask": r.success is None})
        self.flush()
        if self.actors:  # between two episodes of the learner: a pause holds here, so nothing new goes to the actors
            self.hold()

    def on_update(self, info: dict) -> None:
        self._losses = {k: float(v) for k, v in info.items()}
        self.flush()

    # -- a person's demonstration ----------------------------------------------------------------------
    def demonstrate(self, env, task: str | None) -> None:
        """One episode acted by a person through the panel (and the gate), recorded as a demonstration;
        a successful one goes to the agent's self-imitation buffer."""
        from agent.actions import Action

        task = task or self.run.learner.tasks[0]
        seed = int(np.random.randint(0, 2**31 - 1))
        with self.acting():
            obs, _ = env.reset(seed=seed, options={"task": task})
        instruction = obs["instruction"]
        self.show(obs, None, None, task, demo=True)
        self.send("demo", {"state": "ready", "task": task, "instruction": instruction})
        trail, ret, success = [], 0.0, None
        while True:
            try:
                msg = self.inbox.get(timeout=0.05)
            except queue.Empty:
                self.flush(0.5)
                if self.stopping.is_set():
                    raise Stopped from None
                if not self.takeover.is_set():
                    self.send("demo", {"state": "cancelled", "task": task})
                    return
                continue
            if msg[0] != "demo_action":
                self.apply(msg)
                continue
            try:
                a = Action.from_dict(msg[1])
            except (KeyError, ValueError, TypeError) as e:
                self.error(f"demonstration: not an action: {msg[1]!r} ({e})")
                continue
            with self.acting():
                nxt, r, term, trunc, info = env.step(a)
            trail.append((obs, a, float(r), bool(term), bool(trunc)))
            ret += float(r)
            obs = nxt
            self.show(obs, a.to_dict(), None, task, demo=True)
            self.send("demo", {"state": "acted", "action": a.to_dict(), "refused": info.get("refused")})
            if term or trunc:
                success = info.get("success")
                break
        eid = self.record_demo(task, seed, instruction, trail, success, ret)
        self.send("demo", {"state": "done", "id": eid, "task": task, "success": success, "ret": ret, "steps": len(trail)})

    def record_demo(self, task, seed, instruction, trail, success, ret) -> int:
        import torch

        from agent.learner import ObsBatch, Step, _cat_actions
        from agent.policy import History

        agent, db = self.run.agent, self.run.db
        batches = [agent.policy.as_batch(a) for _, a, _, _, _ in trail]
        frames = [o["screen"] for o, *_ in trail]
        hist = History.along(frames, batches)
        with torch.no_grad():
            ev = agent.evaluate(ObsBatch(np.stack(frames), [instruction] * len(trail), history=hist), _cat_actions(batches))
        D = agent.policy.encoder.dim
        eid = db.begin_episode(task, seed, instruction, source="person")
        for i, (_, a, r, _, _) in enumerate(trail):
            d = dict(a.to_dict(), kind=a.type.name.lower())
            db.add_step(eid, i, d, r, target=ev.action_features[i, 9:9 + D].numpy() if "x" in d else None)
        db.end_episode(eid, bool(success), ret, len(trail))
        if success:
            self.run.learner.sil.add_episode([
                Step(o["screen"], instruction, b, 0.0, 0.0, r, term, trunc, ev.state[i], ev.action_features[i], True,
                     history=hist[i])
                for i, ((o, _, r, term, trunc), b) in enumerate(zip(trail, batches))], task)
        return eid

    # -- the live view's frames ------------------------------------------------------------------------
    def _feed(self) -> None:
        cap, period = None, 1.0 / max(self.fps, 1.0)
        nxt = time.monotonic()
        while not self.done.is_set():
            live = self.live
            if live is not None:
                frame, action, heat, task, instruction, demo = live
                if self.display:  # the display itself, between the agent's steps too
                    try:
                        if cap is None:
                            from perception.capture import ScreenCapture

                            cap = ScreenCapture(display=self.display)
                        frame = cap.grab(*self.rect)
                    except Exception as e:  # noqa: BLE001 - fall back to the agent's own frames
                        self.error(f"live view: cannot grab {self.display}: {e}; showing the agent's frames")
                        self.display = ""
                self.send("frame", {"frame": frame, "action": action, "heat": heat, "task": task,
                                    "instruction": instruction, "demo": demo, "rect": self.rect})
            nxt = max(nxt + period, time.monotonic())
            self.done.wait(nxt - time.monotonic())
        if cap is not None:
            cap.close()

    # -- the whole life of the process -----------------------------------------------------------------
    def serve(self) -> int:
        kind, opts = self.cmd.recv()
        assert kind == "start", kind
        self.fps = float(opts.get("fps", 15))
        threading.Thread(target=self._commands, name="commands", daemon=True).start()
        self.send("status", "starting", "")
        code, final = 0, "stopped"
        try:
            code, final = self._serve(opts)
        except KeyboardInterrupt:  # a stop (or SIGTERM) while loading
            self.finishing.set()
            code, final = 0, "stopped"
        except Exception as e:  # noqa: BLE001 - every error reaches the panel's window
            from squirrel.errors import UserError

            self.finishing.set()
            self.error(str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {e}", traceback.format_exc())
            code, final = 1, "stopped"
            self._save()
        finally:
            self.finishing.set()
            # Closing must finish, or displays and browsers outlive us: no more interrupts (SIGKILL still works).
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            self.done.set()
            self.send("status", final, "" if code == 0 else "with an error")  # it acts no more: say so now
            t = time.monotonic()
            if self.run is not None:
                self.run.close()  # with actors: their desktops, then Ray
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # (ray.shutdown resets SIGTERM to its default: dying)
            _shutdown_ray()  # if Ray was still starting when stopped, LearnRun had no learner to shut it down
            if self.actors:
                print(f"squirrel: closed the actors and Ray in {time.monotonic() - t:.2f} s", flush=True)
            if self.gate is not None:
                self.gate.close()
        return code

    def _serve(self, opts: dict) -> tuple[int, str]:
        from agent.gate import StopFlag
        from agent.learn_cli import LearnConfig, LearnRun
        from squirrel.config import parse
        from squirrel.errors import UserError

        try:
            cfg = parse(LearnConfig, list(opts["argv"]), "panel agent")
        except SystemExit:
            raise UserError(f"invalid agent options {' '.join(opts['argv'])!r} (details in the agent log)") from None
        tasks = [t for t in cfg.tasks.split(",") if t]
        self.actors = max(cfg.actors, 0)
        if self.actors:
            run = self._start_with_actors(cfg, tasks)
        else:
            self.gate = make_env(tasks, cfg.display or None, cfg.target_window)
            self.gate.stop = StopFlag(opts.get("stop_file") or None)
            self.gate.stop.clear()
            desktop = getattr(self.gate.unwrapped, "desktop", None)
            self.display = desktop.display if desktop is not None else ""
            self.run = run = LearnRun(cfg, tasks, env=PanelEnv(self.gate, self))
            run.start()

            def keep_logits(obs, out):
                self._logits = out.patch_logits[0]
                live = self.live  # the frame on show, still undecided: show where the policy would click
                if live is not None and live[1] is None and not live[5] and np.may_share_memory(obs.frames, live[0]):
                    self.live = (live[0], None, self.heat(), *live[3:])

            run.learner.decision_callbacks.append(keep_logits)
        run.learner.episode_callbacks.append(self.on_episode)
        run.learner.update_callbacks.append(self.on_update)
        L = run.learner
        self.send("started", {"env_steps": L.env_steps, "episodes": L.episodes, "updates": L.updates,
                              "resumed": L.env_steps > 0, "tasks": tasks, "display": self.display,
                              "grid": list(run.agent.policy.grid), "pid": os.getpid(), "actors": self.actors,
                              "ray_address": cfg.ray_address})
        self.send("assigned", tasks)
        if not self.actors:  # (with actors there is no screen here to show)
            threading.Thread(target=self._feed, name="feed", daemon=True).start()
        if self.stopping.is_set():
            raise_stop = True
        else:
            raise_stop = False
            self.send("status", "running", "")
        final = "stopped"
        try:
            if raise_stop:
                raise Stopped
            L.run(cfg.steps)
            final = "stopped" if self.stopping.is_set() else "finished"
        except Stopped:
            pass
        except RuntimeError:
            if self.gate is None or not self.gate.stop.is_set():  # the gate refuses to reset once stopped: a stop
                raise
        except KeyboardInterrupt:  # SIGTERM, or a stop that interrupted an update
            interrupt.handled()
        self.finishing.set()
        self._save()
        self._last_flush = 0.0
        self.flush(0.0)
        return 0, final

    def _start_with_actors(self, cfg, tasks: list[str]):
        """The learner end of a Ray run: no desktop here (each actor starts its own)."""
        from agent.learn_cli import LearnRun
        from gui.tasks import check_assignable
        from squirrel.errors import UserError

        err = check_assignable(tasks)
        if err:
            raise UserError(err)
        user = [t[len("user-"):] for t in tasks if t.startswith("user-")]
        if user:
            from agent.tasks.user import scan

            if any(spec is not None and spec.name in user and spec.checker["kind"] == "ask" for _, spec, _ in scan()):
                raise UserError(f"{tasks[0]} is judged by a person, which the Ray actors cannot wait for: start it with 0 "
                                "actors")
        self.run = run = LearnRun(cfg, tasks)
        term = signal.getsignal(signal.SIGTERM)
        try:
            run.start()  # (ray.init replaces the SIGTERM handler with its own sys.exit)
        finally:
            signal.signal(signal.SIGTERM, term)
        return run

    def _save(self) -> None:
        if self.run is None or not hasattr(self.run, "learner"):
            return
        for _ in range(2):  # an interrupt that raced the end of the loop may land in the first try
            try:
                self.run.save()
                self.send("saved", self.run.learner.env_steps)
                return
            except KeyboardInterrupt:
                continue
            except Exception as e:  # noqa: BLE001
                self.error(f"could not save a checkpoint: {e}", traceback.format_exc())
                return


def _shutdown_ray() -> None:
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _die_with_parent() -> None:
    """SIGTERM when the panel dies, even by SIGKILL (Linux PR_SET_PDEATHSIG)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def main(argv: list[str]) -> int:
    cmd_fd, evt_fd = int(argv[0]), int(argv[1])
    _die_with_parent()

    # SIGTERM and SIGINT raise KeyboardInterrupt, even if we were started with SIGINT ignored; one that lands in a
    # finalizer and is dropped still stops the learner at its next step (squirrel/interrupt.py), or a panel that died
    # would leave us learning on
    interrupt.install()
    worker = AgentWorker(Connection(cmd_fd, writable=False), Connection(evt_fd, readable=False))
    try:
        code = worker.serve()
    except KeyboardInterrupt:
        code = 0
    # Everything is committed and saved by now; interpreter shutdown can hang in native thread pools
    # (seen: ~1 s or more after the last Python frame), so leave at once.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main(sys.argv[1:])
