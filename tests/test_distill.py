"""Knowledge distillation (--teacher): the loss against Hinton's formula written out, the teacher's inputs made
from the student's preprocessing, the outputs cached for un-augmented images and computed per batch otherwise,
the checkpoints naming their teacher, and every bad input one line."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import cnnctl
from cnnctl import checkpoint
from cnnctl.cli import app
from cnnctl.data.base import Preprocessing
from cnnctl.data.loader import Normalizer, fit_to_input
from cnnctl.engine.distill import Distillation, check_classes
from cnnctl.engine.fit import Trainer
from cnnctl.errors import UsageError
from cnnctl.models import build_model

runner = CliRunner()


def one_line_error(result, *fragments: str) -> str:
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("error")]  # after the data's
    assert len(lines) == 1 and result.stderr.strip().endswith(lines[0]), result.stderr  # download lines
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def bare(prep: Preprocessing, teacher_prep: Preprocessing, *, temperature: float = 4.0,
         weight: float = 0.7) -> Distillation:
    meta = type("Meta", (), {"preprocessing": teacher_prep, "metrics": {}, "arch": "lenet"})()
    distillation = Distillation.__new__(Distillation)
    distillation.teacher = build_model("lenet", num_classes=4, in_channels=1).eval()
    distillation.meta, distillation.student = meta, prep
    distillation.teacher_prep, distillation.temperature, distillation.weight = teacher_prep, temperature, weight
    distillation.cache, distillation.mode = None, "per batch"
    return distillation


def test_the_loss_is_hintons_formula() -> None:
    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(8, 5, generator=generator), torch.randn(8, 5, generator=generator) * 3
    labels = torch.randint(0, 5, (8,), generator=generator)
    hard = torch.nn.functional.cross_entropy(student, labels)
    prep = Preprocessing(1, (28, 28))
    for temperature, weight in ((4.0, 0.7), (1.0, 0.5), (10.0, 0.9)):
        got = bare(prep, prep, temperature=temperature, weight=weight).loss(student, teacher, hard)
        soft = 0.0  # sum_i sum_c p_t log(p_t / p_s), averaged over the batch, × T²
        for row in range(8):
            p_t = [math.exp(v / temperature) for v in teacher[row].tolist()]
            p_s = [math.exp(v / temperature) for v in student[row].tolist()]
            p_t = [v / sum(p_t) for v in p_t]
            p_s = [v / sum(p_s) for v in p_s]
            soft += sum(t * math.log(t / s) for t, s in zip(p_t, p_s)) / 8
        assert float(got) == pytest.approx((1 - weight) * float(hard) + weight * temperature ** 2 * soft, rel=1e-5)
    assert float(bare(prep, prep, weight=0.0).loss(student, teacher, hard)) == pytest.approx(float(hard))
    assert float(bare(prep, prep, weight=1.0).loss(student, student, hard)) == pytest.approx(0.0, abs=1e-6)


def test_teacher_inputs_are_what_its_own_preprocessing_makes_of_the_pixels() -> None:
    images = torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8)
    student = Preprocessing(1, (28, 28), pad=2, mean=(0.1307,), std=(0.3081,))  # LeNet-5: padded to 32x32
    teacher = Preprocessing(1, (28, 28), pad=0, mean=(0.5,), std=(0.25,))
    as_student = Normalizer(student.mean, student.std, torch.device("cpu"))(fit_to_input(images, student))
    as_teacher = Normalizer(teacher.mean, teacher.std, torch.device("cpu"))(fit_to_input(images, teacher))
    converted = bare(student, teacher).teacher_inputs(as_student)
    assert converted.shape == (5, 1, 28, 28)
    assert torch.allclose(converted, as_teacher, atol=1e-5)
    colour = Preprocessing(3, (28, 28), pad=0, mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.2))
    rgb = bare(student, colour).teacher_inputs(as_student)
    assert rgb.shape == (5, 3, 28, 28)
    pixels = images.float() / 255
    assert torch.allclose(rgb[:, 1:2], (pixels - 0.4) / 0.2, atol=1e-5)
    same = bare(student, student)
    assert same.teacher_inputs(as_student) is as_student


def test_classes_must_match() -> None:
    check_classes(["a", "b"], ["a", "b"], "t.safetensors")
    with pytest.raises(UsageError, match="another order"):
        check_classes(["b", "a"], ["a", "b"], "t.safetensors")
    with pytest.raises(UsageError, match="predicts 2 classes but this run trains 3: lacks c"):
        check_classes(["a", "b"], ["a", "b", "c"], "t.safetensors")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``lenet`` after 2 epochs on microdigits (conftest's: 4 classes, 80 training and 16 validation images),
    which stays registered for the module."""
    from conftest import DIGIT_CLASSES, _micro_loader

    from cnnctl import registry
    from cnnctl.registry import DatasetSpec

    work = tmp_path_factory.mktemp("distill")
    registry.datasets()
    registry.register_dataset(DatasetSpec(
        name="microdigits", description="tiny synthetic digits", classes=DIGIT_CLASSES[:4], image_shape=(1, 28, 28),
        mean=(0.13,), std=(0.31,), train_size=96, test_size=32, loader=_micro_loader({"train": 96, "test": 32}),
        default_val_split=16))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CNNCTL_DATA", str(work / "data"))
        run = cnnctl.train("lenet", dataset="microdigits", epochs=2, out=str(work / "teacher"), plots=False,
                           threads=1, lr=0.003)
        yield run.best_path
    registry._DATASETS.pop("microdigits", None)


def test_a_student_trains_on_cached_teacher_outputs_and_names_its_teacher(teacher: Path, tmp_path: Path) -> None:
    messages: list[str] = []
    result = runner.invoke(app, ["train", "lenet5", "--dataset", "microdigits", "--epochs", "2", "--threads", "1",
                                 "--teacher", str(teacher.parent), "--distill-weight", "0.8", "--out",
                                 str(tmp_path / "student"), "--no-plots", "--augment", "none"])
    assert result.exit_code == 0, result.output
    messages = result.stderr
    assert "teacher outputs: cached for 80 un-augmented training images" in messages
    student = next((tmp_path / "student").rglob("best.safetensors"))
    record = checkpoint.read_meta(student).distillation
    assert record["teacher"] == str(teacher.resolve()) and record["teacher_arch"] == "lenet"
    assert record["weight"] == 0.8 and record["temperature"] == 4.0 and record["teacher_outputs"] == "cached"
    import hashlib

    assert record["teacher_sha256"] == hashlib.sha256(teacher.read_bytes()).hexdigest()
    assert checkpoint.read_meta(student).config["teacher"] == str(teacher.parent)


def test_cached_outputs_are_the_teachers_outputs_of_each_batch(teacher: Path) -> None:
    from cnnctl.recipe.config import TrainConfig

    trainer = Trainer(TrainConfig(arch="lenet5", dataset="microdigits", teacher=str(teacher), threads=1,
                                  augment="none", batch_size=16))
    trainer.config.resolve_defaults()
    trainer.setup()
    distillation = trainer.distillation
    assert distillation.mode == "cached" and distillation.cache.shape == (80, 4)
    model, _ = checkpoint.load(teacher)
    for inputs, _labels in trainer.train_batches:
        direct = model(distillation.teacher_inputs(inputs)).detach()
        looked_up = distillation.teacher_logits(inputs, trainer.train_batches.last_index)
        assert torch.allclose(looked_up, direct, atol=1e-5)


def test_augmented_batches_get_the_teacher_per_batch(teacher: Path) -> None:
    from cnnctl.recipe.config import TrainConfig

    trainer = Trainer(TrainConfig(arch="simplecnn", dataset="microdigits", teacher=str(teacher), threads=1,
                                  augment="shift", batch_size=16))
    trainer.config.resolve_defaults()
    trainer.setup()
    assert trainer.distillation.cache is None and trainer.distillation.mode == "per batch"
    inputs, labels = next(iter(trainer.train_batches))
    model, _ = checkpoint.load(teacher)
    expected = trainer.distillation.loss(trainer.model(inputs), model(inputs).detach(),
                                         torch.nn.functional.cross_entropy(trainer.model(inputs), labels))
    got = trainer.loss(trainer.model(inputs), labels, inputs).detach()
    assert float(got) == pytest.approx(float(expected.detach()), rel=1e-5)


def test_bad_teachers_are_one_line(teacher: Path, tiny_digits, tmp_path: Path) -> None:  # noqa: ARG001
    out = ["--out", str(tmp_path / "runs"), "--no-plots", "--threads", "1", "--epochs", "1"]
    one_line_error(runner.invoke(app, ["train", "lenet5", "--dataset", "tinydigits", "--teacher", str(teacher),
                                       *out]), "predicts 4 classes but this run trains 10")
    one_line_error(runner.invoke(app, ["train", "lenet5", "--dataset", "microdigits", "--teacher",
                                       str(tmp_path / "nowhere.safetensors"), *out]), "does not exist")
    one_line_error(runner.invoke(app, ["train", "lenet5", "--dataset", "microdigits", "--teacher", str(teacher),
                                       "--distill-weight", "1.5", *out]), "--distill-weight must be in [0, 1]")
    one_line_error(runner.invoke(app, ["train", "lenet5", "--dataset", "microdigits", "--teacher", str(teacher),
                                       "--distill-temperature", "0", *out]), "--distill-temperature")
