"""What a long streamed answer costs the page's main thread, in milliseconds.

    .venv/bin/python -m bench.ui_cost [--runs 5] [--chars 30000]

Starts the fake provider of the tests, chatapp under gunicorn and Debian's
headless chromium, and streams a long Markdown answer (headings, lists,
code, tables; 12 characters a delta, 1 ms apart) into a fresh page, `--runs`
times. For each run it prints the stream's wall time, the frames drawn, the
longest gap between two animation frames, and the main thread's long tasks
(Chromium's Long Tasks API reports every task over 50 ms): their count and
the longest. On a quiet machine the linear renderer shows none; the
quadratic one it replaced had about 30 in every run. Other processes on the
machine stretch tasks too, so compare runs made under the same load.

`tests/test_ui_cost.py` asserts the renderer's behaviour behind these
figures (each settled block drawn once, a bounded amount drawn a frame).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

from playwright.sync_api import sync_playwright

from tests.browser import launch_chromium
from tests.conftest import ServiceFactory
from tests.conftest import openai_settings
from tests.fake_provider import FakeProvider
from tests.test_ui_cost import long_markdown
from tests.test_ui_cost import stream_answer

# Installed before the page's scripts: every long task, and the longest gap
# between animation frames while the answer streams.
WATCH_MAIN_THREAD = """
window.__longTasks = [];
new PerformanceObserver((list) => {
  for (const entry of list.getEntries()) {
    window.__longTasks.push({ start: entry.startTime, duration: entry.duration });
  }
}).observe({ type: 'longtask', buffered: true });
window.__frames = { last: 0, maxGap: 0, count: 0, on: false, started: 0 };
window.__streaming = () => {
  window.__longTasks = [];
  window.__frames.on = true;
  window.__frames.started = performance.now();
};
const tick = (now) => {
  const f = window.__frames;
  if (f.on && f.last) f.maxGap = Math.max(f.maxGap, now - f.last);
  if (f.on) f.count += 1;
  f.last = now;
  requestAnimationFrame(tick);
};
requestAnimationFrame(tick);
"""
READ = """() => ({ tasks: window.__longTasks, frames: window.__frames,
                  now: performance.now() })"""


def one_run(browser: Any, url: str, fake: FakeProvider, text: str) -> dict[str, Any]:
    seen = stream_answer(browser, url, fake, text, WATCH_MAIN_THREAD, READ)
    frames, tasks = seen["frames"], seen["tasks"]
    return {
        "seconds": round((seen["now"] - frames["started"]) / 1000, 2),
        "frames": frames["count"],
        "longest_frame_gap_ms": round(frames["maxGap"]),
        "long_tasks": len(tasks),
        "longest_task_ms": round(max((t["duration"] for t in tasks), default=0)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--chars", type=int, default=30_000)
    args = parser.parse_args()
    text = long_markdown(args.chars)
    with open("/proc/loadavg") as loadavg:
        load = loadavg.read().split()[0]
    print(f"{os.cpu_count()} CPUs, load average {load}, {len(text)} characters")
    runs = []
    with (
        FakeProvider() as fake,
        tempfile.TemporaryDirectory() as tmp,
        sync_playwright() as playwright,
    ):
        factory = ServiceFactory(Path(tmp))
        try:
            service = factory(**openai_settings(fake))
            browser = launch_chromium(playwright)
            for _ in range(args.runs):
                fake.reset()
                runs.append(one_run(browser, service.url, fake, text))
                print(json.dumps(runs[-1]))
            browser.close()
        finally:
            factory.stop_all()
    for key in ("long_tasks", "longest_task_ms", "longest_frame_gap_ms"):
        values = [run[key] for run in runs]
        print(f"{key}: median {statistics.median(values)}, best {min(values)}")


if __name__ == "__main__":
    main()
