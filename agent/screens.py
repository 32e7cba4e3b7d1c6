"""GUI-like screens the agent draws for itself (DESIGN.md decision 5): no human labels, no downloads.

Two makers, both PIL, in the desktop's font (DejaVu Sans, 11 px by default, as the playground's Qt apps):
- `random_screen`: a procedurally laid out frame (header band, buttons, labels, fields, checkboxes,
  radio buttons, lists, menus) at the agent's native task size, with every word's box recorded, for
  `squirrel pretrain`;
- `click_button_screen`: the playground's click-button task (yellow instruction header, 2-5 Fusion-style
  push buttons on white), for `squirrel bench reading`.

Word boxes are (word, x0, y0, x1, y1) in frame pixels, x1/y1 exclusive, around the word's ink extent
(the text origin plus the font's advance width and 11 px line).
"""

from __future__ import annotations

import string
from typing import NamedTuple

import numpy as np

from agent.instruction import font

WIDTH, HEIGHT, HEADER = 160, 210, 50  # the playground's "small" task window (playground/host.py SIZES)
HEADER_RGB = (255, 255, 102)  # #ffff66

# Vocabularies. TRAIN is the playground's own word list (playground/tasks.py WORDS, repeated here so that this
# module needs no Qt); HELDOUT is never drawn by the pretraining generator nor used to train in the bench.
TRAIN_WORDS = ("apple", "river", "stone", "cloud", "tiger", "lemon", "piano", "robot", "candle", "forest", "mango",
               "silver", "rocket", "garden", "window", "pepper", "castle", "dragon", "orange", "planet", "basket",
               "pencil", "marble", "coffee", "button", "jacket", "violet", "anchor", "falcon", "meadow", "copper",
               "harbor", "island", "jungle", "kettle", "ladder", "magnet", "nickel", "oyster", "parrot")
HELDOUT_WORDS = ("bridge", "walnut", "saddle", "tunnel", "velvet", "wizard", "zipper", "bucket", "cactus", "lantern",
                 "hammer", "pillow", "spider", "turtle", "yogurt", "badger", "cobalt", "donkey", "ginger", "muffin",
                 "nectar", "pebble", "quartz", "salmon", "thimble", "sparrow", "bottle", "tomato", "orchid", "glider")
_RESERVED = frozenset(TRAIN_WORDS) | frozenset(HELDOUT_WORDS)

_ONSETS = ("b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "z", "br", "ch", "cl",
           "cr", "dr", "fl", "gr", "pl", "pr", "sh", "sl", "sp", "st", "tr", "th", "qu")
_VOWELS = ("a", "e", "i", "o", "u", "y", "ai", "ea", "ee", "oo", "ou")
_CODAS = ("", "", "n", "r", "s", "t", "l", "m", "nd", "st", "ck", "ng", "x")
UI_WORDS = ("OK", "Cancel", "Save", "Open", "File", "Edit", "View", "Help", "Submit", "Apply", "Close", "Next", "Back",
            "Name", "Email", "Search", "Delete", "Copy", "Paste", "Undo", "Redo", "Yes", "No", "Settings", "Print")


class Word(NamedTuple):
    text: str
    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def centre(self) -> tuple[float, float]:
        return (self.x0 + self.x1) / 2, (self.y0 + self.y1) / 2




def pseudo_word(rng: np.random.Generator) -> str:
    """A random word: pronounceable (syllables), a random letter string (a non-word), or a UI word; never one
    of TRAIN_WORDS / HELDOUT_WORDS."""
    while True:
        kind = rng.random()
        if kind < 0.55:
            w = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(rng.integers(1, 4)))
        elif kind < 0.85:
            w = "".join(rng.choice(list(string.ascii_lowercase), size=int(rng.integers(2, 9))))
        else:
            w = str(rng.choice(UI_WORDS))
        if rng.random() < 0.15:
            w = w.capitalize()
        if 2 <= len(w) <= 10 and w.lower() not in _RESERVED:
            return w


def near_miss(word: str, rng: np.random.Generator) -> str:
    """`word` with one letter changed, added or dropped (a hard negative for reading)."""
    letters = string.ascii_lowercase
    for _ in range(20):
        i = int(rng.integers(0, len(word)))
        op = rng.integers(0, 3)
        if op == 0:
            w = word[:i] + rng.choice(list(letters)) + word[i + 1:]
        elif op == 1:
            w = word[:i] + rng.choice(list(letters)) + word[i:]
        else:
            w = word[:i] + word[i + 1:] if len(word) > 2 else word + rng.choice(list(letters))
        if w != word and w.lower() not in _RESERVED:
            return w
    return word + "x"


def _text(draw, x: int, y: int, s: str, fnt, fill) -> Word:
    """Draw `s` with its 11 px line box at (x, y) and return its box."""
    draw.text((x, y), s, font=fnt, fill=fill)
    w = int(np.ceil(fnt.getlength(s)))
    return Word(s, x, y, x + w, y + fnt.size)


def fusion_button(draw, x: int, y: int, label: str, fnt=None, w: int | None = None, h: int = 24,
                  fill=(239, 239, 239), border=(172, 172, 172), ink=(0, 0, 0)) -> tuple[tuple[int, int, int, int], Word]:
    """A Qt Fusion-style push button (at least 80 px wide, as Fusion makes labelled buttons) -> (box, word)."""
    fnt = fnt or font()
    tw = int(np.ceil(fnt.getlength(label)))
    w = w or max(80, tw + 16)
    draw.rounded_rectangle((x, y, x + w - 1, y + h - 1), radius=2, fill=fill, outline=border)
    draw.line((x + 2, y + 1, x + w - 3, y + 1), fill=tuple(min(255, c + 12) for c in fill))  # Fusion's top highlight
    word = _text(draw, x + (w - tw) // 2, y + (h - fnt.size) // 2 - 1, label, fnt, ink)
    return (x, y, x + w, y + h), word


def wrap(text: str, fnt, width: int) -> list[str]:
    lines, cur = [], ""
    for tok in text.split():
        t = f"{cur} {tok}" if cur else tok
        if fnt.getlength(t) <= width or not cur:
            cur = t
        else:
            lines.append(cur)
            cur = tok
    return lines + ([cur] if cur else [])


def _header(draw, text: str, fnt, width: int, height: int, fill=HEADER_RGB, ink=(0, 0, 0)) -> list[Word]:
    draw.rectangle((0, 0, width - 1, height - 1), fill=fill)
    out, y = [], 3
    for line in wrap(text, fnt, width - 6):
        if y + fnt.size > height:
            break
        x = 3
        for tok in line.split():
            out.append(_text(draw, x, y, tok, fnt, ink))
            x += int(np.ceil(fnt.getlength(tok + " ")))
        y += fnt.size + 2
    return out


def _place(rng: np.random.Generator, taken: list, w: int, h: int, x0: int, y0: int, x1: int, y1: int,
           gap: int = 3) -> tuple[int, int] | None:
    """A random free spot for a w x h box inside [x0, x1) x [y0, y1), or None."""
    if x1 - x0 < w or y1 - y0 < h:
        return None
    for _ in range(200):
        x, y = int(rng.integers(x0, x1 - w + 1)), int(rng.integers(y0, y1 - h + 1))
        if all(x + w + gap <= a or x >= c + gap or y + h + gap <= b or y >= d + gap for a, b, c, d in taken):
            taken.append((x, y, x + w, y + h))
            return x, y
    return None


# -- the bench task ------------------------------------------------------------------------------------------
def click_button_screen(rng: np.random.Generator, vocab=TRAIN_WORDS, n_min: int = 3, n_max: int = 5):
    """The playground's click-button screen -> (frame (210,160,3) uint8, instruction, target box, button boxes)."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (WIDTH, HEIGHT), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    labels = list(rng.choice(vocab, size=int(rng.integers(n_min, n_max + 1)), replace=False))
    instruction = f'Click the "{labels[0]}" button.'
    _header(draw, instruction, font(), WIDTH, HEADER)
    taken, boxes = [], []
    for label in labels:
        w = max(80, int(np.ceil(font().getlength(label))) + 16)
        at = _place(rng, taken, w, 24, 4, HEADER + 4, WIDTH - 4, HEIGHT - 4)
        if at is None:
            continue
        box, _ = fusion_button(draw, *at, label, w=w)
        boxes.append((label, box))
    return np.asarray(img, dtype=np.uint8), instruction, boxes[0][1], boxes


# -- the pretraining generator -------------------------------------------------------------------------------
_BGS = ((255, 255, 255), (239, 239, 239), (246, 246, 250), (250, 250, 240), (232, 232, 240))
_INKS = ((0, 0, 0), (32, 32, 32), (60, 60, 70), (20, 20, 120), (120, 20, 20))
_FILLS = ((239, 239, 239), (250, 250, 250), (225, 230, 240), (210, 225, 250), (255, 255, 255), (230, 240, 230))
_HEADERS = (HEADER_RGB, (220, 230, 250), (230, 230, 230), (255, 240, 200))


def _pick(rng, seq):
    return seq[int(rng.integers(0, len(seq)))]


def random_screen(rng: np.random.Generator, width: int = WIDTH, height: int = HEIGHT, words=None):
    """A procedurally laid out GUI-like frame -> (frame (height,width,3) uint8, [Word, ...] of every word drawn).

    `words`: a callable rng -> str giving the words to draw (default: pseudo_word). A few words on each
    screen are near misses of another word on it (one letter changed), so telling words apart takes reading
    the letters, not just their length or outline."""
    from PIL import Image, ImageDraw

    new_word = words or pseudo_word
    bg = _pick(rng, _BGS)
    img = Image.new("RGB", (width, height), bg)
    draw = ImageDraw.Draw(img)
    out: list[Word] = []
    taken: list = []
    pool: list[str] = []

    def word() -> str:
        if pool and rng.random() < 0.25:
            return near_miss(_pick(rng, pool), rng)
        w = new_word(rng)
        pool.append(w)
        return w

    def fnt():
        r = rng.random()
        return font(11) if r < 0.6 else font(int(rng.integers(10, 14)), bold=bool(rng.random() < 0.2))

    top = 0
    if rng.random() < 0.6:  # an instruction-like header band
        top = int(rng.integers(20, 52))
        sentence = " ".join(word() for _ in range(int(rng.integers(2, 7))))
        out += _header(draw, sentence, font(11), width, top, fill=_pick(rng, _HEADERS))
        taken.append((0, 0, width, top))
    elif rng.random() < 0.5:  # a menu bar
        draw.rectangle((0, 0, width - 1, 19), fill=(236, 236, 236))
        x = 4
        for _ in range(6):
            s = word()
            f = font(11)
            if x + f.getlength(s) > width - 4:
                break
            out.append(_text(draw, x, 4, s, f, (0, 0, 0)))
            x = out[-1].x1 + 10
        top = 20
        taken.append((0, 0, width, top))
    for _ in range(int(rng.integers(3, 9))):
        kind = rng.random()
        ink = (0, 0, 0) if rng.random() < 0.7 else _pick(rng, _INKS)
        f = fnt()
        if kind < 0.35:  # push button
            s = word()
            tw = int(np.ceil(f.getlength(s)))
            w = max(int(rng.choice([tw + 12, tw + 16, 80])), tw + 8)
            h = int(rng.integers(f.size + 8, f.size + 14))
            at = _place(rng, taken, w, h, 2, top + 2, width - 2, height - 2)
            if at:
                flat = rng.random() < 0.3
                _, wd = fusion_button(draw, *at, s, f, w=w, h=h, fill=_pick(rng, _FILLS),
                                      border=(96, 96, 112) if flat else (172, 172, 172), ink=ink)
                out.append(wd)
        elif kind < 0.5:  # label
            s = word()
            w = int(np.ceil(f.getlength(s)))
            at = _place(rng, taken, w, f.size + 2, 2, top + 2, width - 2, height - 2)
            if at:
                out.append(_text(draw, at[0], at[1], s, f, ink))
        elif kind < 0.65:  # checkbox or radio button with its text
            s = word()
            w = 18 + int(np.ceil(f.getlength(s)))
            at = _place(rng, taken, w, 16, 2, top + 2, width - 2, height - 2)
            if at:
                x, y = at
                box = (x + 1, y + 2, x + 13, y + 14)
                if rng.random() < 0.5:
                    draw.rectangle(box, fill=(255, 255, 255), outline=(120, 120, 120))
                    if rng.random() < 0.5:
                        draw.line((x + 3, y + 8, x + 6, y + 11, x + 11, y + 4), fill=(30, 30, 30), width=2)
                else:
                    draw.ellipse(box, fill=(255, 255, 255), outline=(120, 120, 120))
                    if rng.random() < 0.5:
                        draw.ellipse((x + 4, y + 5, x + 10, y + 11), fill=(30, 30, 30))
                out.append(_text(draw, x + 18, y + 2, s, f, ink))
        elif kind < 0.8:  # text field with text in it
            s = word()
            w = max(int(np.ceil(f.getlength(s))) + 10, int(rng.integers(50, 120)))
            h = f.size + 10
            at = _place(rng, taken, min(w, width - 4), h, 2, top + 2, width - 2, height - 2)
            if at:
                x, y = at
                draw.rectangle((x, y, x + min(w, width - 4) - 1, y + h - 1), fill=(255, 255, 255), outline=(150, 150, 160))
                out.append(_text(draw, x + 4, y + 4, s, f, ink))
        else:  # a list or a popup menu: a column of items, maybe one highlighted
            items = [word() for _ in range(int(rng.integers(2, 6)))]
            w = min(width - 4, max(int(np.ceil(f.getlength(s))) for s in items) + 16)
            rh = f.size + int(rng.integers(4, 8))
            at = _place(rng, taken, w, rh * len(items) + 2, 2, top + 2, width - 2, height - 2)
            if at:
                x, y = at
                draw.rectangle((x, y, x + w - 1, y + rh * len(items) + 1), fill=_pick(rng, _FILLS), outline=(150, 150, 160))
                sel = int(rng.integers(-1, len(items)))
                for i, s in enumerate(items):
                    yy = y + 1 + i * rh
                    colour = ink
                    if i == sel:
                        draw.rectangle((x + 1, yy, x + w - 2, yy + rh - 1), fill=(48, 140, 198))
                        colour = (255, 255, 255)
                    wd = _text(draw, x + 6, yy + (rh - f.size) // 2, s, f, colour)
                    if wd.x1 <= width:
                        out.append(wd)
    # drop words that left the frame or share their text with another word (a query must have one answer)
    seen: dict[str, int] = {}
    for wd in out:
        seen[wd.text] = seen.get(wd.text, 0) + 1
    out = [wd for wd in out if seen[wd.text] == 1 and wd.x1 <= width and wd.y1 <= height and wd.x0 >= 0]
    return np.asarray(img, dtype=np.uint8), out
