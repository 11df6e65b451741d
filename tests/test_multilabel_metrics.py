"""Multi-label metrics against scikit-learn's on random scores, with ties and rare labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn import metrics as sk

from cnnctl.engine import multilabel_metrics as ml


def random_case(seed: int, n: int = 200, c: int = 6, ties: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    generator = np.random.default_rng(seed)
    targets = (generator.random((n, c)) < generator.uniform(0.05, 0.6, size=c)).astype(np.int64)
    targets[0] = 1  # every label has a positive
    targets[1] = 0
    scores = np.clip(0.35 * targets + generator.random((n, c)) * 0.7, 0, 1)
    if ties:
        scores = np.round(scores, 1)
    return torch.from_numpy(scores), torch.from_numpy(targets)


@pytest.mark.parametrize("seed,ties", [(0, False), (1, True), (2, False), (3, True)])
def test_average_precision_and_map_match_scikit_learn(seed: int, ties: bool) -> None:
    scores, targets = random_case(seed, ties=ties)
    for c in range(scores.shape[1]):
        expected = sk.average_precision_score(targets[:, c].numpy(), scores[:, c].numpy())
        assert ml.average_precision(scores[:, c], targets[:, c]) == pytest.approx(expected, abs=1e-12)
    expected = sk.average_precision_score(targets.numpy(), scores.numpy(), average="macro")
    assert ml.mean_average_precision(scores, targets) == pytest.approx(expected, abs=1e-12)


def test_map_leaves_out_labels_without_positives() -> None:
    scores, targets = random_case(4)
    targets[:, 2] = 0
    kept = [0, 1, 3, 4, 5]
    expected = sk.average_precision_score(targets[:, kept].numpy(), scores[:, kept].numpy(), average="macro")
    assert ml.mean_average_precision(scores, targets) == pytest.approx(expected, abs=1e-12)
    assert np.isnan(ml.average_precision(scores[:, 2], targets[:, 2]))


@pytest.mark.parametrize("seed", [0, 5, 6])
def test_f1_precision_recall_subset_accuracy_match_scikit_learn(seed: int) -> None:
    scores, targets = random_case(seed)
    thresholds = [0.3, 0.5, 0.6, 0.45, 0.7, 0.2]
    predicted = ml.decisions(scores, thresholds)
    y, p = targets.numpy(), predicted.numpy().astype(np.int64)
    report = ml.per_label_report(predicted, targets, [f"l{i}" for i in range(6)])
    precision, recall, f1, support = sk.precision_recall_fscore_support(y, p, zero_division=0)
    for i, row in enumerate(report["per_class"]):
        assert row["precision"] == pytest.approx(precision[i])
        assert row["recall"] == pytest.approx(recall[i])
        assert row["f1"] == pytest.approx(f1[i])
        assert row["support"] == support[i]
    assert report["macro_f1"] == pytest.approx(sk.f1_score(y, p, average="macro", zero_division=0))
    assert ml.macro_f1(predicted, targets) == pytest.approx(sk.f1_score(y, p, average="macro", zero_division=0))
    assert report["micro_f1"] == pytest.approx(sk.f1_score(y, p, average="micro", zero_division=0))
    assert ml.micro_f1(predicted, targets) == pytest.approx(sk.f1_score(y, p, average="micro", zero_division=0))
    assert report["micro_precision"] == pytest.approx(sk.precision_score(y, p, average="micro", zero_division=0))
    assert report["micro_recall"] == pytest.approx(sk.recall_score(y, p, average="micro", zero_division=0))
    assert report["subset_accuracy"] == pytest.approx(sk.accuracy_score(y, p))
    assert ml.subset_accuracy(predicted, targets) == pytest.approx(sk.accuracy_score(y, p))
    expected_balanced = np.mean([sk.balanced_accuracy_score(y[:, c], p[:, c]) for c in range(6)])
    assert ml.balanced_accuracy(predicted, targets) == pytest.approx(expected_balanced)


def test_a_label_never_given_nor_predicted_counts_zero_in_macro_f1() -> None:
    targets = torch.tensor([[1, 0, 0], [0, 1, 0], [1, 1, 0]])
    predicted = torch.tensor([[1, 0, 0], [0, 1, 0], [1, 0, 0]], dtype=torch.bool)
    expected = sk.f1_score(targets.numpy(), predicted.numpy().astype(int), average="macro", zero_division=0)
    assert ml.macro_f1(predicted, targets) == pytest.approx(expected)


@pytest.mark.parametrize("seed,ties", [(0, False), (7, True), (8, False)])
def test_tuned_thresholds_reach_each_labels_best_f1(seed: int, ties: bool) -> None:
    scores, targets = random_case(seed, n=120, ties=ties)
    thresholds = ml.tune_thresholds(scores, targets)
    predicted = ml.decisions(scores, thresholds)
    for c in range(scores.shape[1]):
        y = targets[:, c].numpy()
        precision, recall, _ = sk.precision_recall_curve(y, scores[:, c].numpy())
        best = np.nanmax(2 * precision * recall / np.maximum(precision + recall, 1e-300))
        reached = sk.f1_score(y, predicted[:, c].numpy().astype(int), zero_division=0)
        assert reached == pytest.approx(best, abs=1e-9)
        assert 0 <= thresholds[c] <= 1


def test_thresholds_of_a_label_without_positives_stay_at_the_default() -> None:
    scores, targets = random_case(9)
    targets[:, 1] = 0
    assert ml.tune_thresholds(scores, targets)[1] == ml.DEFAULT_THRESHOLD


def test_positive_weights_are_negatives_over_positives() -> None:
    targets = torch.tensor([[1, 0, 1], [0, 0, 1], [0, 1, 1], [0, 0, 1]])
    assert ml.positive_weights(targets).tolist() == pytest.approx([3.0, 3.0, 1.0])


def _decisions_one_by_one(probabilities: torch.Tensor, thresholds: list[float],
                          label_count: tuple[int, int]) -> torch.Tensor:
    """The label-count rule written out per image: the labels at their thresholds; too few: add the most probable
    others; too many: keep the most probable of them."""
    fewest, most = label_count
    rows = []
    for scores in probabilities.tolist():
        given = [c for c, p in enumerate(scores) if p >= thresholds[c]]
        others = [c for c in range(len(scores)) if c not in given]
        if len(given) < fewest:
            given += sorted(others, key=lambda c, row=scores: -row[c])[:fewest - len(given)]
        elif len(given) > most:
            given = sorted(given, key=lambda c, row=scores: -row[c])[:most]
        rows.append([c in given for c in range(len(scores))])
    return torch.tensor(rows)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_decisions_keep_to_the_label_count(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    probabilities = torch.rand(300, 6, generator=generator)
    thresholds = torch.rand(6, generator=generator).tolist()
    for label_count in ((0, 6), (1, 6), (2, 2), (1, 3), (0, 1), (3, 5)):
        got = ml.decisions(probabilities, thresholds, label_count)
        assert torch.equal(got, _decisions_one_by_one(probabilities, thresholds, label_count)), label_count
        assert ((got.sum(1) >= label_count[0]) & (got.sum(1) <= label_count[1])).all()
    assert torch.equal(ml.decisions(probabilities, thresholds, (0, 6)), ml.decisions(probabilities, thresholds))


def test_label_count_range_is_the_fewest_and_most_labels_of_an_image() -> None:
    targets = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.float32)
    assert ml.label_count_range(targets) == (1, 3)
    assert ml.label_count_range(torch.zeros(0, 4)) == (0, 4)
