"""``python -m resnet_serve``: the command line, as torchrun starts it (``torchrun ... -m resnet_serve train``)."""

from resnet_serve.cli import app

app(prog_name="resnet-serve")
