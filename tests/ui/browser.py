"""Headless Chromium for the playground's tests and screenshots (scripts/playground_screenshots.py):
Debian's ``chromium`` driven by Playwright, never a downloaded browser (no ``playwright install``).

The flags: as root the sandbox must be off; the background-networking flags keep Chromium from
calling Google's services, which this closed network refuses (and which would break the tests'
"no request outside the server" check). Each launch gets a fresh profile in a temporary folder.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from playwright.sync_api import BrowserContext, Page, sync_playwright

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 900, "height": 700}
# The panels of app/ui/app.js's PANELS table, by the kind of model each shows (data-panel), and a model
# of the committed zoo for each: the screenshots' file names are the panel names.
PANEL_MODELS = {
    "image-classifier": ("classifier", "lenet5-digits"),
    "text-classifier": ("text classifier", "lstm-order"),
    "language-model": ("language model", "gpt-corpus"),
    "seq2seq": ("seq2seq model", "seq2seq-dates"),
    "generator": ("image generator", "vae-digits"),
    "autoencoder": ("autoencoder", "dae-digits"),
    "conditional-generator": ("class-conditional image generator", "cgan-digits"),
    "image-translator": ("image translator", "cyclegan-strokes"),
    "dual-encoder": ("dual encoder", "clip-shapes"),
    "diffusion": ("diffusion model", "diffusion-digits"),
}


@contextmanager
def chromium(viewport: dict | None = None) -> Iterator[BrowserContext]:
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile, sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            profile,
            executable_path=CHROMIUM,
            args=CHROMIUM_ARGS,
            headless=True,
            viewport=viewport or VIEWPORT,
        )
        try:
            yield context
        finally:
            context.close()


def open_model(page: Page, base_url: str, model: str) -> None:
    """The playground showing ``model``, its panels built."""
    page.goto(f"{base_url}/#{model}")
    page.wait_for_function("name => document.body.dataset.ready === name", arg=model)


def draw_zero(page: Page, selector: str = "canvas.pad") -> None:
    """A handwritten 0 on the drawing pad with real mouse events: press, an ellipse of moves, release."""
    pad = page.locator(selector).first
    pad.scroll_into_view_if_needed()
    box = pad.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    rx, ry = box["width"] * 0.22, box["height"] * 0.34
    angles = [2 * math.pi * i / 40 for i in range(42)]  # a little past the start: the ends meet
    points = [(cx + rx * math.sin(t), cy - ry * math.cos(t)) for t in angles]
    page.mouse.move(*points[0])
    page.mouse.down()
    for x, y in points[1:]:
        page.mouse.move(x, y, steps=2)
    page.mouse.up()


def generate_text(page: Page, seed: int = 1, max_new_tokens: int = 120) -> dict:
    """Stream text in the language-model panel; the page's record of the stream once it ended."""
    panel = page.locator('section[data-panel="language model"]')
    panel.get_by_label("Seed").fill(str(seed))
    panel.get_by_label("Max new tokens").fill(str(max_new_tokens))
    panel.get_by_role("button", name="Generate").click()
    page.wait_for_function("() => window.playground.lastStream && window.playground.lastStream.done")
    return page.evaluate("() => window.playground.lastStream")


def show_panel(page: Page, base_url: str, panel: str) -> str:
    """Open the panel's model and use the panel as a person would, until its result is shown; returns
    the panel's kind (its data-panel)."""
    kind, model = PANEL_MODELS[panel]
    open_model(page, base_url, model)
    section = f'section[data-panel="{kind}"]'
    if panel in ("image-classifier", "autoencoder", "image-translator"):
        draw_zero(page, f"{section} canvas.pad")
    if panel == "language-model":
        generate_text(page)
    done = {
        "image-classifier": f"{section} .label",
        "text-classifier": f"{section} .label",
        "language-model": f"{section} .tokens",
        "seq2seq": f"{section} .output",
        "generator": f"{section} img.walk[src]",
        "autoencoder": f"{section} img.reconstruction[src]",
        "conditional-generator": f"{section} img.walk[src]",
        "image-translator": f"{section} img.translation[src]",
        "dual-encoder": f"{section} .ranking li",
        "diffusion": f"{section} .grid figure.sample figcaption",
    }[panel]
    page.wait_for_selector(done)
    if panel in ("generator", "conditional-generator"):
        page.wait_for_function(f"() => document.querySelectorAll('{section} .grid img').length > 0")
    if panel == "dual-encoder":
        page.wait_for_selector(f"{section} .label")
    return kind


def save_panel(page: Page, kind: str, path: Path) -> None:
    """A PNG of one panel (its section), at the context's viewport width."""
    page.locator(f'section[data-panel="{kind}"]').screenshot(path=str(path))
