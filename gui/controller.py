"""Between the window and the agent process: commands go out, events come back on the UI thread and
update the plain models the views observe. Nothing here blocks: the agent is another process, the
database is read and written on the `Background` thread."""

from __future__ import annotations

import signal
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PySide6.QtCore import QObject, QTimer, Signal

from gui.background import Background
from gui.client import AgentProcess
from gui.models import ActorsModel, AgentState, CurveModel, Emitter, LiveModel
from gui.store import HomeStore
from gui.tasks import Assignment, check_assignable


@dataclass
class AgentOptions:
    """How the panel starts the agent (the `squirrel learn` options it passes on)."""

    steps: int = 10_000_000
    seed: int = 0
    display: str = ""
    checkpoint_every: int = 2000
    tensorboard: bool = True
    fps: float = 15.0
    actors: int = 0  # Ray actors, each acting on its own virtual display (0: the single-process loop)
    extra: tuple[str, ...] = ()  # more `squirrel learn` options, e.g. ("--agent.encoder", "path.json")
    grace_s: float = 1.0  # after a stop, SIGTERM after this long, SIGKILL `kill_after_s` later
    actors_grace_s: float = 6.0  # the same with Ray actors: their desktops are closed and Ray shut down first
    kill_after_s: float = 8.0  # time to close its desktop (Xvfb, the playground app, Chromium)


def take_actors(options: AgentOptions) -> None:
    """`--actors N` among the extra agent options becomes `options.actors` (the window's spin box shows it)."""
    extra, i = list(options.extra), 0
    while i < len(extra):
        arg = extra[i]
        value = arg.split("=", 1)[1] if arg.startswith("--actors=") else extra[i + 1] if arg == "--actors" and i + 1 < len(extra) else None
        if value is not None and value.isdigit():
            options.actors = int(value)
            del extra[i:i + (1 if "=" in arg else 2)]
        else:
            i += 1
    options.extra = tuple(extra)


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class Controller(QObject):
    _agent_event = Signal(object)  # emitted on the reader thread, delivered on the UI thread

    def __init__(self, home: str | Path, options: AgentOptions | None = None, parent: QObject | None = None):
        super().__init__(parent)
        self.options = options or AgentOptions()
        take_actors(self.options)
        self.state, self.curves, self.live = AgentState(), CurveModel(), LiveModel()
        self.actors = ActorsModel()
        self.assignment = Assignment()
        self.background = Background(self)
        self.store = HomeStore(home)
        self.proc: AgentProcess | None = None
        self.task_stats: dict[str, dict] = {}
        self.grid, self.patch = (13, 10), 16
        self.home_changed = Emitter()  # ()
        self.stats_changed = Emitter()  # ()
        self.episodes_arrived = Emitter()  # (episodes)
        self.demo_event = Emitter()  # (info)
        self._final = ""
        self._shut = False
        self._agent_event.connect(self._on_event)
        self._stats_timer = QTimer(self)
        self._stats_timer.timeout.connect(self.refresh_stats)
        self._stats_timer.start(2000)
        self.load_home()

    # -- the agent home ------------------------------------------------------------------------------------
    @property
    def home(self) -> Path:
        return self.store.home

    def set_home(self, home: str | Path) -> bool:
        if self.state.alive:
            self.state.add_message("error", "stop the agent before choosing another home")
            return False
        old = self.store
        self.background.run(old.close)
        self.store = HomeStore(home)
        self.curves.clear()
        self.task_stats = {}
        self.load_home()
        return True

    def load_home(self) -> None:
        store = self.store
        self.background.run(store.history, lambda rows: store is self.store and self.curves.load_history(rows),
                            lambda e: self.state.add_message("error", f"cannot open {store.home}: {e}"))
        self.refresh_stats()
        self.home_changed.emit()

    def refresh_stats(self) -> None:
        store = self.store

        def done(stats):
            if store is self.store:
                self.task_stats = stats
                self.stats_changed.emit()

        self.background.run(store.task_stats, done, lambda e: None)

    # -- commands ------------------------------------------------------------------------------------------
    def learn_argv(self, tasks: list[str]) -> list[str]:
        o = self.options
        argv = ["--tasks", ",".join(tasks), "--home", str(self.home), "--resume", "--no-progress",
                "--steps", str(o.steps), "--seed", str(o.seed), "--checkpoint-every", str(o.checkpoint_every)]
        if o.display:
            argv += ["--display", o.display]
        if not o.tensorboard:
            argv.append("--no-tensorboard")
        if o.actors:
            argv += ["--actors", str(o.actors)]
        return argv + list(o.extra)

    def start(self) -> bool:
        """Start (or restart) the agent on the assigned tasks; it resumes from the newest checkpoint."""
        if self.state.alive:
            return False
        err = check_assignable(self.assignment.tasks())
        if err:
            self.state.add_message("error", f"cannot start: {err}")
            return False
        self._final = ""
        self.state.actors = self.options.actors
        self.actors.start(self.options.actors)
        proc = self.proc = AgentProcess(lambda msg: self._from_reader(proc, msg))
        self.state.resumed_from = None
        self.state.set_status("starting", "loading the agent")
        try:
            self.proc.start(self.learn_argv(self.assignment.schedule()), self.store.log_path,
                            str(self.store.stop_file), self.options.fps)
        except OSError as e:
            self.state.set_status("crashed", f"could not start the agent process: {e}")
            return False
        self.state.pid = self.proc.pid
        return True

    def pause(self) -> None:
        if self.proc and self.state.status == "running":
            self.proc.send("pause")
            self.state.set_status("running", "pausing: no new episode goes to the actors; they finish the ones they have"
                                  if self.state.actors else "pausing after this step")

    def resume(self) -> None:
        if self.proc and self.state.status in ("paused", "running"):
            self.proc.send("resume")

    def stop(self) -> None:
        """The agent stops acting at once (its gate refuses every action); the process saves a checkpoint
        and exits, or is terminated after `grace_s` and killed after `kill_after_s` more."""
        if self.proc is None or not self.state.alive:
            return
        self.state.set_status("stopping", "saving a checkpoint")
        self.proc.stop(self.grace_s(), self.options.kill_after_s)

    def grace_s(self) -> float:
        return self.options.actors_grace_s if self.state.actors else self.options.grace_s

    def assign(self) -> None:
        tasks = self.assignment.tasks()
        err = check_assignable(tasks)
        if err:
            self.state.add_message("error", f"cannot assign: {err}")
        elif self.proc is not None and self.state.alive:
            self.proc.send("assign", self.assignment.schedule())
        else:
            self.state.add_message("info", f"assigned {', '.join(tasks)}: the agent learns them when it starts")

    def thumbs(self, episode_id: int, good: bool) -> None:
        if self.proc is not None and self.state.alive:
            self.proc.send("thumbs", int(episode_id), bool(good))
        else:
            self.state.add_message("error", "the agent is not running: start it to give its episodes an outcome")

    def takeover(self, on: bool) -> None:
        if self.proc is None or not self.state.alive:
            self.live.set_takeover("off")
            if on:
                self.state.add_message("error", "start the agent first: a person's demonstration runs on its desktop")
            return
        if on and self.state.actors:
            self.live.set_takeover("off")
            self.state.add_message("error", "no takeover with Ray actors: they act on their own displays; restart the "
                                            "agent with 0 actors to act on its desktop yourself")
            return
        if on and self.live.takeover != "off":
            return  # already taking over
        self.proc.send("takeover", bool(on))
        self.live.set_takeover("requested" if on else "off")

    def demo_action(self, action: dict) -> None:
        if self.proc is not None and self.live.takeover == "ready":
            self.proc.send("demo_action", action)

    def shutdown(self, wait_s: float = 10.0) -> None:
        """On quitting: stop the agent (it saves a checkpoint) and wait a little for it. Idempotent."""
        if self._shut:
            return
        self._shut = True
        self._stats_timer.stop()
        if self.proc is not None and self.proc.alive():
            self.proc.stop(self.grace_s(), self.options.kill_after_s)
            try:
                self.proc.proc.wait(wait_s)
            except Exception:  # noqa: BLE001
                self.proc.kill()
        self.background.run(self.store.close)
        self.background.shutdown()

    # -- events from the agent process ---------------------------------------------------------------------
    def _from_reader(self, proc: AgentProcess, msg: tuple) -> None:
        """On the reader thread: hand the event to the UI thread (a queued signal)."""
        try:
            self._agent_event.emit((proc, msg))
        except RuntimeError:  # the panel is gone
            pass

    def _on_event(self, item: tuple) -> None:
        proc, msg = item
        if proc is not self.proc or self._shut:  # a late word from an earlier run, or the panel is closing
            return
        kind = msg[0]
        handler = getattr(self, f"_ev_{kind}", None)
        if handler is None:
            self.state.add_message("error", f"unknown event from the agent: {kind}")
        else:
            handler(*msg[1:])

    def _ev_frame(self, f: dict) -> None:
        heat = None if f["heat"] is None else np.asarray(f["heat"])
        self.live.set_frame(np.asarray(f["frame"]), f["action"], heat, f["task"], f["instruction"], f["demo"])

    def _ev_progress(self, p: dict) -> None:
        self.state.set_counters(p["env_steps"], p["episodes_total"], p["updates"])
        self.curves.add_episodes(p["episodes"])
        if p["losses"]:
            self.curves.add_losses(p["losses"])
        self.live.add_episodes(p["episodes"])
        if p.get("scale"):
            self.actors.set_scale(p["scale"])
        if p["episodes"]:
            self.episodes_arrived.emit(p["episodes"])

    def _ev_status(self, status: str, detail: str) -> None:
        if status in ("stopped", "finished"):
            self._final = status
            if self.state.status != "crashed":
                self.state.set_status("stopping", "checkpoint saved; closing its desktop")
            return
        if status == "running" and self.state.status == "stopping":
            return
        self.state.set_status(status, detail)

    def _ev_started(self, info: dict) -> None:
        self.grid = tuple(info.get("grid", self.grid))
        self.state.display = info.get("display", "")
        if info.get("actors", 0) != self.actors.count or info.get("ray_address", ""):
            self.actors.start(info.get("actors", 0), info.get("ray_address", ""))
        self.state.actors = self.actors.count
        self.state.resumed_from = info["env_steps"] if info.get("resumed") else None
        self.state.set_counters(info["env_steps"], info["episodes"], info["updates"])
        where = f"resumed from the checkpoint at {info['env_steps']} env steps" if info.get("resumed") else "started from scratch"
        on = (f"; {self.actors.count} Ray actors act on their own displays"
              + (f" (cluster {self.actors.address})" if self.actors.address else "") if self.actors.count else "")
        self.state.add_message("info", f"agent {where} (pid {info.get('pid')}){on}")

    def _ev_assigned(self, tasks: list[str]) -> None:
        self.state.assigned = list(tasks)
        self.state.changed.emit()
        self.state.add_message("info", "the agent now learns: " + ", ".join(dict.fromkeys(tasks)))

    def _ev_verdict(self, episode_id: int, good: bool) -> None:
        self.live.verdict_given(episode_id)
        self.state.add_message("info", f"episode {episode_id} marked {'a success' if good else 'a failure'} by you")
        self.refresh_stats()

    def _ev_demo(self, info: dict) -> None:
        state = info["state"]
        if state == "ready":
            self.live.task, self.live.instruction = info["task"], info["instruction"]  # before its first frame arrives
            self.live.set_takeover("ready")
        elif state == "cancelled":
            self.live.set_takeover("off")
        elif state == "done":
            ok = "succeeded" if info["success"] else "failed"
            self.state.add_message("info", f"your demonstration of {info['task']} {ok} in {info['steps']} steps; "
                                           f"recorded as episode {info['id']}")
            self.live.set_takeover("requested" if self.live.takeover != "off" else "off")
        elif state == "acted" and info.get("refused"):
            self.state.add_message("error", f"the gate refused that action: {info['refused']}")
        self.demo_event.emit(info)

    def _ev_saved(self, env_steps: int) -> None:
        self.state.add_message("info", f"checkpoint saved at {env_steps} env steps")

    def _ev_error(self, text: str, tb: str = "") -> None:
        self.state.add_message("error", text + (f"  (details in {self.store.log_path})" if tb else ""))

    def _ev_exit(self, code: int, tail: str) -> None:
        was = self.state.status
        self.live.set_takeover("off")
        if self._final or was == "stopping":
            detail = "" if code == 0 else f"with an error ({describe_exit(code)}; see the messages below)"
            if code != 0 and was == "stopping" and not self._final:
                detail = f"(it did not exit in time: {describe_exit(code)})"
            self.state.set_status(self._final or "stopped", detail)
        else:
            self.state.set_status("crashed", f"the agent process died ({describe_exit(code)})")
            self.state.add_message("error", f"the agent process died ({describe_exit(code)}); restart it to continue "
                                            f"from its last checkpoint. Last lines of {self.store.log_path}:\n{tail}")
        self.refresh_stats()
