"""The suite's HTML report, rendered from a real replay-suite run and checked in headless Chromium."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tandemlm.evaluate import packaged_data
from tandemlm.runtime import ConfigError
from tandemlm.suites.html import render_report
from tandemlm.suites.replay import suite
from tandemlm.suites.run import run_suite

HANG_GUARD_S = 120  # only so a stuck browser cannot hang the run; no assertion on time


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A results directory from the real replay suite on the packaged OVERRULING excerpt (no neural
    scorer, so it takes seconds)."""
    root = tmp_path_factory.mktemp("suite")
    data = root / "data"
    data.mkdir()
    shutil.copy(packaged_data("overruling_excerpt.jsonl"), data / "overruling_all.jsonl")
    run_suite(suite(data, scorer=False, router=False), root / "run", progress=False)
    return root / "run"


def _chromium(report: Path, profile: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    browser = shutil.which("chromium")
    if browser is None:
        pytest.skip("headless Chromium not found; install Debian's `chromium` package "
                    "(apt-get install chromium) to render the report in a real browser")
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
               *flags, report.resolve().as_uri()]
    return subprocess.run(command, capture_output=True, text=True, timeout=HANG_GUARD_S, check=True)


def test_report_renders_in_a_real_browser(run_dir: Path, tmp_path: Path):
    import matplotlib.image

    results = json.loads((run_dir / "results.json").read_text())
    report = render_report(run_dir)
    assert report == run_dir / "report.html"

    shot = tmp_path / "report.png"
    _chromium(report, tmp_path / "profile-shot", f"--screenshot={shot}", "--window-size=1280,2000")
    assert shot.is_file()
    pixels = matplotlib.image.imread(shot)
    assert np.var(pixels[..., :3]) > 1e-3, "the screenshot is a blank page"

    dom = _chromium(report, tmp_path / "profile-dom", "--virtual-time-budget=5000", "--dump-dom").stdout
    assert re.search(r'<body[^>]*data-rendered="ok"', dom), "the page's own check says it is broken"
    assert "overruling" in dom
    assert results["tasks"]["overruling"]["best_single"]["model"] in dom
    assert re.search(r'<img[^>]*src="data:image/png;base64,', dom)


def test_task_error_is_shown_escaped(run_dir: Path, tmp_path: Path):
    results = json.loads((run_dir / "results.json").read_text())
    results["tasks"]["broken"] = {"error": "ConfigError: boom <b>"}
    (tmp_path / "results.json").write_text(json.dumps(results))

    out = render_report(tmp_path, tmp_path / "elsewhere" / "page.html")
    text = out.read_text()
    assert out == tmp_path / "elsewhere" / "page.html"
    assert "ConfigError: boom &lt;b&gt;" in text
    assert "<b>" not in text
    assert "fairseq_gpt_13B" in text  # the real task still renders beside the broken one


def test_missing_results_names_the_file(tmp_path: Path):
    with pytest.raises(ConfigError, match=re.escape(str(tmp_path / "results.json"))):
        render_report(tmp_path)


def test_invalid_json_names_the_file(tmp_path: Path):
    (tmp_path / "results.json").write_text("{not json")
    with pytest.raises(ConfigError, match=re.escape(str(tmp_path / "results.json"))):
        render_report(tmp_path)


def test_an_evaluation_directory_renders(tmp_path: Path):
    """`tandem eval --out DIR` output renders too: the metric, cost per model, failures and
    examples, from a real evaluation of the shipped replay program."""
    from tandemlm.evaluate import evaluate, load_object

    program = str(Path(__file__).resolve().parents[2] / "programs" / "replay_single.py")
    result = evaluate(load_object(f"{program}:program", "program"),
                      packaged_data("overruling_excerpt.jsonl"), load_object(f"{program}:metric",
                                                                             "metric"),
                      limit=12, out=tmp_path, progress=False)
    text = render_report(tmp_path).read_text()
    assert f"= {result.score:.3f}" in text and "on 12 examples" in text
    assert "gpt-3.5-turbo" in text and text.count('<td class="num">') >= 12
    (tmp_path / "summary.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="not an evaluation summary"):
        render_report(tmp_path)
