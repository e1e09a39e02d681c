import sys

from resnet_serve.cli import app

sys.exit(app())
