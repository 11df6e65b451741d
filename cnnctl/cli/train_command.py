"""``cnnctl train``."""

from __future__ import annotations

from typing import Annotated

import typer

from cnnctl.cli._common import command

OPTIM = "Optimizer and schedule"
REGULARISE = "Regularisation and precision"
RUN = "Checkpoints, resume and reproducibility"
DIST = "Several processes (distributed)"
PRETRAINED = "Pretrained weights and fine-tuning"


@command()
def train(
    ctx: typer.Context,
    arch: Annotated[str | None, typer.Argument(
        help="architecture (see `cnnctl list`) \\[default: from --config or --resume]")] = None,
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="registered dataset name")] = "mnist",
    epochs: Annotated[int, typer.Option(help="training epochs (with --resume: the new total)")] = 10,
    batch_size: Annotated[int, typer.Option(help="images per step")] = 128,
    lr: Annotated[float | None, typer.Option(
        help="(peak) learning rate \\[default: adam/adamw 1e-3, or 5e-3 with onecycle for the LeNet family; "
             "sgd 0.1 with onecycle, else 0.05; rmsprop 1e-3]", rich_help_panel=OPTIM)] = None,
    optimizer: Annotated[str, typer.Option(help="sgd, adam, adamw or rmsprop", rich_help_panel=OPTIM)] = "adam",
    scheduler: Annotated[str, typer.Option(
        help="learning-rate schedule: none, step, multistep, cosine, onecycle, plateau or cosine-restarts",
        rich_help_panel=OPTIM)] = "onecycle",
    momentum: Annotated[float | None, typer.Option(
        help="SGD/RMSprop momentum, Adam/AdamW β1 \\[default: 0.9; rmsprop 0]", rich_help_panel=OPTIM)] = None,
    weight_decay: Annotated[float | None, typer.Option(
        help="weight decay (L2; decoupled for adamw) \\[default: 0; adamw 0.01]", rich_help_panel=OPTIM)] = None,
    seed: Annotated[int, typer.Option(help="random seed (split, initialisation, shuffling)", rich_help_panel=RUN)] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps")] = "auto",
    val_split: Annotated[float | None, typer.Option(
        help="validation images held out of train: a count, or a fraction < 1 \\[default: the dataset's, 5000 "
             "for MNIST]; 0 for none")] = None,
    augment: Annotated[str | None, typer.Option(help="none, shift, crop-flip or affine \\[default: the dataset's]",
                                                rich_help_panel=REGULARISE)] = None,
    img_size: Annotated[int | None, typer.Option(help="resize images to this square size")] = None,
    out: Annotated[str, typer.Option(help="folder that holds run folders")] = "runs",
    name: Annotated[str | None, typer.Option(help="run group name \\[default: ARCH-DATASET]")] = None,
    root: Annotated[str | None, typer.Option(help="data folder \\[env: CNNCTL_DATA]")] = None,
    mirror: Annotated[str | None, typer.Option(help="dataset mirror URL or folder \\[env: CNNCTL_MIRROR]")] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads \\[default: torch's choice]")] = None,
    channels_last: Annotated[bool | None, typer.Option(
        help="channels-last (NHWC) memory format \\[default: on for networks without BatchNorm, where it is "
             "faster on CPU; see benchmarks/choices.py]")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="print only the final result")] = False,
    pretrained: Annotated[str | None, typer.Option(
        help="start from published weights: imagenet (the architecture's recommended ImageNet weights) or a "
             "weights name (IMAGENET1K_V1, IMAGENET1K_V2, DEFAULT; timm: a tag), fetched into torch's cache and "
             "verified; or from a local .safetensors / .pth / .pt file")] = None,
    freeze_epochs: Annotated[int, typer.Option(
        min=0, help="train only the classifier for the first N epochs, then every layer")] = 0,
    dropout: Annotated[float | None, typer.Option(
        help="dropout before the classifier, for architectures whose head has one \\[default: the architecture's]"
    )] = None,
    data: Annotated[str | None, typer.Option(
        help="train on your own images: a folder with one sub-folder per class, or with train/ (val/, test/) "
             "holding them; resized to --img-size \\[default 64]")] = None,
    limit: Annotated[int | None, typer.Option(help="train on this many randomly chosen training images")] = None,
    # --- training engine (issue 5) ---
    nesterov: Annotated[bool, typer.Option(help="Nesterov momentum (sgd)", rich_help_panel=OPTIM)] = False,
    warmup_epochs: Annotated[float, typer.Option(
        help="linear warm-up from ~0 to the learning rate over this many epochs (not with onecycle)",
        rich_help_panel=OPTIM)] = 0.0,
    step_size: Annotated[int | None, typer.Option(
        help="step: epochs between decays \\[default: epochs/3]", rich_help_panel=OPTIM)] = None,
    gamma: Annotated[float, typer.Option(
        help="step, multistep, plateau: factor per decay", rich_help_panel=OPTIM)] = 0.1,
    milestones: Annotated[str | None, typer.Option(
        help="multistep: epochs after which to decay, e.g. 30,60 \\[default: 50% and 75% of epochs]",
        rich_help_panel=OPTIM)] = None,
    t0: Annotated[int | None, typer.Option(
        help="cosine-restarts: epochs of the first cycle \\[default: epochs/3]", rich_help_panel=OPTIM)] = None,
    t_mult: Annotated[int, typer.Option(
        help="cosine-restarts: each cycle is this many times longer", rich_help_panel=OPTIM)] = 1,
    min_lr: Annotated[float, typer.Option(
        help="cosine, cosine-restarts: final rate; plateau: lowest rate", rich_help_panel=OPTIM)] = 0.0,
    plateau_patience: Annotated[int, typer.Option(
        help="plateau: epochs without improvement of --monitor before decaying", rich_help_panel=OPTIM)] = 2,
    label_smoothing: Annotated[float, typer.Option(
        help="label smoothing of the training loss (0-1)", rich_help_panel=REGULARISE)] = 0.0,
    grad_clip: Annotated[float | None, typer.Option(
        help="clip the gradients' global L2 norm to this", rich_help_panel=REGULARISE)] = None,
    amp: Annotated[bool, typer.Option(
        help="mixed precision: bf16 or fp16 + gradient scaler on CUDA; bf16 on CPUs that have it",
        rich_help_panel=REGULARISE)] = False,
    amp_dtype: Annotated[str, typer.Option(help="auto, fp16 or bf16", rich_help_panel=REGULARISE)] = "auto",
    patience: Annotated[int | None, typer.Option(
        help="early stopping: stop after this many epochs without improvement of --monitor",
        rich_help_panel=RUN)] = None,
    monitor: Annotated[str, typer.Option(
        help="val_acc or val_loss: picks best.safetensors, early stopping and plateau", rich_help_panel=RUN)]
        = "val_acc",
    keep: Annotated[int, typer.Option(
        help="keep the K best epochs in checkpoints/ (best.safetensors is always the best)",
        rich_help_panel=RUN)] = 1,
    deterministic: Annotated[bool, typer.Option(
        help="deterministic kernels: the same seed gives the same weights", rich_help_panel=RUN)] = False,
    plots: Annotated[bool, typer.Option(
        help="write curves.png, confusion.png and predictions.png into the run folder", rich_help_panel=RUN)]
        = True,
    config_file: Annotated[str | None, typer.Option(
        "--config", help="YAML, TOML or JSON file of options (flags given here override it), e.g. a run's "
                         "config.yaml", rich_help_panel=RUN)] = None,
    resume: Annotated[str | None, typer.Option(
        help="continue the run in this folder (or its last.safetensors); --epochs may extend it",
        rich_help_panel=RUN)] = None,
    # --- distributed training (issue 8) ---
    nproc: Annotated[int | None, typer.Option(
        help="train with N processes on this machine (torchrun + DistributedDataParallel; one GPU each on CUDA); "
             "--batch-size is the global batch, split among them", rich_help_panel=DIST)] = None,
    sync_bn: Annotated[bool, typer.Option(
        help="with several processes on CUDA: BatchNorm statistics over the global batch (SyncBatchNorm)",
        rich_help_panel=DIST)] = False,
    # --- pretrained weights: where they come from, offline use, fine-tuning controls ---
    weights_mirror: Annotated[str | None, typer.Option(
        help="URL or folder holding weights files under their published names, tried before the official URL "
             "\\[env: CNNCTL_WEIGHTS_MIRROR]", rich_help_panel=PRETRAINED)] = None,
    offline: Annotated[bool, typer.Option(
        "--offline", envvar="CNNCTL_OFFLINE",
        help="open no network connection: weights and datasets must be on disk (or in a --weights-mirror / "
             "--mirror folder) \\[env: CNNCTL_OFFLINE=1]", rich_help_panel=PRETRAINED)] = False,
    backbone_lr_scale: Annotated[float | None, typer.Option(
        help="learning rate of every layer but the classifier, relative to --lr \\[default: 0.1 with "
             "--pretrained, else 1]", rich_help_panel=PRETRAINED)] = None,
    grey_input: Annotated[str | None, typer.Option(
        help="grey images with colour weights: replicate (to 3 channels) or sum (the first convolution's "
             "filters) \\[default: replicate for published weights, sum for weight files]",
        rich_help_panel=PRETRAINED)] = None,
) -> None:
    """Train ARCH on a dataset; writes runs/ARCH-DATASET/N/ with checkpoints, metrics.csv, config.yaml and plots."""
    from cnnctl.engine.interrupt import TrainingInterrupted
    from cnnctl.errors import CnnctlError, UsageError
    from cnnctl.progress import make_reporter

    explicit = _explicit_options(ctx)
    if offline:  # for everything this process (and any it starts) does: dataset downloads obey it too
        import os

        os.environ["CNNCTL_OFFLINE"] = "1"
    if data is not None:
        explicit["data_dir"] = data
    if dropout is not None:
        explicit["arch_args"] = {"dropout": dropout}
    if resume is not None:
        if config_file is not None:
            raise UsageError("--config and --resume do not combine: a resumed run keeps its own configuration",
                             hint="pass --resume alone (with --epochs to extend it)")
        from cnnctl.config_file import coerce_options
        from cnnctl.engine.fit import Trainer

        trainer = Trainer.resuming(resume, coerce_options(explicit, source="the command line"))
    else:
        from cnnctl.config_file import build_train_config
        from cnnctl.engine.fit import Trainer

        trainer = Trainer(build_train_config(explicit, config_file))
    if nproc is not None:
        from cnnctl.cli._common import state
        from cnnctl.engine.distributed import start_processes

        code = start_processes(trainer.config, nproc, ["train", *_given_arguments(ctx, leave_out="nproc")],
                               resume_dir=trainer.resume_dir, debug=state.debug)
        if code is not None:
            raise typer.Exit(code)
    reporter = make_reporter(quiet=quiet)
    trainer.reporter = reporter
    try:
        result = trainer.run()
    except TrainingInterrupted as error:
        if not trainer.dist.is_main:  # rank 0 says how to resume; the other ranks' copies would repeat it
            raise typer.Exit(error.exit_code) from None
        raise
    except CnnctlError as error:
        if trainer.dist.enabled and not trainer.dist.is_main:  # say which process it was (it may be alone)
            error.args = (f"[rank {trainer.dist.rank}] {error}",)
        raise
    finally:
        reporter.close()
    if not trainer.dist.is_main:
        return
    if quiet and result.test is not None:
        from cnnctl.progress import end_line

        print(end_line(result.test))
    print(f"run folder: {result.run_dir}")


def _explicit_options(ctx: typer.Context) -> dict[str, object]:
    """The TrainConfig options given on the command line (or by environment variable), not left at defaults:
    only these override a --config file or a resumed run's settings."""
    from dataclasses import fields

    from cnnctl.config import TrainConfig

    known = {f.name for f in fields(TrainConfig)}
    explicit = {}
    for name, value in ctx.params.items():
        source = ctx.get_parameter_source(name)
        if name in known and source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT", "PROMPT"):
            explicit[name] = value
    return explicit


def _given_arguments(ctx: typer.Context, leave_out: str) -> list[str]:
    """The arguments and options given on the command line, written out again (what `--nproc` passes on to
    every process; options from the environment reach them through it)."""
    args: list[str] = []
    for param in ctx.command.params:
        source = ctx.get_parameter_source(param.name)
        if param.name == leave_out or source is None or source.name != "COMMANDLINE":
            continue
        value = ctx.params[param.name]
        if param.param_type_name == "argument":
            args.append(str(value))
        elif getattr(param, "is_flag", False):
            args.append(param.opts[0] if value else param.secondary_opts[0])
        else:
            args += [param.opts[0], str(value)]
    return args
