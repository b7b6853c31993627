"""A row's ``images``: one image or a list, each a file path (relative paths are read next to
the data file), raw bytes, a ``{"bytes": ..., "path": ...}`` record (the Hugging Face
``datasets`` Image feature) or a PIL image; every one becomes an RGB PIL image, and a bad one
is a :class:`~dpokit.data.io.DataError` naming file, row and field.

    >>> from PIL import Image
    >>> from dpokit.data.io import Record
    >>> [im.size for im in row_images(Record("x.jsonl", 1, {"images": Image.new("L", (4, 3))}))]
    [(4, 3)]
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from .io import DataError, Record

COLUMN = "images"


def open_image(value: Any, record: Record, name: str):
    from ..core.packages import need

    need("PIL", "vision", "image rows")
    from PIL import Image, UnidentifiedImageError

    if isinstance(value, Image.Image):
        return value.convert("RGB")
    if isinstance(value, dict):  # the datasets Image feature: bytes win over a path
        if value.get("bytes") is not None:
            value = value["bytes"]
        elif value.get("path"):
            value = value["path"]
        else:
            raise DataError(record.source, record.row, name,
                            "an image record needs 'bytes' or 'path'")
    try:
        if isinstance(value, (bytes, bytearray)):
            with Image.open(io.BytesIO(value)) as image:
                return image.convert("RGB")
        if isinstance(value, str) and value.strip():
            path = Path(value)
            if not path.is_absolute() and record.source:
                path = Path(record.source).parent / path
            with Image.open(path) as image:
                return image.convert("RGB")
    except FileNotFoundError:
        raise DataError(record.source, record.row, name, f"no image file {value!r}") from None
    except (UnidentifiedImageError, OSError) as err:
        raise DataError(record.source, record.row, name, f"not a readable image: {err}") from None
    raise DataError(record.source, record.row, name, "an image is a path, bytes, "
                    f"{{'bytes', 'path'}} or a PIL image; got {type(value).__name__}")


def row_images(record: Record) -> list:
    """The row's images as RGB PIL images, in order (none when the column is absent or null)."""
    value = record.values.get(COLUMN)
    if value is None:
        return []
    values = value if isinstance(value, (list, tuple)) else [value]
    return [open_image(v, record, f"{COLUMN}[{i}]" if isinstance(value, (list, tuple)) else COLUMN)
            for i, v in enumerate(values)]
