"""Reading by matching: a rendered instruction word is found where it is shown, among other words."""

import numpy as np
import torch

from agent.instruction import WORD_H, WORD_W, render_word
from agent.reading import CELL, instruction_echo, match_maps


def screen_with(words_at: dict[str, tuple[int, int]]) -> np.ndarray:
    frame = np.full((1, 210, 160, 3), 255, np.uint8)
    for word, (y, x) in words_at.items():
        px, _ = render_word(word)
        frame[0, y:y + WORD_H, x:x + WORD_W] = np.minimum(frame[0, y:y + WORD_H, x:x + WORD_W], px)
    return frame


def test_each_word_peaks_where_it_is_shown_and_masked_words_stay_off():
    places = {"harbor": (30, 10), "orbit": (90, 60), "lantern": (150, 20)}
    frame = screen_with(places)
    query = ["orbit", "harbor", "lantern", "unused"]
    px, widths = zip(*[render_word(w) for w in query])
    mask = np.array([[True, True, True, False]])
    maps = match_maps(frame, np.stack(px)[None], np.array(widths)[None], mask)
    assert maps.shape == (1, 4, 208 // CELL, 160 // CELL)
    for k, word in enumerate(query[:3]):
        y, x = places[word]
        cy, cx = divmod(int(maps[0, k].argmax()), maps.shape[-1])
        centre = ((y + WORD_H // 2) // CELL, (x + WORD_W // 2) // CELL)
        assert abs(cy - centre[0]) <= 1 and abs(cx - centre[1]) <= 1, (word, (cy, cx), centre)
        assert float(maps[0, k].max()) > 0.9
    assert float(maps[0, 3].max()) == -1.0  # a masked word matches nowhere
    again = match_maps(frame, np.stack(px)[None], np.array(widths)[None], mask)  # cached templates: same answer
    assert torch.equal(maps, again)


def test_words_at_the_left_and_top_edges_are_found_where_they_are_shown():
    # a left-aligned label's centre is nearer the edge than half the word canvas (WORD_W / 2 = 40 px)
    frame = np.full((1, 210, 160, 3), 255, np.uint8)
    places = {"Name": (0, 4), "harbor": (100, 2)}  # (top, left) of the ink
    for word, (y, x) in places.items():
        px, width = render_word(word)
        ink = px[:, (WORD_W - width) // 2 - 1:]  # the canvas from just before the word's ink
        frame[0, y:y + WORD_H, x:x + ink.shape[1]] = np.minimum(frame[0, y:y + WORD_H, x:x + ink.shape[1]], ink)
    px, widths = zip(*[render_word(w) for w in places])
    maps = match_maps(frame, np.stack(px)[None], np.array(widths)[None], np.array([[True, True]]))
    for k, (word, (y, x)) in enumerate(places.items()):
        cy, cx = divmod(int(maps[0, k].argmax()), maps.shape[-1])
        centre = ((y + WORD_H // 2) // CELL, (x + 1 + widths[k] // 2) // CELL)
        assert abs(cy - centre[0]) <= 1 and abs(cx - centre[1]) <= 1, (word, (cy, cx), centre)
        assert float(maps[0, k].max()) > 0.9, word


def test_a_word_laid_out_a_pixel_wider_than_its_template_still_matches_as_itself(monkeypatch):
    # Qt lays some words out a pixel wider than the template (focus-text's "Email" and "Phone" matched
    # themselves at 0.73-0.76 and "in" or "Enter" matched them at up to 0.84)
    from PIL import Image, ImageDraw

    import agent.reading as reading
    from agent.instruction import _font
    from agent.policy import SHOWN

    for word in ("Email", "Phone", "harbor"):
        img = Image.new("RGB", (160, 210), (255, 255, 255))
        draw, x = ImageDraw.Draw(img), 20.0
        for i, ch in enumerate(word):  # glyph by glyph, one pixel more after the middle one
            draw.text((round(x), 100), ch, font=_font(), fill=(0, 0, 0))
            x += _font().getlength(ch) + (1 if i == len(word) // 2 - 1 else 0)
        frame = np.asarray(img, dtype=np.uint8)[None]
        px, width = render_word(word)
        args = (px[None, None], np.array([[width]]), np.array([[True]]))
        m = match_maps(frame, *args)[0, 0]
        cy, cx = divmod(int(m.argmax()), m.shape[-1])
        assert float(m.max()) > SHOWN and abs(cy - (100 + WORD_H // 2) // CELL) <= 1, word
        assert abs(cx - (20 + (width + 1) // 2) // CELL) <= 1, word
        monkeypatch.setattr(reading, "STRETCH", ((0, 0.0),))
        monkeypatch.setattr(reading, "_CACHE", type(reading._CACHE)())
        assert float(match_maps(frame, *args).max()) < 0.75, word  # the template alone at its own width
        monkeypatch.undo()


def header_and_label(line: str, label: str, label_at: tuple[int, int]) -> np.ndarray:
    """A screen with `line` written out at the top (a task header) and `label` alone at (top, left)."""
    from PIL import Image, ImageDraw

    from agent.instruction import _font

    img = Image.new("RGB", (160, 210), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    x = 4
    for word in line.split():  # word by word at whole pixels, a space apart, as a GUI label lays them out
        draw.text((x, 6), word, font=_font(), fill=(0, 0, 0))
        x += int(np.ceil(_font().getlength(word + " ")))
    draw.text(label_at[::-1], label, font=_font(), fill=(0, 0, 0))
    return np.asarray(img, dtype=np.uint8)[None]


def test_the_instruction_written_out_is_echo_and_a_label_with_one_of_its_words_is_not():
    words = ["Enter", "the", "City", "field"]
    frame = header_and_label("Enter the City field", "City", (120, 6))
    px, widths = zip(*[render_word(w) for w in words])
    widths, mask = torch.tensor([widths]), torch.ones(1, len(words), dtype=torch.bool)
    maps = match_maps(frame, np.stack(px)[None], widths.numpy(), mask.numpy())
    echo = instruction_echo(maps, widths, mask)[0]  # (h,w)
    header, body = maps[0, :, :8], maps[0, :, 20:]  # rows 0-31 px; rows from 80 px down
    for k, word in enumerate(words):  # each word of the header line, at its peak there
        cy, cx = divmod(int(header[k].argmax()), header.shape[-1])
        assert float(header[k].max()) > 0.9 and echo[cy, cx], word
    cy, cx = divmod(int(body[2].argmax()), body.shape[-1])  # the label "City", alone
    assert float(body[2].max()) > 0.9 and abs(cy + 20 - (120 + WORD_H // 2) // CELL) <= 1
    assert not echo[20:].any()


def test_a_header_that_wraps_one_word_onto_its_next_line_is_echo_there_too():
    # choose-radio's header wraps as "Choose falcon and click" / "Submit.": that lone "Submit." has no
    # neighbour on its line, and before this rule it counted as shown alone, like the Submit button
    from PIL import Image, ImageDraw

    from agent.instruction import _font

    words = ["Choose", "falcon", "and", "click", "Submit"]
    img = Image.new("RGB", (160, 210), (255, 255, 255))
    draw, x = ImageDraw.Draw(img), 6
    for word in words[:-1]:
        draw.text((x, 6), word, font=_font(), fill=(0, 0, 0))
        x += int(np.ceil(_font().getlength(word + " ")))
    draw.text((6, 20), "Submit.", font=_font(), fill=(0, 0, 0))  # the next line, back at the left
    draw.text((30, 120), "falcon", font=_font(), fill=(0, 0, 0))  # the radio's label
    draw.text((24, 188), "Submit", font=_font(), fill=(0, 0, 0))  # the button
    frame = np.asarray(img, dtype=np.uint8)[None]
    px, widths = zip(*[render_word(w) for w in words])
    widths, mask = torch.tensor([widths]), torch.ones(1, len(words), dtype=torch.bool)
    maps = match_maps(frame, np.stack(px)[None], widths.numpy(), mask.numpy())
    echo = instruction_echo(maps, widths, mask)[0]
    top = maps[0, 4, :10]  # "Submit" on the header's second line
    cy, cx = divmod(int(top.argmax()), top.shape[-1])
    assert float(top.max()) > 0.9 and abs(cy - (20 + WORD_H // 2) // CELL) <= 1 and echo[cy, cx]
    for k, y in ((4, 188), (1, 120)):  # the button and the radio's label stay targets
        body = maps[0, k, 20:]
        by, bx = divmod(int(body.argmax()), body.shape[-1])
        assert float(body.max()) > 0.9 and abs(by + 20 - (y + WORD_H // 2) // CELL) <= 1 and not echo[by + 20, bx]
    assert not echo[20:].any()
    assert not instruction_echo(maps, widths, mask, wrap=(9, 9))[0][cy, cx]  # without the wrap rule it was not


def test_the_label_prior_points_below_the_named_word_and_not_at_the_instructions_echo():
    from pathlib import Path

    from agent.learner import Agent, AgentConfig, ObsBatch
    from agent.policy import LABEL_CELLS, SUB

    torch.manual_seed(0)
    agent = Agent(AgentConfig(encoder=str(Path(__file__).parents[1] / "fixtures" / "tiny-encoder.json"),
                              ignore_echo=True, label_prior=True))
    instruction = 'Enter "maple" in the City field.'
    ob = ObsBatch(header_and_label(instruction, "City", (120, 6)), [instruction])
    gh, gw = agent.policy.grid

    def screen_cells(a):  # (N,16) per patch and sub-cell -> (h, w) per 4 px cell
        return a.reshape(gh, gw, SUB, SUB).permute(0, 2, 1, 3).reshape(gh * SUB, gw * SUB)

    def point_logits():
        with torch.no_grad():
            o, _ = agent._forward(ob)
        return screen_cells(o.sub_logits[0])

    with_label = point_logits()
    agent.policy.label_gain.data.zero_()
    lift = with_label - point_logits()
    cy, cx = divmod(int(lift.argmax()), lift.shape[-1])
    label_row = (120 + WORD_H // 2) // CELL
    assert float(lift.max()) > 0.5 and label_row <= cy <= label_row + LABEL_CELLS and cx < 40 // CELL, (cy, cx)
    assert float(lift[label_row + 4, cx]) > 0.5 * float(lift.max())  # 16 px below the word: where its field would be
    assert float(lift[: 40 // CELL].abs().max()) < 0.1 * float(lift.max())  # nothing from the header's words
    agent.policy.ignore_echo = False
    with torch.no_grad():
        seen, _ = agent._forward(ob)
    assert float(screen_cells(seen.match[0])[: 40 // CELL].max()) > 0.1


class _Pick(torch.nn.Module):
    """A word choice fixed on word k: word tokens (B,K,D) -> logits (B,K,1)."""

    def __init__(self, k: int):
        super().__init__()
        self.k = k

    def forward(self, w):
        out = torch.full((*w.shape[:2], 1), -30.0)
        out[:, self.k] = 30.0
        return out


def test_the_label_prior_reads_under_the_word_shown_alone_whatever_the_word_to_click_on():
    from pathlib import Path

    from agent.actions import words
    from agent.learner import Agent, AgentConfig, ObsBatch
    from agent.policy import LABEL_CELLS

    torch.manual_seed(0)
    agent = Agent(AgentConfig(encoder=str(Path(__file__).parents[1] / "fixtures" / "tiny-encoder.json"),
                              ignore_echo=True, label_prior=True, label_select=True))
    instruction = 'Enter "maple" in the City field.'
    texts = [instruction[a:b] for a, b in words(instruction)]
    ob = ObsBatch(header_and_label(instruction, "City", (120, 6)), [instruction])
    label_row = (120 + WORD_H // 2) // CELL
    agent.policy.word_select = _Pick(texts.index("maple"))  # click on: a word shown only in the header

    def lift() -> float:  # the label prior's largest lift in the rows from the label down
        logits = []
        for gain in (4.0, 0.0):
            agent.policy.label_gain.data.fill_(gain)
            with torch.no_grad():
                o, _ = agent._forward(ob)
            logits.append(o.patch_logits[0])
        gh, gw = agent.policy.grid
        d = (logits[0] - logits[1]).reshape(gh, gw)  # per 16 px patch
        rows = slice(label_row * CELL // 16, (label_row + LABEL_CELLS) * CELL // 16 + 1)
        return float(d[rows, :40 // 16 + 1].max())

    agent.policy.label_select = _Pick(texts.index("City"))
    under_city = lift()  # under City, though the word to click on is elsewhere
    assert under_city > 2.0
    for other in ("maple", "field", "Enter"):  # not shown alone: the choice falls to the only word that is
        agent.policy.label_select = _Pick(texts.index(other))
        assert abs(lift() - under_city) < 0.01, other
    del agent.policy.label_select  # one choice for both: the label prior goes where the click's word is
    assert lift() < under_city - 2.0  # (an unrelated word still correlates ~0.5 with the label's pixels)


def test_matching_beside_the_encoder_gives_the_same_decision_as_after_it():
    from pathlib import Path

    from agent.learner import Agent, AgentConfig, ObsBatch

    for priors in ({}, {"ignore_echo": True, "label_prior": True}):  # these also find the echo beside the encoder
        torch.manual_seed(0)
        agent = Agent(AgentConfig(encoder=str(Path(__file__).parents[1] / "fixtures" / "tiny-encoder.json"), **priors))
        ob = ObsBatch(screen_with({"harbor": (30, 10), "orbit": (90, 60), "Click": (4, 4), "the": (4, 34)}),
                      ["Click the orbit button"])
        outs = []
        for concurrent in (True, False):
            agent.policy.concurrent_matching = concurrent
            _, _, value, _, _, out, match = agent.act(ob, greedy=True)
            outs.append((value, out.patch_logits, match[0]))
        for a, b in zip(*outs):
            assert torch.equal(a, b)


def test_the_learned_matcher_reads_the_encoders_own_stem_features_as_if_it_ran_the_stem_again():
    from agent.learner import Agent, AgentConfig, ObsBatch

    torch.manual_seed(0)
    agent = Agent(AgentConfig(threads=1, pretrained=""))  # the default encoder: a conv stem the matcher shares
    policy = agent.policy
    assert policy._shared_stem is not None
    frames = np.random.default_rng(0).integers(0, 256, (2, 210, 160, 3), dtype=np.uint8)
    ob = ObsBatch(frames, ["Click the orbit button", 'Type "harbor" and press Enter.'])

    def run():
        agent.optimizer.zero_grad()
        o, _ = agent._forward(ob)
        (o.sub_logits.sum() + o.value.sum()).backward()
        return o.sub_logits.detach(), torch.cat([p.grad.flatten() for p in policy.matcher.stem.parameters()])

    shared = run()
    policy._shared_stem = None  # run the stem on the screen a second time, as before
    again = run()
    assert torch.equal(shared[0], again[0])
    assert torch.allclose(shared[1], again[1], rtol=1e-4, atol=1e-6 * float(again[1].abs().max()))
