"""Commands that make a checkpoint: models, train, import, and the degradation experiments."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from resnet_serve.cli.console import check_outputs, command, console, err_console
from resnet_serve.cli.options import DataOption, FlipOption, JsonOption, PadOption, levels
from resnet_serve.cli.render import degradation_table, gradients_table, models_table, trained_line, write_json
from resnet_serve.cli.training_options import Augmentation, Optimization, Processes, given_options
from resnet_serve.errors import ResnetServeError
from resnet_serve.rich_progress import RichReporter

__all__ = ["experiment_app", "import_weights", "models", "train"]


@command
def models(
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list instead of a table.")] = False,
) -> None:
    """List every architecture with its parameters and MACs at its default input size."""
    from resnet_serve.models import list_models

    infos = list_models()
    if as_json:
        print(json.dumps([info.to_dict() for info in infos], indent=2))
        return
    console.print(models_table(infos))


@command
def train(
    ctx: typer.Context,
    arch: Annotated[str | None, typer.Option("--arch", "-a", help=(
        "Architecture (see `resnet-serve models`; default: the --init checkpoint's, else the recipe's)."
    ))] = None,
    data: Annotated[Path | None, typer.Option("--data", help=(
        "An ImageFolder tree of photos of any size (<class>/<image>, optionally under train/ and val/), an IDX "
        "folder or a CIFAR-10/100 archive or folder (default: Fashion-MNIST from the Debian package)."
    ))] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help=(
        "Checkpoint to write (.safetensors); the best, EMA, history and resume files go beside it."
    ))] = Path("checkpoints/model.safetensors"),
    init: Annotated[Path | None, typer.Option("--init", help=(
        "Start from this checkpoint's weights (any resnet-serve checkpoint, an `import`ed torchvision/timm one "
        "included), keeping its normalisation and evaluation preprocessing; the head is sized from the data's classes."
    ))] = None,
    resume: Annotated[Path | None, typer.Option(help=(
        "Continue the interrupted run that wrote this checkpoint (same options; --epochs may be raised; any number "
        "of processes); usually the --output path."
    ))] = None,
    recipe: Annotated[str, typer.Option(help=(
        "demo (Fashion-MNIST in minutes), cifar (the paper's: step schedule, 164 epochs) or imagenet (cosine, "
        "warm-up, label smoothing); the options below change it."
    ))] = "demo",
    epochs: Annotated[float | None, typer.Option(help="Epochs, fractions allowed.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Images per step, over all processes.")] = None,
    limit: Annotated[int | None, typer.Option(
        help="Train on a seeded stratified sample of N images (quick runs)."
    )] = None,
    val_split: Annotated[float | None, typer.Option(
        help="A folder without val/: the seeded stratified fraction held out for validation."
    )] = None,
    seed: Annotated[int, typer.Option(help="Random seed: initialisation, splits, order and augmentation.")] = 0,
    optimization: Optimization = Optimization(),
    augmentation: Augmentation = Augmentation(),
    processes: Processes = Processes(),
    no_skip: Annotated[bool, typer.Option(
        "--no-skip", help="Remove every shortcut: train the architecture's plain twin."
    )] = False,
    json_path: JsonOption = None,
) -> None:
    """Train (or fine-tune with --init) on photos, CIFAR or IDX data and write a checkpoint; one process or many."""
    from resnet_serve.models import architecture_info
    from resnet_serve.progress import SilentReporter
    from resnet_serve.training import train_on_folder
    from resnet_serve.training.distributed import (
        LAUNCHED_BY_RESNET_SERVE,
        launch,
        record_failure,
        world_from_environment,
    )

    check_outputs(output, json_path)
    world = world_from_environment()
    if processes.nproc is not None:
        if world.world_size > 1:
            raise typer.BadParameter("already one of several processes (torchrun); leave --nproc out",
                                     param_hint="--nproc")
        launch(nproc=processes.nproc, arguments=given_options(ctx, without={"nproc"}))
        return
    if no_skip:
        # The plain twin's own name, so the checkpoint rebuilds the network that was trained.
        arch = architecture_info(arch or "resnet20", residual=False).name
    try:
        result = train_on_folder(
            data_dir=data, output=output, recipe=recipe, init_from=init, resume_from=resume,
            reporter=RichReporter(err_console) if world.main else SilentReporter(),
            architecture=arch, epochs=epochs, batch_size=batch_size, limit=limit, val_split=val_split, seed=seed,
            **optimization.changes(), **augmentation.changes(), **processes.changes(),
        )
    except (ResnetServeError, KeyboardInterrupt) as error:
        if world.world_size > 1:
            # One line for the run, not one per process: torchrun's launcher reads this file,
            # and `--nproc`'s reports the process that failed first.
            record_failure(error)
            if not world.main or LAUNCHED_BY_RESNET_SERVE in os.environ:
                raise typer.Exit(130 if isinstance(error, KeyboardInterrupt) else 1) from None
        raise
    if world.main:
        console.print(trained_line(result), highlight=False)
        write_json(json_path, result)


@command
def import_weights(
    weights: Annotated[Path, typer.Argument(
        help="torchvision/timm state dict (.pth, .pt, .bin) or a .safetensors file."
    )],
    arch: Annotated[str, typer.Option(
        "--arch", "-a", help="Architecture the weights are for (see `resnet-serve models`)."
    )],
    output: Annotated[Path, typer.Option("--output", "-o", help="Checkpoint to write (.safetensors).")],
    num_classes: Annotated[int | None, typer.Option(
        help="Classes of the head; another number than the weights' replaces it with an untrained one (to "
        "fine-tune)."
    )] = None,
    classes: Annotated[str | None, typer.Option(
        help="Class names: 'imagenet', or a file with one per line (default: ImageNet's for 1000 classes, else "
        "class_0…)."
    )] = None,
) -> None:
    """Import torchvision/timm weights into a resnet-serve checkpoint, ready for `export`."""
    from resnet_serve.checkpoints import imagenet_class_names, import_foreign_weights, read_class_names, save_checkpoint

    check_outputs(output)
    class_names = None
    if classes is not None:
        class_names = imagenet_class_names() if classes == "imagenet" else read_class_names(classes)
    imported = import_foreign_weights(weights, architecture=arch, num_classes=num_classes, class_names=class_names)
    save_checkpoint(output, model=imported.model, meta=imported.meta)
    meta = imported.meta
    console.print(
        f"[green]✓[/] {meta.architecture}: {meta.num_classes} classes, input {'×'.join(map(str, meta.input_shape))} "
        f"from {imported.source} → {output}"
    )
    if imported.replaced_head:
        err_console.print(
            f"note: the {meta.num_classes}-class head is freshly initialised (untrained); fine-tune before serving"
        )


experiment_app = typer.Typer(
    help="Re-run the paper's experiments: the degradation problem and the gradient highway.", no_args_is_help=True
)


@experiment_app.command()
@command
def degradation(
    depths: Annotated[str, typer.Option(
        help="Depths (6n+2), comma-separated; each trains plain and residual."
    )] = "20,56",
    epochs: Annotated[float | None, typer.Option(help="Epochs (default: 5, or the recipe's with --full).")] = None,
    limit: Annotated[int | None, typer.Option(help="Training images (default: 10,000, or all with --full).")] = None,
    test_limit: Annotated[int | None, typer.Option(help="Test images (default: 2,000, or all with --full).")] = None,
    full: Annotated[bool, typer.Option(
        "--full", help="All images and the recipe's whole schedule (a GPU job)."
    )] = False,
    recipe: Annotated[str, typer.Option(help="Training recipe shared by every net.")] = "cifar",
    pad: PadOption = None,
    flip: FlipOption = None,
    data: DataOption = None,
    seed: Annotated[int, typer.Option(help="Random seed, the same for every net.")] = 0,
    output: Annotated[Path, typer.Option(
        "--output", "-o", help="Folder for checkpoints, CSV and plots."
    )] = Path("experiments/degradation"),
) -> None:
    """Train plain and residual nets at two depths; plot their errors per epoch (the paper's Fig. 6)."""
    from resnet_serve.experiments import run_degradation

    check_outputs(folders=(output,))
    result = run_degradation(
        depths=levels(depths, option="--depths"), epochs=epochs, limit=limit, test_limit=test_limit, full=full,
        recipe=recipe, pad=pad, flip=flip, data_dir=data, seed=seed, output_dir=output,
        reporter=RichReporter(err_console),
    )
    console.print(degradation_table(result))
    console.print(f"[green]✓[/] {result.csv}, {result.plot}")


@experiment_app.command()
@command
def gradients(
    depths: Annotated[str, typer.Option(
        help="Depths (6n+2), comma-separated; each is measured plain and residual."
    )] = "20,56,110",
    steps: Annotated[int, typer.Option(help="SGD steps between the two measurements.")] = 20,
    batch_size: Annotated[int, typer.Option(help="Images per step and in the probe batch.")] = 128,
    data: DataOption = None,
    seed: Annotated[int, typer.Option(help="Random seed, the same for every net.")] = 0,
    output: Annotated[Path, typer.Option(
        "--output", "-o", help="Folder for the JSON and the plot."
    )] = Path("experiments/gradients"),
) -> None:
    """Gradient norm reaching each block of plain and residual nets, at init and after a few steps."""
    from resnet_serve.experiments import run_gradients

    check_outputs(folders=(output,))
    result = run_gradients(
        depths=levels(depths, option="--depths"), steps=steps, batch_size=batch_size, data_dir=data, seed=seed,
        output_dir=output, reporter=RichReporter(err_console),
    )
    console.print(gradients_table(result))
    console.print(f"[green]✓[/] {result.json}, {result.plot}")
