"""Safe image decoding: bytes in, a model-sized RGB uint8 array or a readable per-item error out.

Every check that can refuse an image runs before its pixels are decoded: byte size, format
(sniffed from the content, never trusted from the name), and pixel count from the header.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import stat
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})


def text_or_none(value) -> str | None:
    """A string cell as it came through Arrow and numpy: None, NaN or "" all mean no text."""
    return value if isinstance(value, str) and value else None


class MediaError(ValueError):
    """A per-item problem with its media; the message is written to the row's `error`."""


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 50 * 2**20
    max_pixels: int = 80_000_000  # a 10,000 x 8,000 photo; Pillow's own bomb limit is ~89 MP


def read_media(uri: str, max_bytes: int, root: str | None = None) -> bytes:
    """Reads a local path, `file://`, `s3://` or `gs://` URI, refusing files over `max_bytes`;
    a local path is opened as `_open_local` says."""
    with _opened(uri, max_bytes, root) as f:
        return f.read()


@contextlib.contextmanager
def local_copy(uri: str, max_bytes: int, root: str | None = None):
    """Yields (local path, sha256) for a media file that a decoder must open by path (videos):
    local files are hashed in place and handed over as the file already open (`/proc/self/fd/N`
    on Linux: a path swapped after the check is not followed), remote ones copied to a temporary
    file while hashed."""
    digest = hashlib.sha256()
    with contextlib.ExitStack() as cleanup:
        source = cleanup.enter_context(_opened(uri, max_bytes, root))
        copy = cleanup.enter_context(tempfile.NamedTemporaryFile(suffix=os.path.splitext(uri)[1])) if "://" in uri else None
        while chunk := source.read(1 << 20):  # read errors become MediaError in `_opened`
            digest.update(chunk)
            if copy:
                copy.write(chunk)
        if copy:
            copy.flush()
            yield copy.name, digest.hexdigest()
        else:
            opened = f"/proc/self/fd/{source.fileno()}"
            yield (opened if os.path.exists(opened) else uri), digest.hexdigest()


@contextlib.contextmanager
def _opened(uri: str, max_bytes: int, root: str | None = None):
    """A readable file for a local path or remote URI, once its size is known to be allowed."""
    try:
        if "://" in uri:
            from shoplens.encoders.object_store import filesystem_for

            filesystem, path = filesystem_for(uri)
            size, f = filesystem.get_file_info(path).size, filesystem.open_input_stream(path)
        else:
            size, f = _open_local(uri, root)
    except MediaError:
        raise
    except (OSError, ValueError) as e:
        raise MediaError(f"cannot read {uri}: {e}") from e
    with f:
        _check_size(size, max_bytes)
        try:
            yield f
        except OSError as e:  # a read that failed half-way
            raise MediaError(f"cannot read {uri}: {e}") from e


def _open_local(path: str, root: str | None) -> tuple[int, io.BufferedReader]:
    """(size, file) of a regular local file; anything else (a FIFO, a device, a folder) is a
    MediaError, never a read that blocks. With `root` (a manifest's media root, the path checked
    when the manifest was read), the last component is not followed if it is a link, and the
    file actually opened must lie inside `root`: a link swapped in after the check is refused."""
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | (getattr(os, "O_NOFOLLOW", 0) if root else 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise MediaError(f"{path} is a symbolic link: media under the media root are opened without following links") from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise MediaError(f"{path} is not a regular file (a {_file_type(info.st_mode)}): only files are read")
        if root is not None:
            opened = f"/proc/self/fd/{fd}"
            real = os.readlink(opened) if os.path.exists(opened) else os.path.realpath(path)
            if not Path(real).is_relative_to(Path(root)):
                raise MediaError(f"{path} now leads to {real}, outside the media root {root}")
        os.set_blocking(fd, True)
        return info.st_size, os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _file_type(mode: int) -> str:
    kinds = (
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISDIR, "folder"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISSOCK, "socket"),
    )
    return next((name for test, name in kinds if test(mode)), "special file")


def _check_size(size: int | None, max_bytes: int) -> None:
    if size is not None and size > max_bytes:
        raise MediaError(f"file is {size:,} bytes, over the {max_bytes:,}-byte limit")


def decode_image(data: bytes, size: int, *, name: str = "", limits: ImageLimits = ImageLimits()) -> np.ndarray:
    """Decodes an image to uint8 [size, size, 3] RGB: EXIF-rotated, shortest side resized
    (bicubic) to `size`, centre-cropped, as OpenCLIP's own preprocessing does. Raises MediaError."""
    return crop_to_model(load_image(data, size, name=name, limits=limits), size)


def check_extension(name: str) -> None:
    """Refuses a file whose name says it is not an image (an extensionless name passes)."""
    ext = os.path.splitext(name)[1].lower()
    if ext and ext not in IMAGE_EXTENSIONS:
        raise MediaError(f"file extension {ext!r} is not an image type ({', '.join(sorted(IMAGE_EXTENSIONS))})")


def load_image(data: bytes, size: int, *, name: str = "", limits: ImageLimits = ImageLimits()):
    """Decodes an image to an EXIF-rotated RGB Pillow image of at least `size` on its shortest
    side where the source has it (JPEGs are decoded at a reduced scale when that covers it).
    Raises MediaError."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    check_extension(name)
    if len(data) == 0:
        raise MediaError("empty file (0 bytes)")
    _check_size(len(data), limits.max_bytes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # damaged metadata warnings: the error says enough
        # Pillow only warns between its limit and twice it: every bomb is an error here.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
        except UnidentifiedImageError:
            raise MediaError(f"not an accepted image format ({', '.join(ALLOWED_FORMATS)}); the file starts with {data[:12]!r}") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise MediaError(f"refused as a decompression bomb: {e}") from None
        except Exception as e:  # a damaged header: OSError, SyntaxError, struct.error...
            raise MediaError(f"corrupt image header: {e}") from None
        width, height = image.size
        if width * height > limits.max_pixels:
            raise MediaError(f"image is {width}x{height} = {width * height / 1e6:.0f} MP, over the {limits.max_pixels / 1e6:.0f} MP limit")
        if width == 0 or height == 0:
            raise MediaError(f"image has no pixels ({width}x{height})")
        fmt = image.format
        try:
            if fmt == "JPEG":
                # Let libjpeg decode at 1/2, 1/4 or 1/8 scale when that still covers `size`.
                image.draft("RGB", (size, size))
            image.load()
            return to_rgb(ImageOps.exif_transpose(image))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise MediaError(f"refused as a decompression bomb: {e}") from None
        except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, struct.error...
            raise MediaError(f"corrupt or truncated {fmt} image: {e}") from None


def to_rgb(image):
    """Every Pillow mode to 8-bit RGB: alpha over white, 16-bit and float scaled, CMYK converted."""
    from PIL import Image

    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode.startswith("I") or image.mode == "F":
        return Image.fromarray(_to_uint8(np.asarray(image))).convert("RGB")
    return image.convert("RGB")


def _to_uint8(values: np.ndarray) -> np.ndarray:
    """Grey levels of any depth to 0..255: 16-bit by its full range, float by 0..1."""
    if values.dtype.kind == "f":
        top = 1.0 if np.nanmax(values, initial=0) <= 1.0 else 255.0
        return np.clip(np.nan_to_num(values) * (255.0 / top), 0, 255).astype(np.uint8)
    top = 255 if values.max(initial=0) <= 255 else 65535
    return (np.clip(values, 0, top).astype(np.float64) * (255.0 / top)).round().astype(np.uint8)


def fit_within(image, side: int) -> np.ndarray:
    """A Pillow image to uint8 [H, W, 3], scaled down (never up) so that its long side is at most `side`."""
    from PIL import Image

    width, height = image.size
    scale = min(1.0, side / max(width, height))
    if scale < 1.0:
        image = image.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.BICUBIC, reducing_gap=3.0)
    return np.array(image, dtype=np.uint8)


def crop_to_model(image, size: int) -> np.ndarray:
    """A Pillow image to uint8 [size, size, 3]: its centre square, resized (bicubic)."""
    from PIL import Image

    width, height = image.size
    side = min(width, height)
    # The centre square of the source, resized in one call: the same pixels as a resize of the
    # shortest side followed by a centre crop, without resampling what the crop throws away.
    left, top = (width - side) / 2, (height - side) / 2
    resized = image.resize((size, size), Image.BICUBIC, box=(left, top, left + side, top + side), reducing_gap=3.0)
    return np.array(resized, dtype=np.uint8)
