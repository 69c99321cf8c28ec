"""Dashboard screenshots for the lifecycle scene (stack.demo_scene), one PNG per step."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from steelcore.paths import REPO_ROOT

SCREENSHOT_WIDTH = 1400
# Tall enough for every section of a page: the health page's Models section sits below the charts.
SCREENSHOT_HEIGHTS = {"live": 1900, "health": 3300}
PAGE_WAIT_MS = 60_000


def chromium_path() -> str:
    """The headless Chromium that scripts/ensure_chromium.sh finds (or installs); RuntimeError with
    the script's reason when there is none."""
    found = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "ensure_chromium.sh")],
        capture_output=True,
        text=True,
        check=False,
    )
    if found.returncode != 0:
        raise RuntimeError(f"no headless Chromium: {found.stderr.strip()}")
    return found.stdout.strip().splitlines()[-1]


class Screenshots:
    """The dashboard in headless Chromium (Debian's package, driven by Playwright as in
    tests/integration/test_dashboard_browser.py), one PNG per step."""

    def __init__(self, base_url: str, folder: Path) -> None:
        self.base_url, self.folder = base_url, folder
        self._api: Any = None
        self._browser: Any = None

    def _page(self) -> Any:
        if self._browser is None:
            from playwright.sync_api import sync_playwright

            executable = chromium_path()
            self._api = sync_playwright().start()
            self._browser = self._api.chromium.launch(
                executable_path=executable, args=["--no-sandbox", "--disable-gpu"]
            )
        return self._browser.new_page(viewport={"width": SCREENSHOT_WIDTH, "height": 1000})

    def take(self, name: str, page_name: str, wait_text: str) -> Path:
        page = self._page()
        try:
            # The live page is the app's default page: it lives at the root, not at /live.
            page.goto(f"{self.base_url}/{'' if page_name == 'live' else page_name}")
            page.get_by_text(wait_text).first.wait_for(timeout=PAGE_WAIT_MS)
            page.set_viewport_size({"width": SCREENSHOT_WIDTH, "height": SCREENSHOT_HEIGHTS[page_name]})
            page.wait_for_timeout(2500)  # fragments and charts settle at the new size
            self.folder.mkdir(parents=True, exist_ok=True)
            path = self.folder / f"{name}.png"
            # The health page's worker metrics (long tables of counters) tell nothing about the step.
            cut = page.get_by_text("Worker metrics", exact=True)
            box = cut.first.bounding_box() if cut.count() else None
            if box is not None and box["y"] > 0:
                clip = {"x": 0, "y": 0, "width": SCREENSHOT_WIDTH, "height": box["y"] - 8}
                page.screenshot(path=str(path), clip=clip)
            else:
                page.screenshot(path=str(path))
            return path
        finally:
            page.close()

    def close(self) -> None:
        if self._browser is not None:
            self._browser.close()
        if self._api is not None:
            self._api.stop()
