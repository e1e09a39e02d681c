"""Commands that make a checkpoint: models, train, import, and the degradation experiments."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from resnet_serve.cli.console import check_outputs, command, console, err_console
from resnet_serve.cli.options import DataOption, FlipOption, JsonOption, PadOption, levels
from resnet_serve.cli.render import degradation_table, gradients_table, models_table, write_json
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
    arch: Annotated[str, typer.Option("--arch", "-a", help="Architecture (see `resnet-serve models`).")] = "resnet20",
    data: DataOption = None,
    output: Annotated[Path, typer.Option(
        "--output", "-o", help="Checkpoint to write (.safetensors)."
    )] = Path("checkpoints/model.safetensors"),
    epochs: Annotated[float | None, typer.Option(help="Epochs, fractions allowed (default: the recipe's).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Batch size.")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate.")] = None,
    weight_decay: Annotated[float | None, typer.Option(help="Weight decay.")] = None,
    limit: Annotated[int | None, typer.Option(help="Use only the first N training images (quick runs).")] = None,
    pad: PadOption = None,
    flip: FlipOption = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    recipe: Annotated[str, typer.Option(
        help="demo (Fashion-MNIST in minutes), cifar (the paper's: step schedule, 164 epochs) or imagenet (cosine, "
        "warm-up, label smoothing)."
    )] = "demo",
    resume: Annotated[Path | None, typer.Option(
        help="Continue the interrupted run that wrote this checkpoint (same options); usually the --output path."
    )] = None,
    no_skip: Annotated[bool, typer.Option(
        "--no-skip", help="Remove every shortcut: train the architecture's plain twin."
    )] = False,
    amp: Annotated[bool, typer.Option(
        "--amp/--no-amp", help="bfloat16 autocast when training on a CUDA GPU (no effect on the CPU)."
    )] = True,
    json_path: JsonOption = None,
) -> None:
    """Train an architecture on Fashion-MNIST (or a dataset given by --data) and write a checkpoint."""
    from resnet_serve.models import architecture_info
    from resnet_serve.train import train_on_folder

    check_outputs(output, json_path)
    if no_skip:
        # The plain twin's own name, so the checkpoint rebuilds the network that was trained.
        arch = architecture_info(arch, residual=False).name
    result = train_on_folder(
        architecture=arch, data_dir=data, output=output, recipe=recipe, epochs=epochs, batch_size=batch_size,
        lr=lr, weight_decay=weight_decay, limit=limit, pad=pad, flip=flip, seed=seed, amp=amp, resume_from=resume,
        reporter=RichReporter(err_console),
    )
    console.print(
        f"[green]✓[/] {arch}: test accuracy {result.test_accuracy:.2%} after {result.epochs} epochs "
        f"in {result.seconds:.0f} s → {result.checkpoint}"
    )
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
