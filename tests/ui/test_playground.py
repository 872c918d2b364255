"""The playground (GET /, app/ui/) in a real browser, Debian's headless Chromium, against a real
server: a digit drawn with mouse events is classified, streamed tokens appear before the stream
ends, the interpolation slider changes the image, errors are shown with their status, every panel
works at 360 px with labelled controls, and the page never requests anything outside the server."""

from __future__ import annotations

import re
import struct
import threading
from pathlib import Path

from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import expect

from app.api.ui import ASSETS, CONTENT_SECURITY_POLICY
from tests.ui.browser import PANEL_MODELS, draw_zero, generate_text, open_model, save_panel, show_panel

ROOT = Path(__file__).resolve().parents[2]
ASSET_BUDGET_BYTES = 300_000
PHONE_WIDTH = 360
SCREENSHOTS = ROOT / "docs" / "playground"


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


# ------------------------------------------------------------------------------ the page over HTTP


def test_page_and_assets_are_served_small_with_a_strict_policy(ui_server) -> None:
    with ui_server.client() as client:
        page = client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert client.get("/ui").content == page.content
        assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert "default-src 'self'" in CONTENT_SECURITY_POLICY
        assert page.headers["x-content-type-options"] == "nosniff"
        referenced = re.findall(r'(?:src|href)="(ui/[^"]+)"', page.text)
        assert sorted(referenced) == sorted(f"ui/{name}" for name in ASSETS if name != "index.html")
        served = len(page.content)
        for path in referenced:
            asset = client.get(f"/{path}")
            assert asset.status_code == 200, path
            assert asset.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
            served += len(asset.content)
        print(f"\nplayground assets: {served} bytes served ({len(referenced) + 1} files)")
        assert served < ASSET_BUDGET_BYTES
        for missing in ("/ui/nope.js", "/ui/__init__.py", "/ui/..%2Fapi%2Fui.py", "/ui/../app/main.py"):
            answer = client.get(missing)
            assert answer.status_code == 404 and "error" in answer.json(), missing  # no file, no route
        # The page is not API: the OpenAPI schema documents the endpoints it calls, and the plots route.
        paths = client.get("/openapi.json").json()["paths"]
        assert "/" not in paths and "/ui" not in paths and "/models/{name}/plots/{file}" in paths


# ------------------------------------------------------------------------------------ in a browser


def test_a_digit_drawn_with_the_mouse_is_classified(recorded, ui_server) -> None:
    page = recorded.page
    open_model(page, ui_server.url, "lenet5-digits")
    draw_zero(page)
    label = page.locator('section[data-panel="classifier"] .label')
    label.wait_for()
    assert label.inner_text() == "0"
    assert page.locator(".bars li").count() == 5  # top-k bars
    # The picture the model saw is shown at the model's size, and the curl command is what was sent.
    assert page.locator('canvas.pixels[aria-label="The 28x28 input the model sees"]').count() == 1
    curl = page.locator("#curl").inner_text()
    assert curl.startswith(f"curl -s '{ui_server.url}/predict'") and '"model":"lenet5-digits"' in curl
    # The report's confusion matrix and curves, through the plots route.
    for plot in ("confusion_matrix.png", "curves.png"):
        image = page.locator(f'#how img[src*="/plots/{plot}"]')
        image.scroll_into_view_if_needed()
        page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
    assert recorded.errors == []


def test_streamed_tokens_appear_before_the_stream_ends(recorded, ui_server) -> None:
    page = recorded.page
    open_model(page, ui_server.url, "gpt-corpus")
    stream = generate_text(page, seed=3, max_new_tokens=400)
    # The page recorded each token's arrival and each read of the response body: the tokens came in
    # many reads, the first long before the last, and were on the page before the summary arrived.
    assert len(stream["tokenTimes"]) == 400
    assert len(stream["chunks"]) > 1
    assert stream["chunks"][0]["tokens"] < 400
    assert stream["firstToken"] < stream["tokenTimes"][-1] <= stream["end"]
    section = page.locator('section[data-panel="language model"]')
    assert len(section.locator(".tokens").inner_text()) > 100
    for stat in ("time to first token", "tokens/s"):
        assert re.search(r"\d", section.locator(f"dt:text('{stat}') + dd").inner_text()), stat
    assert section.locator("dt:text('finish') + dd").inner_text() == "length"
    assert "curl -sN" in page.locator("#curl").inner_text()
    assert recorded.errors == []


def test_the_interpolation_slider_changes_the_image(recorded, ui_server) -> None:
    page = recorded.page
    open_model(page, ui_server.url, "vae-digits")
    image = page.locator("img.walk[src]")
    image.wait_for()
    first = image.get_attribute("src")
    slider = page.get_by_label("Position between the seeds")
    slider.focus()
    page.keyboard.press("End")  # the keyboard moves it: the last step, the other seed's image
    page.wait_for_function("first => document.querySelector('img.walk').src !== first", arg=first)
    last = image.get_attribute("src")
    page.keyboard.press("Home")
    assert image.get_attribute("src") == first and last != first
    # The VAE's latent sliders decode live.
    decoded = page.locator('img[alt="image decoded from the latent sliders"]')
    page.wait_for_function("img => img.src.startsWith('data:image/png')", arg=decoded.element_handle())
    before = decoded.get_attribute("src")
    page.get_by_label("z1", exact=True).fill("2.5")
    page.wait_for_function("([img, before]) => img.src !== before", arg=[decoded.element_handle(), before])
    assert recorded.errors == []


def test_errors_are_shown_with_their_status(recorded, ui_server) -> None:
    """A 422 (characters outside the vocabulary) and a 429 (the model's admission bound) are shown
    with the status and the server's own message."""
    page = recorded.page
    open_model(page, ui_server.url, "lstm-order")
    message = page.locator("#message")
    page.get_by_label("Text", exact=True).fill("ABxyz")
    page.wait_for_function("() => document.querySelector('#message').dataset.status === '422'")
    assert "422" in message.inner_text() and "'x'" in message.inner_text()
    page.get_by_label("Map unknown characters to <unk>").check()
    page.wait_for_function("() => document.querySelector('#message').hidden")

    # Two clients search back to back, so the seq2seq model's one slot is (nearly) always taken; the
    # page's Translate is refused, shown, and a later one succeeds once they stop.
    open_model(page, ui_server.url, "seq2seq-dates")
    page.locator('section[data-panel="seq2seq model"] .output').wait_for()
    stop = threading.Event()

    def search() -> None:
        body = {"model": "seq2seq-dates", "input": "the 3rd of March in the year 2021", "num_beams": 16}
        with ui_server.client() as client:
            while not stop.is_set():
                client.post("/generate", json=body)

    searchers = [threading.Thread(target=search) for _ in range(2)]
    for thread in searchers:
        thread.start()
    try:
        translate = page.get_by_role("button", name="Translate")
        for _ in range(20):  # a click that lands between two searches is answered: click again
            translate.click()
            try:
                page.wait_for_function(
                    "() => document.querySelector('#message').dataset.status === '429'", timeout=2000
                )
                break
            except PlaywrightTimeout:
                pass
    finally:
        stop.set()
        for thread in searchers:
            thread.join()
    text = message.inner_text()
    assert "429 Too many requests" in text and "retry after 1 s" in text and "seq2seq-dates" in text
    translate.click()
    page.wait_for_function("() => document.querySelector('#message').hidden")
    failures = [e for e in recorded.errors if "Failed to load resource" not in e]
    assert failures == []


def test_every_panel_works_at_phone_width_with_labelled_controls(recorded, ui_server, tmp_path) -> None:
    page, width = recorded.page, PHONE_WIDTH
    page.set_viewport_size({"width": width, "height": 740})
    for panel in PANEL_MODELS:
        kind = show_panel(page, ui_server.url, panel)
        overflow = page.evaluate("() => document.documentElement.scrollWidth")
        assert overflow <= width, f"{panel}: the page is {overflow} px wide at {width} px"
        unnamed = page.evaluate(
            """() => [...document.querySelectorAll('input, select, textarea, button, canvas[tabindex]')]
                .filter(c => !(c.labels && c.labels.length) && !c.getAttribute('aria-label')
                             && !c.textContent.trim())
                .map(c => c.outerHTML.slice(0, 80))"""
        )
        assert unnamed == [], f"{panel}: controls without a label: {unnamed}"
        save_panel(page, kind, tmp_path / f"{panel}.png")
        width_px, _ = png_size((tmp_path / f"{panel}.png").read_bytes())
        assert width_px <= width, panel
    # The drawing pad also takes the keyboard: arrow keys draw, and the drawing is classified.
    open_model(page, ui_server.url, "lenet5-digits")
    page.locator("canvas.pad").focus()
    for key in ["ArrowUp"] * 8 + ["ArrowDown"] * 16:
        page.keyboard.press(key)
    page.locator('section[data-panel="classifier"] .label').wait_for()
    assert recorded.errors == []


def test_the_readme_screenshots_exist_for_every_panel() -> None:
    """docs/playground/<panel>.png, written by scripts/playground_screenshots.py, one per panel."""
    for panel in PANEL_MODELS:
        data = (SCREENSHOTS / f"{panel}.png").read_bytes()
        width, height = png_size(data)
        assert width <= 1000 and height <= 1400 and len(data) < 200_000, (panel, width, height, len(data))


def test_nothing_outside_the_server_even_when_asked(recorded, ui_server) -> None:
    """The policy is enforced by the browser: a script that tries to fetch another origin is blocked
    before any request leaves (the fixture checks that no request went elsewhere)."""
    page = recorded.page
    open_model(page, ui_server.url, "lenet5-digits")
    outcome = page.evaluate(
        "() => fetch('http://192.0.2.1/x').then(() => 'fetched', e => 'blocked: ' + e.name)"
    )
    assert outcome.startswith("blocked")
    assert any("Content Security Policy" in e or "Refused to connect" in e for e in recorded.errors)


# ------------------------------------------------------------------- the panels of the newer kinds

# The mean brightness in [0, 1] of an <img> or <canvas> at the model's size (28x28 digits), read back
# in the page.
BRIGHTNESS = """node => {
  const canvas = document.createElement('canvas');
  canvas.width = canvas.height = 28;
  const ctx = canvas.getContext('2d');
  ctx.drawImage(node, 0, 0, 28, 28);
  const data = ctx.getImageData(0, 0, 28, 28).data;
  let sum = 0;
  for (let i = 0; i < data.length; i += 4) sum += data[i];
  return sum / (255 * 28 * 28);
}"""


def test_the_class_picked_is_the_class_generated(recorded, ui_server) -> None:
    page = recorded.page
    open_model(page, ui_server.url, "cgan-digits")
    section = page.locator('section[data-panel="class-conditional image generator"]')
    samples = section.locator(".grid figure.sample")
    expect(samples).to_have_count(8)
    # By default each class in turn: the answer's classes, shown under the images, are 0, 1, 2, ...
    assert [samples.nth(i).get_attribute("data-class") for i in range(8)] == [str(i) for i in range(8)]
    section.get_by_label("Class", exact=True).select_option(label="7")
    page.wait_for_function(
        "s => [...document.querySelectorAll(s)].every(f => f.dataset.class === '7')",
        arg='section[data-panel="class-conditional image generator"] .grid figure.sample',
    )
    assert section.locator(".grid figcaption").all_inner_texts() == ["class 7"] * 8
    expect(section.locator("img.walk + figcaption")).to_have_text("class 7")
    # And they are sevens: the committed digit classifier says so of (nearly) all of them.
    sources = section.locator(".grid img").evaluate_all("images => images.map(i => i.src)")
    images = [src.split(",", 1)[1] for src in sources]  # data:image/png;base64,...
    with ui_server.client() as client:
        answer = client.post("/predict", json={"model": "lenet5-digits", "inputs": images}).json()
    assert [item["label"] for item in answer["outputs"]].count("7") >= 6
    assert recorded.errors == []


def test_the_translation_differs_from_the_input_and_follows_the_direction(recorded, ui_server) -> None:
    page = recorded.page
    open_model(page, ui_server.url, "cyclegan-strokes")
    section = page.locator('section[data-panel="image translator"]')
    draw_zero(page, 'section[data-panel="image translator"] canvas.pad')
    output = section.locator("img.translation")

    def translated(direction: str) -> tuple[float, float, float]:
        """(input, output brightness, mean |output - input|) once the answer for ``direction`` shows."""
        page.wait_for_function(
            "([img, d]) => img.dataset.direction === d && img.complete && img.naturalWidth > 0",
            arg=[output.element_handle(), direction],
        )
        sent = section.locator("canvas.sent")
        difference = page.evaluate(
            """([a, b]) => {
              const pixels = (node) => {
                const c = document.createElement('canvas');
                c.width = c.height = 28;
                c.getContext('2d').drawImage(node, 0, 0, 28, 28);
                return c.getContext('2d').getImageData(0, 0, 28, 28).data;
              };
              const [x, y] = [pixels(a), pixels(b)];
              let sum = 0;
              for (let i = 0; i < x.length; i += 4) sum += Math.abs(x[i] - y[i]);
              return sum / (255 * 28 * 28);
            }""",
            [sent.element_handle(), output.element_handle()],
        )
        return sent.evaluate(BRIGHTNESS), output.evaluate(BRIGHTNESS), difference

    assert section.get_by_label("Direction").input_value() == "thin_to_thick"  # the graphs' first role
    ink_in, thickened, changed = translated("thin_to_thick")
    first = output.get_attribute("src")
    section.get_by_label("Direction").select_option("thick_to_thin")
    ink_in_again, thinned, changed_again = translated("thick_to_thin")
    assert ink_in_again == ink_in  # the same drawing was sent
    assert changed > 0.02 and changed_again > 0.02  # each output differs from its input
    assert output.get_attribute("src") != first
    assert thickened > ink_in > thinned  # thin -> thick adds ink to the strokes, thick -> thin takes it
    expect(section.locator("img.translation + figcaption")).to_have_text("Translated: thick to thin")
    assert recorded.errors == []


def test_zero_shot_follows_the_labels_and_a_query_finds_its_image(recorded, ui_server) -> None:
    page = recorded.page
    open_model(page, ui_server.url, "clip-shapes")
    section = page.locator('section[data-panel="dual encoder"]')
    for name, value in (("Shape", "star"), ("Colour", "blue"), ("Size", "large"), ("Position", "middle")):
        section.get_by_label(name, exact=True).select_option(value)
    best = section.locator(".label")
    expect(best).to_have_text("a photo of a star")
    shape_bars = section.locator(".bars li").all_inner_texts()
    assert len(shape_bars) == 6
    # Other labels, other probabilities: the same image against the colour prompts.
    section.get_by_role("button", name="Colours").click()
    expect(best).to_have_text("a photo of something blue")
    assert len(section.locator(".bars li").all_inner_texts()) == 8
    # Labels written by hand.
    prompts = section.get_by_label("Label prompts (one per line)")
    prompts.fill("a photo of a circle\na photo of a star")
    expect(section.locator(".bars li")).to_have_count(2)
    expect(best).to_have_text("a photo of a star")
    # A character outside the vocabulary: the 422 is shown, naming the label; mapped, it is answered.
    prompts.fill("A photo of a star\na photo of a circle")
    page.wait_for_function("() => document.querySelector('#message').dataset.status === '422'")
    assert "labels[0]" in page.locator("#message").inner_text()
    section.get_by_label("Map unknown characters to <unk>").check()
    page.wait_for_function("() => document.querySelector('#message').hidden")

    # Retrieval: the query describes one gallery image in full (a held-out wording); it ranks first.
    captions = section.locator(".gallery figcaption").all_inner_texts()
    assert len(captions) == 8 and len(set(captions)) == 8
    described = [f"a photo of a {caption.split(': ', 1)[1]}" for caption in captions]
    query = section.get_by_label("Query", exact=True)
    first = section.locator(".ranking li").first
    assert query.input_value() == described[4]  # the panel starts with image 4's description
    expect(first).to_have_attribute("data-index", "4")
    for index in (1, 6):
        query.fill(described[index])
        expect(first).to_have_attribute("data-index", str(index))
    expect(section.locator(".ranking li")).to_have_count(8)
    failures = [e for e in recorded.errors if "Failed to load resource" not in e]
    assert failures == []


def test_the_diffusion_walk_streams_its_steps_and_draws_the_class(recorded, ui_server) -> None:
    page = recorded.page
    open_model(page, ui_server.url, "diffusion-digits")
    section = page.locator('section[data-panel="diffusion model"]')
    expect(section.locator(".grid figure.sample figcaption").first).to_be_visible()  # the first walk, on open
    section.get_by_label("Class", exact=True).select_option(label="3")
    section.get_by_label("Images", exact=True).fill("4")
    section.get_by_role("button", name="Generate").click()
    page.wait_for_function("() => playground.lastDiffusion.done && playground.lastDiffusion.events.length")
    # 20 steps, an estimate every 5: three intermediate events drawn before the answer.
    assert page.evaluate("() => playground.lastDiffusion.events") == [5, 10, 15, "final"]
    assert section.locator(".grid figcaption").all_inner_texts() == ["class 3"] * 4
    sources = section.locator(".grid img").evaluate_all("images => images.map(i => i.src)")
    with ui_server.client() as client:
        images = [src.split(",", 1)[1] for src in sources]
        answer = client.post("/predict", json={"model": "lenet5-digits", "inputs": images}).json()
    assert [item["label"] for item in answer["outputs"]].count("3") >= 3
    assert recorded.errors == []
