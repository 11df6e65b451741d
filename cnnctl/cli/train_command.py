"""``cnnctl train``."""

from __future__ import annotations

from typing import Annotated

import typer

from cnnctl.cli._common import command


@command()
def train(
    arch: Annotated[str, typer.Argument(help="architecture (see `cnnctl list`)")],
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="registered dataset name")] = "mnist",
    epochs: Annotated[int, typer.Option(help="training epochs")] = 10,
    batch_size: Annotated[int, typer.Option(help="images per step")] = 128,
    lr: Annotated[float | None, typer.Option(
        help="(peak) learning rate [default: adam 5e-3 with onecycle, else 1e-3; sgd 0.1 / 0.05]")] = None,
    optimizer: Annotated[str, typer.Option(help="adam or sgd")] = "adam",
    scheduler: Annotated[str, typer.Option(help="learning-rate schedule: onecycle, cosine or none")] = "onecycle",
    momentum: Annotated[float, typer.Option(help="SGD momentum")] = 0.9,
    weight_decay: Annotated[float, typer.Option(help="L2 weight decay")] = 0.0,
    seed: Annotated[int, typer.Option(help="random seed (split, initialisation, shuffling)")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps")] = "auto",
    val_split: Annotated[float | None, typer.Option(
        help="validation images held out of train: a count, or a fraction < 1 [default: the dataset's, 5000 "
             "for MNIST]; 0 for none")] = None,
    augment: Annotated[str | None, typer.Option(help="none, shift or crop-flip [default: the dataset's]")] = None,
    img_size: Annotated[int | None, typer.Option(help="resize images to this square size")] = None,
    out: Annotated[str, typer.Option(help="folder that holds run folders")] = "runs",
    name: Annotated[str | None, typer.Option(help="run group name [default: ARCH-DATASET]")] = None,
    root: Annotated[str | None, typer.Option(help="data folder [env: CNNCTL_DATA]")] = None,
    mirror: Annotated[str | None, typer.Option(help="dataset mirror URL or folder [env: CNNCTL_MIRROR]")] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads [default: torch's choice]")] = None,
    channels_last: Annotated[bool, typer.Option(help="channels-last memory format")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="print only the final result")] = False,
    pretrained: Annotated[str | None, typer.Option(
        help="start from local weights: .safetensors, or a .pth/.pt state dict (never downloaded)")] = None,
    freeze_epochs: Annotated[int, typer.Option(
        min=0, help="train only the classifier for the first N epochs, then every layer")] = 0,
    dropout: Annotated[float | None, typer.Option(
        help="dropout before the classifier, for architectures whose head has one [default: the architecture's]"
    )] = None,
    data: Annotated[str | None, typer.Option(
        help="train on your own images: a folder with one sub-folder per class, or with train/ (val/, test/) "
             "holding them; resized to --img-size [default 64]")] = None,
    limit: Annotated[int | None, typer.Option(help="train on this many randomly chosen training images")] = None,
) -> None:
    """Train ARCH on a dataset; writes runs/ARCH-DATASET/N/ with checkpoints, metrics.csv and config.json."""
    from cnnctl.config import TrainConfig
    from cnnctl.engine.fit import Trainer
    from cnnctl.progress import make_reporter

    config = TrainConfig(
        arch=arch, dataset=dataset, epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer,
        scheduler=scheduler,
        momentum=momentum, weight_decay=weight_decay, seed=seed, device=device, val_split=val_split,
        augment=augment, img_size=img_size, out=out, name=name, root=root, mirror=mirror, threads=threads,
        channels_last=channels_last,
        pretrained=pretrained, freeze_epochs=freeze_epochs, arch_args={} if dropout is None else {"dropout": dropout},
        data_dir=data, limit=limit,
    )
    reporter = make_reporter(quiet=quiet)
    try:
        result = Trainer(config, reporter).run()
    finally:
        reporter.close()
    if quiet and result.test is not None:
        from cnnctl.progress import end_line

        print(end_line(result.test))
    print(f"run folder: {result.run_dir}")
