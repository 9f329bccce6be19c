"""The dashboard as a user sees it: `python -m bench.dashboard` on a finished smoke study, loaded in
headless Chromium, checked on the rendered page rather than on the JSON API behind it, because
optuna-dashboard is a single-page app and a page can fail to show what its API returns (a broken
bundle, a note in a format it cannot render, artifacts stored where the server does not look).
Skips, saying why, where no Chromium is installed; `.ci/run` installs Debian's `chromium`."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM = next(filter(None, map(shutil.which, BROWSERS)), None)
ARCHS = ("lstm", "transformer")


class _Page(HTMLParser):
    """The visible text of a dumped DOM (scripts and styles left out) and the text of each link."""

    def __init__(self) -> None:
        super().__init__()
        self.words: list[str] = []
        self.links: dict[str, str] = {}
        self._href: str | None = None
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style"):
            self._skip += 1
        elif tag == "a":
            self._href = dict(attrs).get("href")
            if self._href:
                self.links.setdefault(self._href, "")

    def handle_endtag(self, tag):
        if tag in ("script", "style"):
            self._skip -= 1
        elif tag == "a":
            self._href = None

    def handle_data(self, data):
        if not self._skip and data.strip():
            self.words.append(data.strip())
            if self._href:
                self.links[self._href] += " " + data.strip()

    @property
    def text(self) -> str:
        return " ".join(self.words)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(url: str, server: subprocess.Popen, log: Path, seconds: float = 90) -> None:
    """Poll until the server answers (bounded), failing early with its output if it exits."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"bench.dashboard exited with {server.returncode}: {log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"bench.dashboard did not answer on {url} within {seconds:.0f} s")


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory):
    """A finished two-architecture smoke study (about 15 s on a laptop CPU) and its dashboard on a free
    loopback port; yields (base URL, report folder, page renderer). The server is always stopped."""
    if CHROMIUM is None:
        pytest.skip(f"no Chromium binary on PATH (tried {', '.join(BROWSERS)}); .ci/run installs Debian's chromium")
    tmp = tmp_path_factory.mktemp("browser")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    study = subprocess.run(
        [sys.executable, "-m", "bench.run", "study=smoke", f"archs=[{','.join(ARCHS)}]", "search.n_trials=2",
         "search.steps=40", "train.steps=40", "tracking=none", "progress=false", f"out_dir={tmp / 'smoke'}",
         f"report_dir={tmp / 'report'}"], cwd=tmp, env=env, capture_output=True, text=True, timeout=600)
    assert study.returncode == 0, study.stderr
    port, log = _free_port(), tmp / "dashboard.log"
    with log.open("w") as out:  # a file, not a pipe: the request log could fill an unread pipe and stall the server
        server = subprocess.Popen(
            [sys.executable, "-m", "bench.dashboard", "study=smoke", f"out_dir={tmp / 'smoke'}", "--port", str(port),
             "--host", "127.0.0.1"], cwd=tmp, env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_for(f"{base}/dashboard", server, log)
        yield base, tmp / "report", lambda path, expect: _render(f"{base}{path}", expect, tmp / "profile")
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _render(url: str, expect: str, profile: Path, tries: int = 3) -> _Page:
    """The page at `url` after Chromium has run its scripts; rendered again (up to `tries` times, with
    more virtual time) while `expect` is not on it yet, since the app fills the page from its API."""
    for attempt in range(1, tries + 1):
        dom = subprocess.run(
            [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
             f"--virtual-time-budget={10_000 * attempt}", "--dump-dom", url],
            capture_output=True, text=True, timeout=180).stdout
        page = _Page()
        page.feed(dom)
        if expect in page.text:
            break
    return page


def _study_ids(render) -> dict[str, str]:
    """{study name: its page path}, read off the rendered study list (cards "3. smoke/lstm/final ...")."""
    page = render("/dashboard", "smoke/lstm")
    found = {}
    for href, label in page.links.items():
        m = re.match(r"\d+\. (\S+)", label.strip())
        if m and re.fullmatch(r"/dashboard/studies/\d+", href):
            found[m.group(1)] = href
    return found


def test_study_list_shows_both_stages_of_each_architecture(dashboard):
    _, _, render = dashboard
    ids = _study_ids(render)
    assert set(ids) == {f"smoke/{a}{stage}" for a in ARCHS for stage in ("", "/final")}, ids


def test_trial_page_shows_the_user_attributes(dashboard):
    _, _, render = dashboard
    page = render(_study_ids(render)["smoke/lstm"] + "/trials", "User Attributes")
    attrs = page.text.split("User Attributes", 1)[-1].split("Artifacts", 1)[0]
    for key in ("arch", "num_params", "state_size", "tokens", "wall_s", "val_accuracy", "mem_estimate_gib", "seed"):
        assert re.search(rf"\b{key} \S", attrs), (key, attrs)
    assert re.search(r"\barch lstm\b", attrs), attrs
    assert re.search(r"\bnum_params [1-9]\d*\b", attrs), attrs


def test_final_study_shows_the_report_note_and_artifacts(dashboard):
    _, report, render = dashboard
    final = _study_ids(render)["smoke/lstm/final"]
    note = render(final + "/note", "archbench report: smoke").text
    assert "archbench report: smoke" in note
    # The report's headline, rendered from the note's markdown: its first words and every row of its table.
    headline = (report / "README.md").read_text().split("<!-- headline -->", 1)[1].split("<!-- /headline -->")[0]
    assert headline.strip().split(",", 1)[0] in note
    rows = [[c.strip(" *_") for c in line.strip().strip("|").split("|")] for line in headline.splitlines()
            if line.startswith("|") and not line.startswith("|---")]
    assert len(rows) > len(ARCHS) and {r[0] for r in rows} >= set(ARCHS), rows
    for row in rows:
        assert " ".join(row) in note, (row, note)
    assert f"Full report with figures: {report / 'README.md'}" in note
    study = render(final, "Study Artifacts").text
    shown = study.split("Study Artifacts", 1)[-1].split()
    expected = ["README.md", *sorted(p.name for p in report.glob("*.png"))]
    assert len(expected) > 1 and all(name in shown for name in expected), (expected, shown)
