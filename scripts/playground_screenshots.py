"""Write the playground's screenshots, docs/playground/<panel>.png (the README links them): the real
server on the committed models (a copy of one model per panel, on 127.0.0.1 at a free port) and
Debian's headless Chromium, each panel used as a person would (a digit drawn with mouse events, text
streamed, ...), then captured at a 900 px wide viewport.

    PYTHONPATH=. .venv/bin/python scripts/playground_screenshots.py [--out docs/playground]

The browser helpers and the panel list are the tests' own (tests/ui/browser.py), so what is shown
here is what tests/ui checks.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.settings import Settings  # noqa: E402
from tests.app.conftest import LiveServer, copy_models  # noqa: E402
from tests.ui.browser import PANEL_MODELS, chromium, open_model, save_panel, show_panel  # noqa: E402

HOW_IT_WORKS_HEIGHT = 1100  # the top of the section: the tables and the first pictures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "playground")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    models = sorted({model for _, model in PANEL_MODELS.values()})
    with tempfile.TemporaryDirectory() as folder:
        repository = copy_models(Path(folder) / "models", models)
        with LiveServer(Settings(model_repository=repository)) as server, chromium() as browser:
            page = browser.new_page()
            for panel in PANEL_MODELS:
                kind = show_panel(page, server.url, panel)
                save_panel(page, kind, args.out / f"{panel}.png")
                print(f"{args.out / panel}.png")
            open_model(page, server.url, "lenet5-digits")
            how = page.locator("#how")
            how.scroll_into_view_if_needed()
            page.wait_for_function("() => [...document.images].every(i => i.complete)")
            box = how.bounding_box()
            box["height"] = min(box["height"], HOW_IT_WORKS_HEIGHT)
            page.set_viewport_size({"width": 900, "height": int(box["y"] + box["height"]) + 10})
            how.scroll_into_view_if_needed()
            box = how.bounding_box()
            clip = {**box, "height": min(box["height"], HOW_IT_WORKS_HEIGHT)}
            page.screenshot(path=str(args.out / "how-it-works.png"), clip=clip)
            print(f"{args.out / 'how-it-works'}.png")


if __name__ == "__main__":
    main()
