"""Learning-rate schedules: the formulas against torch's own schedulers, and every optimizer × scheduler
combination's lr trace in metrics.csv against an independent computation of its formula."""

from __future__ import annotations

import bisect
import csv
import math
from pathlib import Path

import pytest
import torch

import cnnctl
from cnnctl.engine.schedules import PlateauState, SchedulePlan
from cnnctl.recipe.optimizers import OPTIMIZERS
from cnnctl.recipe.schedules import SCHEDULERS


def torch_trace(scheduler_factory, steps: int, lr: float = 0.1, per_epoch: int | None = None,
                optimizer: str = "sgd") -> list[tuple[float, float]]:
    """(lr, momentum) before each of ``steps`` optimizer steps, as torch's scheduler sets them."""
    parameter = torch.nn.Parameter(torch.zeros(1))
    if optimizer == "sgd":
        opt = torch.optim.SGD([parameter], lr=lr, momentum=0.9)
    else:
        opt = torch.optim.Adam([parameter], lr=lr)
    scheduler = scheduler_factory(opt)
    trace = []
    for step in range(steps):
        group = opt.param_groups[0]
        trace.append((group["lr"], group["betas"][0] if "betas" in group else group["momentum"]))
        opt.step()
        if per_epoch is None or (step + 1) % per_epoch == 0:
            scheduler.step()
    return trace


def our_trace(plan: SchedulePlan, steps: int, lr: float = 0.1) -> list[tuple[float, float | None]]:
    return [(plan.lr(lr, step), plan.momentum(step)) for step in range(steps)]


def test_onecycle_matches_torch_including_momentum() -> None:
    plan = SchedulePlan("onecycle", epochs=5, steps_per_epoch=37)
    ours = our_trace(plan, plan.total_steps)
    for optimizer in ("sgd", "adam"):
        reference = torch_trace(lambda o: torch.optim.lr_scheduler.OneCycleLR(
            o, max_lr=0.1, total_steps=plan.total_steps, pct_start=0.25), plan.total_steps, optimizer=optimizer)
        for (lr, momentum), (lr_ref, momentum_ref) in zip(ours, reference, strict=True):
            assert lr == pytest.approx(lr_ref, rel=1e-9, abs=1e-15)
            assert momentum == pytest.approx(momentum_ref, rel=1e-12)
    assert ours[0][0] == pytest.approx(0.1 / 25) and ours[-1][0] == pytest.approx(0.1 / 25 / 1e4)


@pytest.mark.parametrize("name, factory, per_epoch", [
    ("step", lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.5), True),
    ("multistep", lambda o: torch.optim.lr_scheduler.MultiStepLR(o, milestones=[1, 4], gamma=0.3), True),
    ("cosine", lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=6 * 11, eta_min=1e-3), False),
])
def test_epoch_and_step_schedules_match_torch(name: str, factory, per_epoch: bool) -> None:
    plan = SchedulePlan(name, epochs=6, steps_per_epoch=11, gamma={"step": 0.5}.get(name, 0.3), step_size=2,
                        milestones=(1, 4), min_lr=1e-3)
    reference = torch_trace(factory, plan.total_steps, per_epoch=11 if per_epoch else None)
    for step, (lr, _) in enumerate(our_trace(plan, plan.total_steps)):
        assert lr == pytest.approx(reference[step][0], rel=1e-9), step


def test_cosine_restarts_matches_torch_with_fractional_epochs() -> None:
    plan = SchedulePlan("cosine-restarts", epochs=7, steps_per_epoch=10, t0=1, t_mult=2, min_lr=0.01)
    parameter = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([parameter], lr=0.1)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=1, T_mult=2, eta_min=0.01)
    for step in range(plan.total_steps):
        scheduler.step(step / 10)
        assert plan.lr(0.1, step) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9), step


def test_plateau_counts_like_reduce_lr_on_plateau() -> None:
    metrics = [1.0, 0.9, 0.95, 0.9, 0.89995, 0.91, 0.5, 0.6, 0.7, 0.8, 0.9, 0.4]
    for mode, sign in (("min", 1), ("max", -1)):
        parameter = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([parameter], lr=0.1)
        reference = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode=mode, factor=0.5, patience=1,
                                                               min_lr=0.004)
        state = PlateauState(mode=mode, patience=1, factor=0.5)
        plan = SchedulePlan("plateau", epochs=20, steps_per_epoch=1, min_lr=0.004)
        for value in metrics:
            reference.step(sign * value)
            state.observe(sign * value)
            assert plan.lr(0.1, 0, state.scale) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12)
        assert state.reductions >= 2


# ------------------------------------------------------------------------------------------------ formulas
def expected_lr(name: str, step: int, *, base: float, steps: int, epochs: int, warmup: int = 0,
                val_metrics: list[float] | None = None, **p) -> float:
    """The learning rate of optimizer step ``step``, computed independently from each schedule's definition."""
    epoch = step // steps
    total = epochs * steps
    if step < warmup:
        return base * (step + 1) / warmup
    if name == "none":
        return base
    if name == "step":
        return base * p["gamma"] ** math.floor(epoch / p["step_size"])
    if name == "multistep":
        return base * p["gamma"] ** bisect.bisect_right(p["milestones"], epoch)
    if name == "cosine":
        return p["min_lr"] + (base - p["min_lr"]) * (1 + math.cos(math.pi * (step - warmup) / (total - warmup))) / 2
    if name == "cosine-restarts":  # SGDR, as in the paper: cycle n starts at t0 (mult^n - 1) / (mult - 1)
        t = (step - warmup) / steps
        t0, mult = p["t0"], p["t_mult"]
        n = int(math.log(t / t0 * (mult - 1) + 1, mult)) if mult > 1 else int(t // t0)
        start = t0 * (mult ** n - 1) / (mult - 1) if mult > 1 else n * t0
        return p["min_lr"] + (base - p["min_lr"]) * (1 + math.cos(math.pi * (t - start) / (t0 * mult ** n))) / 2
    if name == "onecycle":
        parameter = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([parameter], lr=base)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=base, total_steps=total, pct_start=0.25)
        for _ in range(step):
            opt.step()
            scheduler.step()
        return opt.param_groups[0]["lr"]
    if name == "plateau":
        parameter = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([parameter], lr=base)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=p["gamma"],
                                                               patience=p["plateau_patience"], min_lr=p["min_lr"])
        for value in (val_metrics or [])[:epoch]:
            scheduler.step(value)
        return opt.param_groups[0]["lr"]
    raise AssertionError(name)


SCHEDULE_OPTIONS = {"step_size": 1, "gamma": 0.5, "milestones": [1], "t0": 1, "t_mult": 2, "min_lr": 1e-5,
                    "plateau_patience": 0}


def check_lr_trace(run_dir: Path, scheduler: str, *, base: float, steps: int, epochs: int, warmup: int = 0,
                   options: dict | None = None) -> None:
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == list(range(1, epochs + 1))
    val_losses = [float(r["val_loss"]) for r in rows]
    for row in rows:
        epoch = int(row["epoch"])
        for column, step in (("lr", (epoch - 1) * steps), ("lr_end", epoch * steps - 1)):
            expected = expected_lr(scheduler, step, base=base, steps=steps, epochs=epochs, warmup=warmup,
                                   val_metrics=val_losses, **(options or SCHEDULE_OPTIONS))
            assert float(row[column]) == pytest.approx(expected, rel=1e-9), (scheduler, epoch, column)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_every_optimizer_with_every_schedule_logs_its_formula(micro_digits, tmp_path: Path, optimizer: str) -> None:
    """4 optimizers × 7 schedules, 2 epochs of 5 steps each (80 training images, batch 16)."""
    assert len(SCHEDULERS) == 7 and len(OPTIMIZERS) == 4
    for scheduler in SCHEDULERS:
        result = cnnctl.train(arch="simplecnn", dataset="microdigits", epochs=2, batch_size=16, lr=0.01,
                              optimizer=optimizer, scheduler=scheduler, monitor="val_loss", out=str(tmp_path),
                              name=scheduler, plots=False, threads=1, **SCHEDULE_OPTIONS)
        check_lr_trace(result.run_dir, scheduler, base=0.01, steps=5, epochs=2)
        assert all(math.isfinite(row["train_loss"]) for row in result.history)
        assert result.test is not None and result.test["test_count"] == 32


@pytest.mark.parametrize("scheduler", ["cosine", "step", "cosine-restarts"])
def test_warmup_then_schedule(micro_digits, tmp_path: Path, scheduler: str) -> None:
    result = cnnctl.train(arch="simplecnn", dataset="microdigits", epochs=3, batch_size=16, lr=0.01,
                          scheduler=scheduler, warmup_epochs=0.6, out=str(tmp_path), plots=False, threads=1,
                          **SCHEDULE_OPTIONS)
    check_lr_trace(result.run_dir, scheduler, base=0.01, steps=5, epochs=3, warmup=3)
    assert result.history[0]["lr"] == pytest.approx(0.01 / 3)


def test_plateau_reduces_when_validation_loss_stalls(micro_digits, tmp_path: Path) -> None:
    """A learning rate too small to move the validation loss by the relative 1e-4 threshold: plateau (patience 0)
    must reduce it exactly when torch's ReduceLROnPlateau, given the logged losses, does."""
    options = {**SCHEDULE_OPTIONS, "min_lr": 0.0}
    result = cnnctl.train(arch="simplecnn", dataset="microdigits", epochs=4, batch_size=16, lr=1e-6,
                          scheduler="plateau", monitor="val_loss", out=str(tmp_path), plots=False, threads=1,
                          **options)
    check_lr_trace(result.run_dir, "plateau", base=1e-6, steps=5, epochs=4, options=options)
    assert result.history[1]["lr"] == 1e-6 and result.history[-1]["lr"] <= 5e-7  # it did reduce
