"""cnnctl eval --report / --label-issues on a real 1-epoch MNIST LeNet-5: the page opens in headless Chromium
without errors and shows eval --json's numbers, the top losses and the ECE match independent computations, and
confident learning finds labels flipped on purpose in an image folder."""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from real_mnist import mnist_mirror
from typer.testing import CliRunner

import cnnctl
from cnnctl.cli import app
from cnnctl.data.idx import read_idx
from cnnctl.errors import UsageError
from cnnctl.report.analysis import CalibrationBins, SampleOutputs, confused_pairs

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOT = os.environ.get("CNNCTL_REPORT_SCREENSHOT")  # where to keep the page's screenshot (docs/report.png)
SUMMARY_KEYS = ("loss", "accuracy", "top5", "count", "per_class", "macro_precision", "macro_recall", "macro_f1",
                "confusion", "calibration")


def invoke(*args: str):
    return CliRunner().invoke(app, [str(arg) for arg in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def mnist_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """LeNet-5 after one epoch on the real MNIST training set (its test set stays unseen), with MNIST served from
    the local copy for the whole module."""
    mirror = mnist_mirror()
    work = tmp_path_factory.mktemp("mnist")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CNNCTL_DATA", str(work / "data"))
        patch.setenv("CNNCTL_MIRROR", str(mirror))
        run = cnnctl.train("lenet5", dataset="mnist", epochs=1, out=str(work / "runs"), plots=False)
        yield run.best_path


@pytest.fixture(scope="module")
def mnist_test() -> tuple[np.ndarray, np.ndarray]:
    mirror = mnist_mirror()
    return read_idx(mirror / "t10k-images-idx3-ubyte.gz"), read_idx(mirror / "t10k-labels-idx1-ubyte.gz")


def independent_probabilities(checkpoint_path: Path, images: np.ndarray) -> np.ndarray:
    """Softmax outputs by cnnctl.predict on the raw test images (not through eval's data pipeline)."""
    model, _ = cnnctl.load(checkpoint_path)
    _, probabilities = cnnctl.predict(model, torch.from_numpy(images.copy()).unsqueeze(1))
    return probabilities.double().numpy()


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    total = 0.0
    for lower, upper in zip(edges[:-1], edges[1:]):
        members = (confidence > lower) & (confidence <= upper)
        if members.any():
            total += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(total)


def open_in_chromium(page: Path, screenshot: Path) -> dict[str, object]:
    """Load ``page`` from disk in headless Chromium; return the console errors, every request that left the
    file, each <img>'s (complete, naturalWidth), the summary values and the thumbnails' image indices."""
    from playwright.sync_api import sync_playwright

    assert CHROMIUM.is_file(), "headless Chromium is needed: apt-get install chromium"
    errors: list[str] = []
    outside: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            tab = browser.new_page(viewport={"width": 1280, "height": 900})
            tab.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            tab.on("pageerror", lambda error: errors.append(str(error)))

            def only_the_file(route: object) -> None:
                url = route.request.url  # type: ignore[attr-defined]
                if url.startswith("data:") or url == page.as_uri():
                    route.continue_()  # type: ignore[attr-defined]
                else:
                    outside.append(url)
                    route.abort()  # type: ignore[attr-defined]

            tab.route("**/*", only_the_file)
            tab.goto(page.as_uri(), wait_until="load")
            images = tab.eval_on_selector_all("img", "els => els.map(e => [e.complete, e.naturalWidth])")
            values = tab.eval_on_selector_all("#summary [data-key]", "els => els.map(e => [e.dataset.key, "
                                                                       "e.dataset.value])")
            grids = {name: tab.eval_on_selector_all(f"#{name} figure", "els => els.map(e => +e.dataset.index)")
                     for name in ("top-losses-grid", "label-issues-grid")}
            title = tab.title()
            tab.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return {"errors": errors, "outside": outside, "images": images, "values": dict(values), "grids": grids,
            "title": title}


def test_the_report_opens_in_chromium_and_its_numbers_are_evals(mnist_checkpoint: Path, tmp_path: Path,
                                                                 mnist_test: tuple[np.ndarray, np.ndarray]) -> None:
    plain = invoke("eval", mnist_checkpoint, "--json")
    assert plain.exit_code == 0, plain.output
    evaluated = json.loads(plain.stdout)
    out = tmp_path / "report"
    result = invoke("eval", mnist_checkpoint, "--report", out, "--label-issues")
    assert result.exit_code == 0, result.output
    assert f"report: {out / 'index.html'}" in result.stderr and "ECE" in result.stdout
    report = json.loads((out / "report.json").read_text())
    for key in SUMMARY_KEYS:
        assert report[key] == evaluated[key], key
    assert evaluated["accuracy"] > 0.95 and report["count"] == 10_000

    # the top losses and the ECE, recomputed from cnnctl.predict's probabilities on the raw test images
    images, labels = mnist_test
    probabilities = independent_probabilities(mnist_checkpoint, images)
    losses = -np.log(probabilities[np.arange(len(labels)), labels])
    highest = np.argsort(-losses, kind="stable")[:32]
    shown = [row["index"] for row in report["top_losses"]]
    assert set(shown) == set(highest.tolist())
    assert np.all(np.diff(losses[shown]) <= 1e-4)  # highest first (float32 rounding may swap near-equal ones)
    np.testing.assert_allclose([row["loss"] for row in report["top_losses"]], losses[shown], rtol=1e-4)
    assert all(row["true"] == str(labels[row["index"]]) for row in report["top_losses"])
    assert report["calibration"]["ece"] == pytest.approx(expected_calibration_error(probabilities, labels),
                                                         abs=1e-6)
    assert report["calibration"]["num_bins"] == 15 and sum(b["count"] for b in report["calibration"]["bins"]) \
        == 10_000
    confusion = np.array(report["confusion"])
    off_diagonal = confusion - np.diag(np.diag(confusion))
    worst = report["confused_pairs"][0]
    assert worst["count"] == off_diagonal.max() == off_diagonal[worst["true_index"], worst["predicted_index"]]
    assert all(labels[i] == worst["true_index"] for i in worst["examples"])

    screenshot = Path(SCREENSHOT) if SCREENSHOT else tmp_path / "report.png"
    page = open_in_chromium(out / "index.html", screenshot)
    assert page["errors"] == [] and page["outside"] == []
    thumbnails = len(report["top_losses"]) + sum(len(p["examples"]) for p in report["confused_pairs"]) \
        + min(len(report["label_issues"]), 48)
    assert len(page["images"]) == 2 + thumbnails  # the confusion and reliability figures, and every thumbnail
    assert all(complete and width > 0 for complete, width in page["images"]), page["images"]
    cards = {key: float(value) for key, value in page["values"].items()}
    assert cards == {"accuracy": evaluated["accuracy"], "top5": evaluated["top5"], "loss": evaluated["loss"],
                     "macro_precision": evaluated["macro_precision"], "macro_recall": evaluated["macro_recall"],
                     "macro_f1": evaluated["macro_f1"], "ece": evaluated["calibration"]["ece"],
                     "balanced_accuracy": evaluated["balanced_accuracy"]}
    assert page["grids"]["top-losses-grid"] == shown
    assert page["grids"]["label-issues-grid"] == [row["index"] for row in report["label_issues"]][:48]
    assert page["title"].startswith("lenet5 on mnist test")
    from torchvision.io import read_image

    assert read_image(str(screenshot)).shape[2] == 1280  # a real PNG, the page's width


def test_label_issues_find_most_flipped_labels_in_a_folder(mnist_checkpoint: Path, tmp_path: Path,
                                                           mnist_test: tuple[np.ndarray, np.ndarray]) -> None:
    """2,000 test images as PNG files in class folders, 50 of them in a wrong class's folder."""
    from torchvision.io import write_png

    images, labels = mnist_test
    rng = np.random.default_rng(0)
    chosen = rng.choice(len(labels), 2000, replace=False)
    flipped_positions = set(rng.choice(2000, 50, replace=False).tolist())
    folder = tmp_path / "digits"
    flipped: set[str] = set()
    for position, index in enumerate(chosen.tolist()):
        label = int(labels[index])
        name = f"{index:05d}.png"
        if position in flipped_positions:
            label = (label + int(rng.integers(1, 10))) % 10
            flipped.add(name)
        (folder / str(label)).mkdir(parents=True, exist_ok=True)
        write_png(torch.from_numpy(images[index].copy()).unsqueeze(0), str(folder / str(label) / name))
    out = tmp_path / "report"
    result = invoke("eval", mnist_checkpoint, "--data", folder, "--label-issues", "--report", out, "--json")
    assert result.exit_code == 0, result.output
    issues = json.loads(result.stdout)["label_issues"]
    found = {Path(row["path"]).name for row in issues}
    recall = len(found & flipped) / len(flipped)
    precision = len(found & flipped) / max(1, len(found))
    print(f"label issues: recall {recall:.0%} of 50 flipped labels, {len(found)} flagged, precision {precision:.0%}")
    assert recall >= 0.7, f"found {len(found & flipped)} of 50 flipped labels among {len(found)} flagged"
    assert [row["p_given"] for row in issues] == sorted(row["p_given"] for row in issues)  # least likely first
    rows = list(csv.DictReader(io.StringIO((out / "label_issues.csv").read_text())))
    assert [row["path"] for row in rows] == [row["path"] for row in issues]
    assert [int(row["rank"]) for row in rows] == list(range(1, len(issues) + 1))
    assert all(Path(row["path"]).parent.name == row["given"] for row in rows)
    assert (out / "index.html").read_text().count('id="label-issues-grid"') == 1


def test_the_api_returns_eval_json_s_numbers(mnist_checkpoint: Path) -> None:
    plain = invoke("eval", mnist_checkpoint, "--json")
    numbers = cnnctl.evaluate(mnist_checkpoint)
    assert {key: numbers[key] for key in SUMMARY_KEYS} == {key: json.loads(plain.stdout)[key] for key in SUMMARY_KEYS}
    assert "top_losses" not in numbers and "label_issues" not in numbers  # only on request


def test_calibration_bins_by_hand() -> None:
    """Four images: confidences 0.95 (right), 0.9 (wrong), 0.55 (right), 0.52 (wrong); with 10 bins they fall in
    (0.9, 1], (0.8, 0.9], (0.5, 0.6], (0.5, 0.6]."""
    probabilities = torch.tensor([[0.95, 0.05], [0.1, 0.9], [0.55, 0.45], [0.48, 0.52]])
    labels = torch.tensor([0, 0, 0, 0])
    bins = CalibrationBins(10)
    bins.add(probabilities[:2], labels[:2])
    bins.add(probabilities[2:], labels[2:])
    result = bins.result()
    expected = 0.25 * abs(1 - 0.95) + 0.25 * abs(0 - 0.9) + 0.5 * abs(0.5 - (0.55 + 0.52) / 2)
    assert result["ece"] == pytest.approx(expected)
    assert result["mce"] == pytest.approx(0.9)
    assert [row["count"] for row in result["bins"]] == [0, 0, 0, 0, 0, 2, 0, 0, 1, 1]


def test_confused_pairs_rank_cells_and_pick_the_most_confident_mistakes() -> None:
    logits = torch.tensor([[0.0, 3.0, 0.0], [0.0, 1.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0], [2.0, 0.0, 0.0]])
    labels = torch.tensor([0, 0, 0, 1, 2])
    outputs = SampleOutputs.from_logits(logits, labels)
    confusion = torch.zeros(3, 3, dtype=torch.int64)
    for true, predicted in zip(labels.tolist(), outputs.predicted.tolist()):
        confusion[true, predicted] += 1
    pairs = confused_pairs(confusion, outputs, pairs=2, examples=2)
    assert pairs[0] == {"true": 0, "predicted": 1, "count": 3, "examples": [0, 2]}
    assert pairs[1]["count"] == 1 and (pairs[1]["true"], pairs[1]["predicted"]) == (1, 2)


def test_report_into_a_file_and_a_missing_cleanlab_are_one_line(mnist_checkpoint: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    taken = tmp_path / "taken"
    taken.write_text("a file")
    result = invoke("eval", mnist_checkpoint, "--report", taken)
    assert result.exit_code == 2 and "is a file, not a folder" in result.output
    assert len(result.output.strip().splitlines()) == 1
    monkeypatch.setitem(sys.modules, "cleanlab", None)
    result = invoke("eval", mnist_checkpoint, "--label-issues")
    assert result.exit_code == 2
    assert result.output.strip() == "error: suspected label errors need cleanlab: pip install 'cnnctl[labels]'"
    with pytest.raises(UsageError, match="cleanlab"):
        cnnctl.evaluate(mnist_checkpoint, label_issues=True)
