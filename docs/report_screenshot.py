"""Make docs/report-digits.png: the top of the digits run's report, as a browser shows it.

    python docs/report_screenshot.py                       # trains the default digits run
    python docs/report_screenshot.py runs/digits/report.html --height 2400

Without a page it runs ``convnet train --quiet --out runs/digits`` (the embedded digits,
under a minute) in a temporary directory, which writes runs/digits/report.html; then it
opens the page in headless Chromium (selenium, Debian's chromium and chromium-driver) at
1200 pixels wide and saves the top ``--height`` pixels.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def screenshot(page, out, width=1200, height=1800):
    """Save the top width x height pixels of the HTML file ``page`` as the PNG ``out``
    (the viewport is set to that size; the window's frame is not counted)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    if not Path(page).is_file():      # Chromium would show, and save, its error page
        raise SystemExit(f"{page}: no such file")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    with tempfile.TemporaryDirectory() as profile:
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--disable-dev-shm-usage", "--disable-background-networking",
                    "--no-first-run", f"--window-size={width},{height}",
                    f"--user-data-dir={profile}"):
            options.add_argument(arg)
        driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
        try:
            frame = driver.execute_script(
                "return [window.outerWidth - window.innerWidth, "
                "window.outerHeight - window.innerHeight]")
            driver.set_window_size(width + frame[0], height + frame[1])
            driver.get(Path(page).resolve().as_uri())
            driver.save_screenshot(str(out))
        finally:
            driver.quit()
    return Path(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", nargs="?", help="a report.html (default: train one)")
    parser.add_argument("--out", default=str(Path(__file__).with_name("report-digits.png")))
    parser.add_argument("--width", type=int, default=1200)
    parser.add_argument("--height", type=int, default=1800)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        page = args.page
        if page is None:   # run in tmp, so that the page names runs/digits/model.json
            subprocess.run([sys.executable, "-m", "convnet.cli", "train", "--quiet", "--out",
                            "runs/digits"], check=True, cwd=tmp)
            page = Path(tmp) / "runs" / "digits" / "report.html"
        print(f"wrote {screenshot(page, args.out, args.width, args.height)}")


if __name__ == "__main__":
    main()
