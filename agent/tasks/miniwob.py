"""MiniWoB++ on the agent's desktop: the field's standard benchmark, pixels in and XTest out.

Chromium shows the task page (from the installed `miniwob` package's HTML files) in an app window
on the agent's display. The agent sees only the screen (the 160x210 task area, grabbed with mss)
and acts only through XTest behind its gate, as on every other task. Only the env talks to the
page, over Chromium's DevTools protocol: it starts and seeds episodes, reads the utterance, the
page's origin on the screen and the task's own reward (`WOB_*` globals), and waits until the page
has received the agent's input events before judging.

Why Chromium's DevTools protocol over a pipe (`--remote-debugging-pipe`) and not the package's
selenium env: one process tree that we start, own and kill ourselves (no chromedriver, no driver
and browser versions to keep in step, no TCP port, no "controlled by automated software" bar that
moves the page); the browser exits by itself when our end of the pipe closes, even if this process
is SIGKILLed; and nothing here depends on selenium's headful quirks (it drops --no-sandbox, which
Chromium needs as root). The `miniwob` package is used only for its HTML files.
"""

from __future__ import annotations

import importlib.util
import json
import os
import select
import shutil
import signal
import statistics
import tempfile
import time
import weakref
from pathlib import Path

import gymnasium as gym

from agent.actions import Action, ActionType, span_text
from agent.env import Desktop, ScreenEnv, SettleConfig
from squirrel.errors import UserError

# The 125 regular tasks `miniwob` 1.1.0 registers (its 3 flight.* tasks need an HTTP server; the 5
# unregistered pages are real-time games). A test checks this list against the package's own.
MINIWOB_TASKS = (
    "ascending-numbers", "bisect-angle", "book-flight", "book-flight-nodelay", "buy-ticket", "choose-date",
    "choose-date-easy", "choose-date-medium", "choose-date-nodelay", "choose-list", "circle-center",
    "click-button", "click-button-sequence", "click-checkboxes", "click-checkboxes-large", "click-checkboxes-soft",
    "click-checkboxes-transfer", "click-collapsible", "click-collapsible-2", "click-collapsible-2-nodelay",
    "click-collapsible-nodelay", "click-color", "click-dialog", "click-dialog-2", "click-link", "click-menu",
    "click-menu-2", "click-option", "click-pie", "click-pie-nodelay", "click-scroll-list", "click-shades",
    "click-shape", "click-tab", "click-tab-2", "click-tab-2-easy", "click-tab-2-hard", "click-tab-2-medium",
    "click-test", "click-test-2", "click-test-transfer", "click-widget", "copy-paste", "copy-paste-2",
    "count-shape", "count-sides", "daily-calendar", "drag-box", "drag-circle", "drag-cube", "drag-items",
    "drag-items-grid", "drag-shapes", "drag-shapes-2", "drag-single-shape", "drag-sort-numbers", "draw-circle",
    "draw-line", "email-inbox", "email-inbox-delete", "email-inbox-forward", "email-inbox-forward-nl",
    "email-inbox-forward-nl-turk", "email-inbox-important", "email-inbox-nl-turk", "email-inbox-noscroll",
    "email-inbox-reply", "email-inbox-star-reply", "enter-date", "enter-password", "enter-text", "enter-text-2",
    "enter-text-dynamic", "enter-time", "find-greatest", "find-midpoint", "find-word", "focus-text",
    "focus-text-2", "form-sequence", "form-sequence-2", "form-sequence-3", "generate-number", "grid-coordinate",
    "guess-number", "highlight-text", "highlight-text-2", "hot-cold", "identify-shape", "login-user",
    "login-user-popup", "multi-layouts", "multi-orderings", "navigate-tree", "number-checkboxes", "odd-or-even",
    "order-food", "phone-book", "read-table", "read-table-2", "resize-textarea", "right-angle", "scroll-text",
    "scroll-text-2", "search-engine", "sign-agreement", "simple-algebra", "simple-arithmetic", "social-media",
    "social-media-all", "social-media-some", "stock-market", "terminal", "text-editor", "text-transform",
    "tic-tac-toe", "unicode-test", "use-autocomplete", "use-autocomplete-nodelay", "use-colorwheel",
    "use-colorwheel-2", "use-slider", "use-slider-2", "use-spinner", "visual-addition",
)
# The tasks the package registers as nondeterministic (state that survives its in-page reset, clocks, timers).
NONDETERMINISTIC = frozenset({
    "book-flight", "book-flight-nodelay", "choose-date", "choose-date-easy", "choose-date-medium",
    "choose-date-nodelay", "click-dialog", "click-dialog-2", "click-pie", "click-pie-nodelay", "click-scroll-list",
    "drag-cube", "scroll-text", "scroll-text-2", "search-engine", "social-media", "social-media-all",
    "social-media-some", "terminal", "order-food", "phone-book", "stock-market",
})
PREFIX = "miniwob-"
# Step budgets: the fewest actions that solve the task plus one, as for the playground tasks. MiniWoB++
# itself has no step budget (only its 10 s clock); tasks not listed get DEFAULT_MAX_STEPS.
MAX_STEPS = {"click-test": 2, "click-test-2": 2, "click-button": 2, "click-dialog": 2, "click-color": 2,
             "focus-text": 2, "enter-text": 4, "click-tab": 3}
DEFAULT_MAX_STEPS = 10
STATS_ENV = "SQUIRREL_MINIWOB_STATS"
WINDOW_SIZE = (420, 300)  # the app window: the task area, MiniWoB's reward panel beside it, room to rest the pointer
TASK_W, TASK_H = 160, 210

CHROMIUM_FLAGS = (
    "--no-sandbox",  # needed as root and in most containers; the pages are local files and the network is off
    "--test-type",  # no "unsupported command-line flag" bar over the page
    "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--disable-extensions", "--disable-default-apps", "--no-first-run",
    "--no-default-browser-check", "--password-store=basic", "--noerrdialogs", "--disable-session-crashed-bubble",
    "--disable-features=Translate,MediaRouter,OptimizationHints,AutofillServerCommunication",
    # the task's clock and our input must not slow down when the window is not "visible" to Chromium
    "--disable-background-timer-throttling", "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
    "--hide-scrollbars", "--force-device-scale-factor=1",
    "--host-resolver-rules=MAP * ~NOTFOUND",  # nothing is fetched at run time
)


def task_name(task: str) -> str:
    """'miniwob-click-test' or 'click-test' -> 'click-test' (UserError when unknown)."""
    name = task[len(PREFIX):] if task.startswith(PREFIX) else task
    if name not in MINIWOB_TASKS:
        raise UserError(f"unknown MiniWoB++ task {task!r}; the {len(MINIWOB_TASKS)} tasks are listed in "
                        "agent/tasks/miniwob.py (ids squirrel/miniwob-<task>-v0)")
    return name


def html_dir() -> Path:
    """The task pages of the installed `miniwob` package (found without importing it)."""
    spec = importlib.util.find_spec("miniwob")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the miniwob package is not installed; run scripts/setup")
    d = Path(list(spec.submodule_search_locations)[0]) / "html" / "miniwob"
    if not d.is_dir():
        raise UserError(f"the miniwob package has no task pages at {d}; reinstall it (scripts/setup)")
    return d


def find_chromium() -> str:
    """The Chromium binary: $SQUIRREL_CHROMIUM, Debian's real binary (its /usr/bin wrapper drops flags), or PATH."""
    for c in (os.environ.get("SQUIRREL_CHROMIUM"), "/usr/lib/chromium/chromium", shutil.which("chromium"),
              shutil.which("chromium-browser"), shutil.which("google-chrome")):
        if c and os.access(c, os.X_OK):
            return c
    raise UserError("Chromium is not installed (needed for MiniWoB++ tasks): run scripts/setup "
                    "(apt-get install --no-install-recommends chromium), or set SQUIRREL_CHROMIUM")


# -- the browser -------------------------------------------------------------------------------------
class BrowserDied(RuntimeError):
    """The browser exited, hung, or closed its end of the pipe."""


class PageError(RuntimeError):
    """A DevTools command or page script failed (the browser itself is fine)."""


def _group_alive(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group `pgid`."""
    out = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            out.append(int(p))
    return out


def _kill(pid: int, fds: list[int], tmp: str) -> None:
    """Stop a browser's whole process group and remove its profile; safe to call twice (also at exit)."""
    for fd in fds:
        try:
            os.close(fd)  # the browser starts shutting down when its pipe closes
        except OSError:
            pass
    fds.clear()
    if pid:
        deadline = time.monotonic() + 3.0
        reaped = False
        while time.monotonic() < deadline:
            try:
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    reaped = True
                    break
            except ChildProcessError:
                reaped = True
                break
            time.sleep(0.01)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if not _group_alive(pid):
                break
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                break
            end = time.monotonic() + (2.0 if sig == signal.SIGTERM else 5.0)
            while _group_alive(pid) and time.monotonic() < end:
                if not reaped:
                    try:
                        reaped = os.waitpid(pid, os.WNOHANG)[0] == pid
                    except ChildProcessError:
                        reaped = True
                time.sleep(0.01)
        if not reaped:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
    if tmp:
        shutil.rmtree(tmp, ignore_errors=True)


class Chromium:
    """One Chromium app window on a display, driven over the DevTools protocol on a pipe.

    The browser runs in its own process group; `close()` (also run at exit and when this object is
    collected) stops the whole group and deletes its temporary profile.
    """

    def __init__(self, env: dict, url: str, position: tuple[int, int] = (0, 0),
                 size: tuple[int, int] = WINDOW_SIZE, binary: str | None = None, start_timeout_s: float = 30.0):
        self.env, self.url, self.position, self.size = env, url, position, size
        self.binary = binary or find_chromium()
        self.start_timeout_s = start_timeout_s
        self.pid = 0
        self.tmp = ""
        self._fds: list[int] = []
        self._buf = b""
        self._id = 0
        self.session = ""
        self._finalizer = None

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> "Chromium":
        self.tmp = tempfile.mkdtemp(prefix="squirrel-chromium-")
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        args = [self.binary, "--remote-debugging-pipe", f"--user-data-dir={self.tmp}/profile", *CHROMIUM_FLAGS,
                f"--window-position={self.position[0]},{self.position[1]}",
                f"--window-size={self.size[0]},{self.size[1]}", f"--app={self.url}"]
        for fd in (to_child_r, from_child_w):
            os.set_inheritable(fd, True)  # so that dup2 onto 3 and 4 keeps them open even if the numbers match
        devnull = os.open(os.devnull, os.O_RDONLY)
        log = os.open(os.path.join(self.tmp, "chromium.log"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            # posix_spawn, not Popen with preexec_fn: the pipe must sit on fds 3 and 4, and preexec_fn is unsafe
            # with threads. Its own session: the whole tree is one process group we can stop.
            self.pid = os.posix_spawn(self.binary, args, self.env, setsid=True,
                                      setsigdef=(signal.SIGPIPE, signal.SIGINT, signal.SIGTERM, signal.SIGHUP),
                                      file_actions=[(os.POSIX_SPAWN_DUP2, devnull, 0), (os.POSIX_SPAWN_DUP2, log, 1),
                                                    (os.POSIX_SPAWN_DUP2, log, 2),
                                                    (os.POSIX_SPAWN_DUP2, to_child_r, 3),
                                                    (os.POSIX_SPAWN_DUP2, from_child_w, 4)])
        finally:
            for fd in (to_child_r, from_child_w, devnull, log):
                os.close(fd)
        self._fds = [to_child_w, from_child_r]
        self._finalizer = weakref.finalize(self, _kill, self.pid, self._fds, self.tmp)
        try:
            self._attach()
        except BaseException:
            self.close()
            raise
        return self

    def _attach(self) -> None:
        targets = self.call("Target.getTargets", timeout=self.start_timeout_s, session=False)["targetInfos"]
        pages = [t for t in targets if t["type"] == "page"]
        if not pages:
            raise BrowserDied(f"Chromium opened no page for {self.url}")
        r = self.call("Target.attachToTarget", {"targetId": pages[0]["targetId"], "flatten": True}, session=False)
        self.session = r["sessionId"]
        self.call("Page.enable")

    @property
    def alive(self) -> bool:
        if not self.pid or not self._fds:
            return False
        try:
            return os.waitpid(self.pid, os.WNOHANG)[0] == 0
        except ChildProcessError:
            return False

    def log_tail(self, n: int = 5) -> str:
        try:
            lines = Path(self.tmp, "chromium.log").read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return "\n".join(line for line in lines if "dbus" not in line.lower())[-600:] if lines else ""

    def close(self) -> None:
        if self._finalizer is not None:
            self._finalizer()  # runs _kill once
            self._finalizer = None
        self.pid, self.tmp, self.session = 0, "", ""

    # -- the protocol ----------------------------------------------------------------------------
    def call(self, method: str, params: dict | None = None, timeout: float = 10.0, session: bool = True) -> dict:
        if not self._fds:
            raise BrowserDied("the browser is closed")
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = self.session
        data = json.dumps(msg).encode() + b"\0"
        try:
            while data:
                data = data[os.write(self._fds[0], data):]
        except OSError as e:
            raise BrowserDied(f"cannot write to Chromium: {e.strerror}") from None
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buf:
                raw, self._buf = self._buf.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self._id:
                    if "error" in reply:
                        raise PageError(f"{method}: {reply['error'].get('message')}")
                    return reply["result"]
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserDied(f"Chromium did not answer {method} within {timeout:.0f} s")
            if select.select([self._fds[1]], [], [], min(left, 0.5))[0]:
                chunk = os.read(self._fds[1], 1 << 20)
                if not chunk:
                    raise BrowserDied("Chromium closed the DevTools pipe (it exited)")
                self._buf += chunk
            elif not self.alive:
                raise BrowserDied("Chromium exited")

    def evaluate(self, expression: str, timeout: float = 10.0):
        """Run a script in the page (promises awaited); its JSON value."""
        r = self.call("Runtime.evaluate", {"expression": expression, "awaitPromise": True, "returnByValue": True},
                      timeout=timeout)
        if "exceptionDetails" in r:
            d = r["exceptionDetails"]
            raise PageError(d.get("exception", {}).get("description") or d.get("text", "script failed"))
        return r["result"].get("value")

    def navigate(self, url: str) -> None:
        self.call("Page.navigate", {"url": url})
        self.url = url


# -- the page side: hooks installed once per page load, the reset and the status scripts ----------
# Counts the input events the page has received (the env waits for them before it judges), records
# the end of every episode (reward, raw reward, reason), and keeps Chromium's own context menu away
# (browser chrome, not the task: the task's own handlers still run).
_HOOKS = """
if (!window.__squirrel) {
  const s = window.__squirrel = {up: 0, key: 0, wheel: 0, last: null};
  const mods = ['Shift', 'Control', 'Alt', 'Meta', 'AltGraph'];
  window.addEventListener('mouseup', () => { s.up++; }, true);
  window.addEventListener('dragend', () => { s.up++; }, true);  // a drag of text or a link ends without a mouseup
  window.addEventListener('keyup', (e) => { if (!mods.includes(e.key)) s.key++; }, true);
  window.addEventListener('wheel', () => { s.wheel++; }, {capture: true, passive: true});
  window.addEventListener('contextmenu', (e) => e.preventDefault(), true);
  const end = core.endEpisode;
  core.endEpisode = function () {
    const before = WOB_EPISODE_ID;
    const r = end.apply(this, arguments);
    if (WOB_EPISODE_ID !== before) {
      let reason = WOB_REWARD_REASON;
      try { reason = reason == null ? null : (typeof reason === 'string' ? reason : JSON.stringify(reason)); }
      catch (e) { reason = String(reason); }
      s.last = {episode: WOB_EPISODE_ID, reward: WOB_REWARD_GLOBAL, raw: WOB_RAW_REWARD_GLOBAL, reason: reason};
    }
    return r;
  };
}
"""
_HERE = "location.href.split('#')[0] === {url}"  # a click on <a href="#"> only changes the fragment
_READY = ("document.readyState === 'complete' && typeof core !== 'undefined' && core.cover_div != null && "
          + _HERE)
# Settled, as far as the page can tell: its finite animations (CSS, Web Animations, jQuery) have ended,
# then two frames, so the one holding the changes has been drawn (Chromium draws at 60 Hz here, whatever
# the flags). The env's screen settle then confirms on the pixels.
_FRAME = """
  const busy = () => document.getAnimations().some(a => a.playState === 'running' && a.effect
      && a.effect.getComputedTiming().endTime !== Infinity) || !!(window.jQuery && jQuery.timers && jQuery.timers.length);
  const ta = performance.now();
  while (busy() && performance.now() - ta < %d) await new Promise(r => setTimeout(r, 5));
  await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
"""
_RESET = """(async () => {
  %(hooks)s
  if (core.EP_TIMER !== null) core.endEpisode(0, false, 'reset');
  if (document.activeElement && document.activeElement !== document.body) document.activeElement.blur();  // as START's click did
  Math.seedrandom(%(seed)d);
  core.setDataMode('train');
  core.EPISODE_MAX_TIME = %(ms)d;
  core.startEpisodeReal();
  for (let i = 0; i < 200 && !WOB_TASK_READY; i++) await new Promise(r => setTimeout(r, 10));
  let u = core.getUtterance();
  if (u && typeof u === 'object') u = u.utterance;
  const s = window.__squirrel;
  return {ready: !!WOB_TASK_READY, utterance: String(u), episode: WOB_EPISODE_ID,
          origin: [screenX + outerWidth - innerWidth, screenY + outerHeight - innerHeight],
          inner: [innerWidth, innerHeight], counts: [s.up, s.key, s.wheel]};
})()"""
_STATUS = """(async () => {
  const s = window.__squirrel;
  if (!s || location.href.split('#')[0] !== %(url)s) return {lost: true};
  const t0 = performance.now();
  while ((s.up < %(up)d || s.key < %(key)d || s.wheel < %(wheel)d) && performance.now() - t0 < %(cap)d)
    await new Promise(r => setTimeout(r, 1));
  const waited = !(s.up < %(up)d || s.key < %(key)d || s.wheel < %(wheel)d);
  await new Promise(r => setTimeout(r, 0));
  %(frame)s
  return {episode: WOB_EPISODE_ID, last: s.last, counts: [s.up, s.key, s.wheel], received: waited};
})()"""


def _expected_events(a: Action | None, text: str | None) -> tuple[int, int, int]:
    """(mouseups, non-modifier keyups, wheel events) the page receives from action `a`."""
    if a is None:
        return (0, 0, 0)
    if a.type in (ActionType.CLICK, ActionType.RIGHT_CLICK, ActionType.DRAG):
        return (1, 0, 0)
    if a.type == ActionType.DOUBLE_CLICK:
        return (2, 0, 0)
    if a.type in (ActionType.SCROLL_UP, ActionType.SCROLL_DOWN):
        return (0, 0, 1)
    if a.type == ActionType.KEY:
        return (0, 1, 0)
    if a.type == ActionType.TYPE and text:
        return (0, len(text), 0)
    return (0, 0, 0)


# -- the env -----------------------------------------------------------------------------------------
class MiniWobEnv(ScreenEnv):
    """A MiniWoB++ task in Chromium on a desktop; `reset(options={"task": ...})` switches task.

    Reward: the task's binary success (+1 when its raw reward is positive, -1 otherwise) through
    ScreenEnv; `info` keeps MiniWoB's own time-decayed reward (`miniwob_reward`), the raw reward
    (`miniwob_raw_reward`) and its reason. Declaring DONE before the task has ended is a failure.
    """

    def __init__(self, task: str = "click-test", desktop: Desktop | None = None, display: str | None = None,
                 step_cost: float = 0.01, settle: SettleConfig | None = None, render_mode: str | None = None,
                 max_steps: int | None = None, episode_s: float = 10.0, reload_every: int = 500,
                 position: tuple[int, int] = (0, 0), input_wait_ms: float = 200.0,
                 animation_wait_ms: float = 500.0, stats_path: str | None = None):
        self.name = task_name(task)  # validate before starting anything
        if max_steps is not None and max_steps < 1:
            raise ValueError("max_steps must be at least 1")
        self.pages = html_dir()
        self.binary = find_chromium()
        super().__init__(desktop or Desktop(display, playground=False), desktop is None, TASK_W, TASK_H, step_cost,
                         settle or SettleConfig(interval_ms=10.0, cap_ms=300.0), render_mode)
        self.task = PREFIX + self.name
        self._fixed_max_steps, self.episode_s, self.reload_every = max_steps, episode_s, reload_every
        self.position, self.input_wait_ms, self.animation_wait_ms = position, input_wait_ms, animation_wait_ms
        self.stats_path = stats_path if stats_path is not None else os.environ.get(STATS_ENV, "")
        self.browser: Chromium | None = None
        self._episode = 0
        self._counts = [0, 0, 0]
        self._since_load = 0
        self.restarts = self.input_timeouts = self.clock_timeouts = 0
        self.reset_ms: list[float] = []
        self.step_ms: list[float] = []

    def _url(self) -> str:
        return (self.pages / f"{self.name}.html").as_uri()

    # -- the browser's lifecycle -----------------------------------------------------------------

    def _ensure_page(self) -> None:
        """A live browser showing this task's page, loaded (restarted when it died)."""
        url = self._url()
        if self.browser is not None and not self.browser.alive:
            self.browser.close()
            self.browser = None
            self.restarts += 1
        if self.browser is None:
            self.browser = Chromium(self.desktop.child_env(), url, self.position, binary=self.binary).start()
            self._since_load = 0
        elif (self.reload_every and self._since_load >= self.reload_every) or not self._on_page(url):
            self.browser.navigate(url)  # another task, a periodic fresh page, or the page went elsewhere
            self._since_load = 0
        ready = _READY.format(url=json.dumps(url))
        deadline = time.monotonic() + 20.0
        while True:
            try:
                if self.browser.evaluate(ready):
                    return
            except PageError:
                pass  # the document is being replaced; ask again
            if time.monotonic() > deadline:
                raise BrowserDied(f"the page {url} did not load within 20 s. {self.browser.log_tail()}")
            time.sleep(0.01)

    def _on_page(self, url: str) -> bool:
        try:
            return bool(self.browser.evaluate(_HERE.format(url=json.dumps(url))))
        except PageError:
            return False

    def _drop_browser(self) -> None:
        if self.browser is not None:
            self.browser.close()
            self.browser = None

    # -- ScreenEnv ---------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        t0 = time.perf_counter()
        out = super().reset(seed=seed, options=options)
        self.reset_ms.append((time.perf_counter() - t0) * 1e3)  # the whole reset: page, first settled frame
        if len(self.reset_ms) % 50 == 0:
            self.write_stats()
        return out

    def _start_task(self, seed, options):
        if options and "task" in options:
            self.name = task_name(options["task"])
            self.task = PREFIX + self.name
        for attempt in range(2):  # a dead or hung browser is restarted once
            try:
                self._ensure_page()
                r = self.browser.evaluate(_RESET % {"hooks": _HOOKS, "seed": seed, "ms": int(self.episode_s * 1000)})
                break
            except (BrowserDied, PageError) as e:
                self._drop_browser()
                self.restarts += 1
                if attempt:
                    raise UserError(f"MiniWoB++ task {self.name}: the browser failed twice: {e}") from None
        if not r["ready"]:
            raise UserError(f"MiniWoB++ task {self.name} did not become ready")
        if tuple(r["inner"]) < (TASK_W, TASK_H):
            raise UserError(f"the browser's page is {r['inner']}, smaller than the {TASK_W}x{TASK_H} task area")
        self._episode, self._counts = r["episode"], list(r["counts"])
        self._since_load += 1
        budget = self._fixed_max_steps or MAX_STEPS.get(self.name, DEFAULT_MAX_STEPS)
        return r["utterance"], (int(r["origin"][0]), int(r["origin"][1])), budget

    def step(self, action):
        t0 = time.perf_counter()
        out = super().step(action)
        self.step_ms.append((time.perf_counter() - t0) * 1e3)
        return out

    def _status(self, a: Action | None) -> dict:
        text = span_text(self.instruction, a.span) if a is not None and a.type == ActionType.TYPE else None
        exp = _expected_events(a, text)
        want = [c + e for c, e in zip(self._counts, exp)]
        try:
            r = self.browser.evaluate(_STATUS % {"url": json.dumps(self._url()), "up": want[0], "key": want[1],
                                                 "wheel": want[2], "cap": int(self.input_wait_ms),
                                                 "frame": _FRAME % int(self.animation_wait_ms)})
        except BrowserDied as e:
            # the browser died mid-episode: not the agent's failure; a new browser comes with the next reset
            self._drop_browser()
            self.restarts += 1
            return {"done": True, "success": None, "browser_died": str(e)[:200]}
        except PageError:  # the document was replaced while we asked
            r = {"lost": True}
        if r.get("lost"):  # the page navigated away or reloaded: the episode is void (the next reset reloads it)
            return {"done": True, "success": None, "page_lost": True}
        self._counts = r["counts"]
        if any(exp) and not r["received"]:
            self.input_timeouts += 1
        last = r["last"]
        if r["episode"] > self._episode and last is not None:
            self.clock_timeouts += last["reason"] == "timed out"  # the task's own clock (episode_s) ran out
            return {"done": True, "success": last["raw"] > 0, "miniwob_reward": last["reward"],
                    "miniwob_raw_reward": last["raw"], "miniwob_reason": last["reason"]}
        if a is not None and a.type == ActionType.DONE:
            return {"done": True, "success": False, "miniwob_reason": "declared done before the task ended"}
        return {"done": False, "success": None}

    def close(self):
        self.write_stats()
        self._drop_browser()
        super().close()

    # -- measurements --------------------------------------------------------------------------
    def stats(self) -> dict:
        def med(v):
            return round(statistics.median(v), 3) if v else None

        return {"task": self.task, "resets": len(self.reset_ms), "reset_ms_median": med(self.reset_ms),
                "steps": len(self.step_ms), "step_ms_median": med(self.step_ms), "browser_restarts": self.restarts,
                "input_timeouts": self.input_timeouts, "clock_timeouts": self.clock_timeouts}

    def write_stats(self) -> None:
        """Timing figures to `stats_path` (or $SQUIRREL_MINIWOB_STATS), for `squirrel bench miniwob`."""
        if not self.stats_path:
            return
        tmp = self.stats_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.stats(), f)
        os.replace(tmp, self.stats_path)


def make_miniwob_env(task: str, gate=None, stop=None, **kwargs) -> gym.Env:
    """A MiniWoB++ task env behind the safety gate."""
    from agent.gate import SafetyGate

    return SafetyGate(MiniWobEnv(task, **kwargs), gate, stop)


def register_miniwob_tasks() -> list[str]:
    ids = []
    for name in MINIWOB_TASKS:
        env_id = f"squirrel/{PREFIX}{name}-v0"
        if env_id not in gym.registry:
            gym.register(env_id, entry_point="agent.tasks.miniwob:make_miniwob_env", kwargs={"task": name},
                         nondeterministic=name in NONDETERMINISTIC)
        ids.append(env_id)
    return ids


def doctor_checks(display: str | None = None):
    """`squirrel doctor --miniwob`: (name, ok, detail, fix) for Chromium, the task pages and one real episode."""
    import subprocess

    fix = "run scripts/setup (apt-get install --no-install-recommends chromium fonts-liberation)"
    try:
        binary = find_chromium()
    except UserError as e:
        yield "chromium", False, str(e).split(":")[0], fix
        return
    try:
        r = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
        version = (r.stdout.strip() or r.stderr.strip()).splitlines()[-1][:80]
    except (OSError, subprocess.TimeoutExpired, IndexError) as e:
        yield "chromium", False, f"{binary} does not run: {e}", fix
        return
    yield "chromium", True, f"{binary} ({version})", ""
    try:
        pages = html_dir()
    except UserError as e:
        yield "miniwob", False, str(e), "run scripts/setup (pip install miniwob==1.1.0)"
        return
    missing = [t for t in MINIWOB_TASKS if not (pages / f"{t}.html").exists()]
    yield ("miniwob", not missing, f"{len(MINIWOB_TASKS) - len(missing)}/{len(MINIWOB_TASKS)} task pages in {pages}",
           "reinstall miniwob==1.1.0 (scripts/setup)")
    env = None
    try:
        t = time.perf_counter()
        env = MiniWobEnv("click-test", display=display)
        obs, _ = env.reset(seed=0)
        start_ms = (time.perf_counter() - t) * 1e3
        t = time.perf_counter()
        env.reset(seed=1)
        ok = obs["instruction"] == "Click the button." and obs["screen"].std() > 10
        yield ("miniwob-run", ok, f"click-test in Chromium at {env.origin}: start {start_ms:.0f} ms, "
               f"reset {(time.perf_counter() - t) * 1e3:.0f} ms", "see the message; try SQUIRREL_CHROMIUM=<binary>")
    except Exception as e:  # noqa: BLE001 - reported as a failed check
        yield "miniwob-run", False, f"{type(e).__name__}: {str(e)[:200]}", "see the message; try SQUIRREL_CHROMIUM=<binary>"
    finally:
        if env is not None:
            env.close()
