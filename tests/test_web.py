"""The web page (`diffusion-classifier serve`): the race callback, the page's input rules, the request handler,
and the running server in headless Chromium (Playwright, the system browser) and through gradio_client."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
from PIL import Image

from diffusion_classifier.core.schedules import Staged
from diffusion_classifier.data import mnist as mnist_data
from diffusion_classifier.data.prompts import Candidates
from diffusion_classifier.errors import UserInputError
from diffusion_classifier.pipeline import DiffusionClassifier, RaceEvent
from diffusion_classifier.web.handler import (
    OUTPUTS,
    SKETCH,
    TOP,
    UPLOAD,
    Form,
    classify_updates,
    finish_markdown,
    page_of,
    race,
    race_markdown,
    ranking,
)
from diffusion_classifier.web.inputs import (
    MODEL_CLASSES,
    TYPED,
    check_template,
    class_labels,
    mnist_digit,
    parse_labels,
    preset_labels,
    sketch_image,
)
from diffusion_classifier.web.plot import error_figure

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOT = ROOT / "docs" / "figures" / "serve.png"
WAIT_MS = 30_000  # what the page has not shown in 30 s it will not show: a broken page fails then, not later
BROWSER_HELP = (
    "the browser tests need Debian's chromium: apt-get update && apt-get install -y chromium "
    "(.ci/run does this), or set CHROMIUM to a Chromium executable"
)


@pytest.fixture(scope="module")
def mnist() -> DiffusionClassifier:
    return DiffusionClassifier.from_pretrained("builtin:mnist", device="cpu")


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> dict[str, Path]:
    """Held-out MNIST digits (the test split) as PNG files, by true label: the first test digit of 1, 3, 5, 7."""
    images, labels = mnist_data.test_images()
    folder = tmp_path_factory.mktemp("digits")
    out = {}
    for i in (100, 300, 500, 700):
        out[labels[i]] = folder / f"digit-{labels[i]}.png"
        images[i].save(out[labels[i]])
    return out


@pytest.fixture(scope="module")
def broken_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("broken") / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n but then no image at all")
    return path


def form(**kw) -> Form:
    base = dict(source=UPLOAD, upload=None, sketch=None, labels="", preset=TYPED, template="", schedule="racing")
    return Form(**{**base, "seed": 0, **kw})


# ---- the race callback of DiffusionClassifier.__call__ ----------------------------------------------------


@pytest.mark.parametrize(
    "schedule,max_calls",
    [("racing", 10 * 500), (Staged((4, 8), (3, 1)), 10 * 4 + 3 * 4)],  # the cap for 10 labels; 4 trials, 4 more for 3
    ids=["racing", "staged"],
)
def test_race_events_report_labels_still_in_and_calls(mnist, digits, schedule, max_calls):
    events = []
    result = mnist(digits["3"], schedule=schedule, callback=events.append)
    sizes = [len(e.remaining) for e in events]
    assert len(events) >= 2
    assert sizes[0] == 10 and sizes[-1] < sizes[0]
    assert all(a >= b for a, b in zip(sizes, sizes[1:]))  # labels only ever drop out
    assert all(a.calls < b.calls for a, b in zip(events, events[1:]))
    assert events[-1].calls == result.calls
    assert events[0].max_calls == max_calls
    assert result.prediction_index in events[-1].remaining  # classes by index: two may share a name
    errs = list(events[-1].remaining.values())
    assert errs == sorted(errs)  # best first
    if isinstance(schedule, Staged):
        assert sizes == [10, 3]


def fake_race(rounds: int, calls: list, fail: bool = False):
    """A call(callback) like the classifier's: `rounds` rounds of events, then a result (or an error)."""

    def call(callback):
        for i in range(rounds):
            calls.append(i)
            callback(RaceEvent(remaining={0: 0.0}, calls=i + 1, max_calls=rounds))
            time.sleep(0.001)
        if fail:
            raise UserInputError("bad")
        return "result"

    return call


def test_race_streams_events_then_the_result_and_raises_the_error():
    items = list(race(fake_race(5, [])))
    assert items[-1] == "result" and all(isinstance(e, RaceEvent) for e in items[:-1]) and len(items) >= 2
    assert [e.calls for e in items[:-1]] == sorted(e.calls for e in items[:-1])
    with pytest.raises(UserInputError, match="bad"):
        list(race(fake_race(3, [], fail=True)))


def test_closing_the_race_stops_the_call():
    calls = []
    stream = race(fake_race(100_000, calls))
    next(stream)
    stream.close()  # the visitor left
    time.sleep(0.2)
    stopped_at = len(calls)
    time.sleep(0.2)
    assert len(calls) == stopped_at < 100_000


# ---- what the inputs mean ---------------------------------------------------------------------------------


def test_labels_one_per_line_or_comma_separated():
    assert parse_labels("cat\ndog\n\n  bird \n") == ["cat", "dog", "bird"]
    assert parse_labels(" cat, dog ,bird") == ["cat", "dog", "bird"]
    assert parse_labels("a cat, sitting\na dog") == ["a cat, sitting", "a dog"]  # lines keep their commas
    with pytest.raises(UserInputError, match="no labels"):
        parse_labels(" \n , ")


def test_templates_need_braces_and_a_text_model():
    assert check_template("  ", text_model=True) is None
    assert check_template("a photo of a {}.", text_model=True) == "a photo of a {}."
    with pytest.raises(UserInputError, match=r"has no '\{\}'"):
        check_template("a photo", text_model=True)
    with pytest.raises(UserInputError, match="class ids"):
        check_template("a {}", text_model=False)


def test_presets_come_from_the_bundled_prompt_tables():
    assert preset_labels("CIFAR-10", None)[:2] == ["airplane", "automobile"]
    assert len(preset_labels("CIFAR-10", None)) == len(preset_labels("STL-10", None)) == 10
    assert len(preset_labels("Pets", None)) == 37
    imagenet = preset_labels("ImageNet", None)
    assert len(imagenet) == len(set(imagenet)) == 1000  # one unique label per class
    assert imagenet[:2] == ["tench", "goldfish"]  # a class's name where it is the only one of that name
    assert [imagenet[k] for k in (657, 744, 836, 837)] == ["657:missile", "744:missile", "836:sunglasses",
                                                           "837:sunglasses"]  # fmt: skip
    assert preset_labels(MODEL_CLASSES, ["a", "b"]) == ["a", "b"]
    assert preset_labels(TYPED, ["a", "b"]) == []


def test_classes_that_share_a_name_are_shown_with_their_index():
    assert class_labels({3: "cat", 657: "missile", 744: "missile"}) == {3: "cat", 657: "657:missile",
                                                                         744: "744:missile"}  # fmt: skip
    assert class_labels({0: "cat", 1: "dog"}) == {0: "cat", 1: "dog"}


def drawn_layer(digit: Image.Image, scale: int = 10, color=(255, 255, 255)) -> np.ndarray:
    """A digit as the sketchpad returns a drawing of it: an RGBA layer, ink in the alpha channel, scale x larger."""
    alpha = np.asarray(digit.resize((digit.width * scale, digit.height * scale), Image.Resampling.BILINEAR))
    layer = np.zeros((*alpha.shape, 4), np.uint8)
    layer[..., :3], layer[..., 3] = color, alpha
    return layer


def test_a_drawing_is_framed_like_an_mnist_digit(mnist, digits):
    digit = Image.open(digits["7"]).convert("L")
    layer = drawn_layer(digit)
    framed = sketch_image([layer], layer, digit_size=28)
    arr = np.asarray(framed, np.float64)
    assert framed.size == (28, 28) and framed.mode == "L"
    assert arr[0].max() == 0 and arr[:, 0].max() == 0  # black background, white ink
    rows, cols = np.nonzero(arr > 0)
    assert max(np.ptp(rows), np.ptp(cols)) + 1 in (19, 20, 21)  # the ink fills the 20 px box, as in MNIST
    cy, cx = (np.indices(arr.shape) * arr).reshape(2, -1).sum(1) / arr.sum()
    assert abs(cy - 14) <= 1 and abs(cx - 14) <= 1  # centre of mass in the centre
    black_ink = sketch_image([drawn_layer(digit, color=(0, 0, 0))], None, digit_size=28)
    assert np.array_equal(np.asarray(black_ink), arr.astype(np.uint8))  # the ink's colour does not matter
    assert mnist(framed).prediction == "7"


def test_an_empty_sketch_is_a_user_error():
    with pytest.raises(UserInputError, match="sketchpad is empty"):
        sketch_image([np.zeros((280, 280, 4), np.uint8)], None, digit_size=28)
    assert mnist_digit(np.pad(np.ones((5, 1)), 10)).size == (28, 28)  # a thin stroke still fits


def test_error_figure_shows_leading_labels_and_their_gap_to_the_winner():
    errors = {
        "a": {"timesteps": [100, 500, 900, 300], "values": [0.1, 0.02, 0.001, 0.05]},
        "b": {"timesteps": [100, 500, 900, 300], "values": [0.2, 0.03, 0.002, 0.06]},
        "c": {"timesteps": [100, 500], "values": [0.3, 0.05]},
    }
    fig = error_figure(errors, T=1000, k=2)
    top, bottom = fig.axes
    assert [line.get_label() for line in top.get_lines()] == ["a (4 trials)", "b (4 trials)"]
    zero, gap = bottom.get_lines()  # the winner's own line at 0; b minus a on the same trials, per timestep bin
    assert np.allclose(zero.get_ydata(), 0)
    assert np.allclose(gap.get_xdata(), [100, 300, 500, 900]) and np.allclose(gap.get_ydata(), [0.1, 0.01, 0.01, 0.001])


# ---- one request, without a server --------------------------------------------------------------------------


def test_a_request_streams_the_race_then_the_ranking(mnist, digits):
    updates = list(classify_updates(mnist, page_of(mnist), form(upload=str(digits["5"]), labels="3\n5\n8")))
    assert updates[0]["message"] == "" and updates[0]["seen"].size == (112, 112)
    races = [u["race"] for u in updates[1:-1]]
    assert races and all("still in" in r for r in races)
    final = updates[-1]
    assert set(updates[0]) == set(final) == set(OUTPUTS)  # the first and the last update are whole
    assert max(final["label"], key=final["label"].get) == "5" and set(final["label"]) == {"3", "5", "8"}
    assert final["race"].startswith("**Race finished:** **5** won")
    assert "model calls" in final["stats"] and len(final["plot"].axes) == 2


def test_a_drawn_digit_request(mnist, digits):
    layer = drawn_layer(Image.open(digits["3"]).convert("L"))
    sketch = {"background": None, "layers": [layer], "composite": layer}
    updates = list(classify_updates(mnist, page_of(mnist), form(source=SKETCH, sketch=sketch, preset=MODEL_CLASSES,
                                                               labels="\n".join(map(str, range(10))))))  # fmt: skip
    assert max(updates[-1]["label"], key=updates[-1]["label"].get) == "3"


@pytest.mark.parametrize(
    "change, says",
    [
        (lambda broken: {"upload": str(broken)}, "cannot read 'broken.png' as an image"),
        (lambda broken: {"upload": None}, "no image"),
        (lambda broken: {"labels": " \n"}, "no labels"),
        (lambda broken: {"template": "a photo"}, "has no '{}'"),
        (lambda broken: {"labels": "3, cat"}, "unknown class 'cat'"),
        (lambda broken: {"labels": "3, 3"}, "duplicate label"),
        (lambda broken: {"source": SKETCH, "sketch": {"layers": [], "composite": None}}, "sketchpad is empty"),
    ],
    ids=["unreadable", "no-image", "no-labels", "template", "unknown-class", "duplicate", "empty-sketch"],
)
def test_bad_input_gives_one_message_and_clears_the_result(mnist, digits, broken_file, change, says):
    request = form(**{"upload": str(digits["3"]), "labels": "3\n8", **change(broken_file)})
    (update,) = classify_updates(mnist, page_of(mnist), request)
    assert update["message"].startswith("**Cannot classify:**") and says in update["message"]
    assert update["label"] is None and update["plot"] is None and update["warning"] in update["message"]


def test_a_text_model_uses_templates_and_the_published_prompts(tiny_sd_path, image_files):
    clf = DiffusionClassifier.from_pretrained(tiny_sd_path, device="cpu")
    page = page_of(clf)
    assert page.text_model and page.class_names is None and page.digit_size is None
    (bad,) = classify_updates(clf, page, form(upload=str(image_files[0]), labels="cat, dog", template="a photo"))
    assert "has no '{}'" in bad["message"]
    typed = list(classify_updates(clf, page, form(upload=str(image_files[0]), labels="cat, dog", template="a {}.")))
    assert set(typed[-1]["label"]) == {"cat", "dog"}
    preset = list(classify_updates(clf, page, form(upload=str(image_files[0]), preset="CIFAR-10", labels="")))
    assert set(preset[-1]["label"]) == set(preset_labels("CIFAR-10", None))  # the table's prompts, typed text unused


def test_two_classes_that_share_a_name_stay_two_labels(tiny_sd_path, image_files):
    """The published ImageNet table's two "missile" classes (657, 744): one prompt, two classes, two labels."""
    clf = DiffusionClassifier.from_pretrained(tiny_sd_path, device="cpu")
    missile = "a photo of a missile."
    cands = Candidates(("missile", "cat", "missile"), (missile, "a photo of a cat.", missile), (657, 3, 744))
    events = []
    result = clf(image_files[0], prompts=cands, schedule=Staged((4, 8), (2, 1)), callback=events.append)
    labels = class_labels(cands.class_names)
    assert list(events[0].remaining) != [] and set(events[0].remaining) == {657, 3, 744}  # the race keys by index
    assert set(ranking(result, labels)) == {"657:missile", "744:missile", "cat"}
    first = race_markdown(events[0], labels)
    assert "**657:missile**" in first and "**744:missile**" in first and "3 of 3 labels still in" in first
    finish = finish_markdown(result, cands, labels)
    assert finish.startswith(f"**Race finished:** **{labels[result.prediction_index]}** won after 8 trials")
    assert finish.count("~~") == 4  # the two others, each struck out once


@pytest.mark.slow
def test_the_imagenet_preset_races_a_thousand_classes(tiny_sd_path, image_files):
    clf = DiffusionClassifier.from_pretrained(tiny_sd_path, device="cpu")
    updates = list(classify_updates(clf, page_of(clf), form(upload=str(image_files[0]), preset="ImageNet")))
    assert updates[1]["race"].startswith("**Race:** 1000 of 1000 labels still in")
    final = updates[-1]
    assert list(final["label"]) and set(final["label"]) == set(preset_labels("ImageNet", None))
    assert {"657:missile", "744:missile", "tench"} <= set(final["label"])
    assert final["stats"].startswith(f"**Prediction: {max(final['label'], key=final['label'].get)}**")


# ---- the running server: headless Chromium and gradio_client ------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`diffusion-classifier serve` on builtin:mnist, on a free local port, in a subprocess."""
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "diffusion_classifier", "serve", "--port", str(port), "--device", "cpu"]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"serve did not start (exit {proc.poll()}):\n{log.read_text()[-3000:]}")
            time.sleep(1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium: Debian's package driven by Playwright (which cannot download its own browsers here)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail('the browser tests need Playwright: pip install -e ".[dev]"')
    path = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.fail(BROWSER_HELP)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    """A fresh page on the server; every request it makes is recorded (page.requested). Every wait on it
    gives up after WAIT_MS."""
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    context.set_default_timeout(WAIT_MS)
    pg = context.new_page()
    pg.requested = []
    pg.on("request", lambda r: pg.requested.append(r.url))
    pg.goto(server)
    pg.get_by_role("button", name="Classify").wait_for()
    yield pg
    context.close()


def upload(pg, image: Path) -> None:
    """Upload a file into the image input and wait until the page shows it (its URL names the file)."""
    pg.locator("#dc-image input[type=file]").set_input_files(str(image))
    pg.locator(f"#dc-image img[src*='{image.name}']").wait_for()


def classify_in_page(pg, image: Path | None = None) -> str:
    """Upload an image (when given), press Classify, and return the predicted label the page shows; when the
    page shows a message instead, fail with it at once."""
    from playwright.sync_api import expect

    if image is not None:
        upload(pg, image)
    message = pg.locator("#dc-message")
    stale = message.inner_text().strip() != ""
    pg.get_by_role("button", name="Classify").click()
    if stale:  # a previous request's message, until this request's first update clears it
        expect(message).to_have_text("")
    said = message.filter(has_text=re.compile(r"\S"))
    pg.locator("#dc-stats", has_text="Prediction").or_(said).first.wait_for()
    if said.count():
        pytest.fail(f"the page says {said.inner_text().strip()!r} instead of a prediction")
    return pg.locator("#dc-label [data-testid=label-output-value]").inner_text().strip()


def only_local(requested: list[str], server_url: str) -> list[str]:
    """The requests that went anywhere but the local server (data: and blob: URLs stay in the page)."""
    here = urlparse(server_url).netloc
    return [u for u in requested if urlparse(u).scheme in ("http", "https", "ws", "wss") and urlparse(u).netloc != here]


@pytest.mark.slow
@pytest.mark.parametrize("truth", ["3", "7"])
def test_browser_classifies_a_held_out_digit(page, server, digits, truth):
    assert classify_in_page(page, digits[truth]) == truth
    assert "Race finished" in page.locator("#dc-race").inner_text()
    assert page.locator("#dc-seen img").count() == 1  # the image classified
    assert only_local(page.requested, server) == []  # nothing fetched from the internet


@pytest.mark.slow
def test_browser_broken_file_shows_a_message_and_the_server_keeps_serving(page, server, digits, broken_file):
    upload(page, broken_file)
    page.get_by_role("button", name="Classify").click()
    message = page.locator("#dc-message", has_text="Cannot classify")
    message.wait_for()
    assert "cannot read 'broken.png' as an image" in message.inner_text()
    assert "Traceback" not in page.content()
    assert classify_in_page(page, digits["7"]) == "7"
    assert page.locator("#dc-message").inner_text().strip() == ""


def draw(pg, strokes: list[list[tuple[float, float]]]) -> None:
    """Draw strokes on the sketchpad; points are fractions of the canvas (0..1), from its centre outward."""
    box = pg.locator("#dc-sketch canvas").first.bounding_box()
    side = min(box["width"], box["height"])
    x0, y0 = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    for stroke in strokes:
        pg.mouse.move(x0 + stroke[0][0] * side, y0 + stroke[0][1] * side)
        pg.mouse.down()
        for x, y in stroke[1:]:
            pg.mouse.move(x0 + x * side, y0 + y * side, steps=8)
        pg.mouse.up()


@pytest.mark.slow
def test_browser_classifies_a_drawn_digit(page, server):
    page.get_by_role("tab", name="Draw").click()
    page.locator("#dc-sketch canvas").first.wait_for()
    draw(page, [[(-0.22, -0.3), (0.22, -0.3), (-0.03, 0.33)]])  # a 7: the bar, then the stem
    assert classify_in_page(page) == "7"
    page.locator("#dc-plot img, #dc-plot canvas, #dc-plot svg").first.wait_for()
    if os.environ.get("DC_WRITE_SCREENSHOT") == "1":  # README's figure
        page.screenshot(path=str(SCREENSHOT), full_page=True)
    assert only_local(page.requested, server) == []


@pytest.mark.slow
def test_api_through_gradio_client(server, digits):
    from gradio_client import Client, handle_file

    client = Client(server, verbose=False)
    outputs = client.predict(image=handle_file(str(digits["1"])), api_name="/classify")
    message, label, race, summary, _plot, _seen = outputs
    assert message == "", message  # a failed request says why here, and has no ranking
    assert label["label"] == "1" and "Prediction: 1" in summary and "Race finished" in race
    shown = [c["label"] for c in label["confidences"]]  # gr.Label(num_top_classes=TOP): the top TOP of ten digits
    assert shown[0] == "1" and len(set(shown)) == len(shown) == TOP and set(shown) <= {str(d) for d in range(10)}
    out = client.predict(image=handle_file(str(digits["5"])), labels="3, 5, 8", preset=TYPED, api_name="/classify")
    assert out[0] == "" and out[1]["label"] == "5" and {c["label"] for c in out[1]["confidences"]} == {"3", "5", "8"}
    bad = client.predict(image=handle_file(str(digits["5"])), labels="", preset=TYPED, api_name="/classify")
    assert "no labels" in bad[0] and not bad[1]  # a message, and no ranking
