"""PROVISIONAL stand-in for `resnet_serve/preprocessing.py` inside `<name>-preprocess` entries.

Copied there as `resnet_serve/preprocessing.py`, beside a copy of today's `resnet_serve/data.py`
(which holds `Preprocessing`), until the preprocessing module with its own
`Preprocessing.prepare_encoded` replaces both: then the repository writer copies that module
instead, and this file goes away.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from resnet_serve import data
from resnet_serve.errors import ImageError

# A decompression bomb declares a huge size in a tiny file; it is refused from the header,
# before any pixel is decoded. PIL's own warning threshold.
MAX_IMAGE_PIXELS = 89_478_485
_PIL_MODES = {1: "L", 3: "RGB"}


class Preprocessing(data.Preprocessing):
    def prepare_encoded(self, encoded: bytes) -> np.ndarray:
        """An encoded image file (JPEG, PNG, ...) → the C×H×W float32 model input."""
        try:
            with Image.open(io.BytesIO(encoded)) as pil:
                if pil.width * pil.height > MAX_IMAGE_PIXELS:
                    raise ImageError(
                        f"image of {pil.width}×{pil.height} pixels is over the limit of "
                        f"{MAX_IMAGE_PIXELS:,} pixels"
                    )
                # Cameras store rotation as an EXIF tag rather than rotating the pixels.
                converted = ImageOps.exif_transpose(pil).convert(_PIL_MODES[self.channels])
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise ImageError(f"not a readable image ({exc})") from None
        return self.normalize(np.asarray(converted)[None])[0]
