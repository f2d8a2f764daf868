"""`slidewatch report`: one self-contained HTML file built from real train / evaluate /
explain outputs, checked for embedded pictures, escaping, errors and (when Chromium is
installed) rendering in a headless browser."""

import base64
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from _factories import make_class_dataset
from PIL import Image

from slidewatch.cli.main import main

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def runs(small_model, tmp_path_factory):
    """A tiny model, its evaluation on a folder whose name holds '<b>', and its CAMs."""
    root = tmp_path_factory.mktemp("report")
    held = make_class_dataset(root / "held<b>", images=1, per_image=3, seed=3)
    model, ev, ex = small_model, root / "eval", root / "explain"
    assert main(["evaluate", str(model), "--data", str(held), "--out", str(ev), "--device",
                 "cpu", "--quiet"]) == 0
    assert main(["explain", str(model), str(held / "landslide"), "--out", str(ex),
                 "--quiet"]) == 0
    out = root / "report.html"
    assert main(["report", str(model), "--eval", str(ev), "--explain", str(ex), "--out",
                 str(out), "--per-gallery", "2"]) == 0
    return {"model": model, "eval": ev, "explain": ex, "out": out, "root": root}


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def _tags(text: str) -> list[tuple[str, dict]]:
    parser = _Tags()
    parser.feed(text)
    return parser.tags


def test_report_is_self_contained_with_valid_embedded_pictures(runs):
    text = runs["out"].read_text(encoding="utf-8")
    tags = _tags(text)
    for _, attrs in tags:
        for name in ("src", "href"):
            assert not re.match(r"\s*(https?:)?//", attrs.get(name) or ""), attrs
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*https?://""", text)
    images = [a for t, a in tags if t == "img"]
    assert len(images) >= 6  # 3 evaluation figures, curves, tiles, overlays
    for attrs in images:
        head, _, data = attrs["src"].partition(",")
        assert head in ("data:image/png;base64", "data:image/jpeg;base64"), head
        with Image.open(io.BytesIO(base64.b64decode(data, validate=True))) as im:
            im.verify()
    assert [t for t, _ in tags if t in ("link", "iframe", "object")] == []


def test_report_shows_metrics_galleries_localisation_and_model_card(runs):
    text = runs["out"].read_text(encoding="utf-8")
    m = json.loads((runs["eval"] / "metrics.json").read_text())
    f1, ci = m["overall"]["f1"], m["overall"]["ci95"]["f1"]
    assert f"{f1:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" in text
    for region in m["regions"]:
        assert f"<td>{region}</td>" in text
    counts = {code: sum(1 for line in (runs["eval"] / "predictions.csv").read_text()
                        .splitlines()[1:] if line.endswith("," + code)) for code in
              ("TP", "FP", "FN", "TN")}
    for code, title in (("TP", "true positives"), ("FP", "false positives"),
                        ("FN", "false negatives"), ("TN", "true negatives")):
        assert f'<h3 id="{code}">{title} ({code}): {counts[code]}</h3>' in text
    cards = text.count('<div class="card">')
    assert cards == sum(min(2, n) for n in counts.values())
    assert 'alt="Grad-CAM overlay"' in text  # landslide tiles were explained
    for word in ("Localisation", "uniform map (reference)", "energy_inside", "Model card",
                 "baseline_cnn", "training.phase2.epochs", "Training split", "version torch"):
        assert word in text, word


def test_text_is_escaped(runs):
    text = runs["out"].read_text(encoding="utf-8")
    assert "held&lt;b&gt;" in text
    assert "<b>" not in text


def test_missing_eval_dir_is_one_line_error_exit_2(runs, tmp_path, capsys):
    missing = tmp_path / "nope"
    code = main(["report", str(runs["model"]), "--eval", str(missing), "--out",
                 str(tmp_path / "r.html")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("error: ") and str(missing) in err
    assert not (tmp_path / "r.html").exists()


def test_missing_metrics_json_names_the_file(runs, tmp_path, capsys):
    ev = tmp_path / "eval"
    shutil.copytree(runs["eval"], ev)
    (ev / "metrics.json").unlink()
    code = main(["report", str(runs["model"]), "--eval", str(ev), "--out",
                 str(tmp_path / "r.html")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and str(ev / "metrics.json") in err and len(err.splitlines()) == 1


def test_renders_in_headless_chromium(runs, tmp_path):
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium); browser check skipped")
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr",
           "--v=0", "--virtual-time-budget=5000", "--dump-dom", runs["out"].as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    n_img = len([t for t, _ in _tags(runs["out"].read_text(encoding="utf-8")) if t == "img"])
    assert f'data-images-ok="{n_img}/{n_img}"' in proc.stdout, proc.stdout[:500]
    console = [line for line in proc.stderr.splitlines()
               if re.search(r"CONSOLE[(:]|Uncaught", line)]
    assert console == [], console


def test_console_error_would_be_caught(tmp_path):
    """The browser check sees console errors (guards the log format it parses)."""
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"{CHROMIUM} not installed; browser check skipped")
    page = tmp_path / "bad.html"
    page.write_text("<html><body><script>missingFunction()</script></body></html>")
    proc = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                           "--no-first-run", f"--user-data-dir={tmp_path / 'p'}",
                           "--enable-logging=stderr", "--v=0", "--dump-dom", page.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert re.search(r"CONSOLE[(:].*Uncaught", proc.stderr)

