"""JPEG decoding on the embedding device: on a GPU, nvJPEG through torchvision, batched, with
the orientation, centre crop and resize done there too, so the CPU only reads bytes and headers.

Every check that can refuse an image still runs on the CPU first, from the header alone (format,
pixel count, bombs). What the device decoder refuses, and every other format, is decoded on the
CPU by `encoders.media` as usual. The result is the same pixels, up to resampling rounding.
"""

from __future__ import annotations

import io
import warnings

import numpy as np

from encoders.media import ImageLimits, MediaError, decode_image

EXIF_ORIENTATION = 0x0112
DEVICE_MODES = ("RGB", "L")  # what nvJPEG decodes as the CPU path would; CMYK, YCCK... go to the CPU


def jpeg_header(data: bytes, limits: ImageLimits = ImageLimits()) -> tuple[bool, int]:
    """(whether the device may decode it, EXIF orientation) from the header alone. Raises
    MediaError for what the CPU path would refuse before decoding (size, bombs, empty files)."""
    from PIL import Image

    if len(data) == 0:
        raise MediaError("empty file (0 bytes)")
    if len(data) > limits.max_bytes:
        raise MediaError(f"file is {len(data):,} bytes, over the {limits.max_bytes:,}-byte limit")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            fmt, mode = image.format, image.mode
            orientation = image.getexif().get(EXIF_ORIENTATION, 1) if fmt == "JPEG" else 1
    except Exception:
        return False, 1  # the CPU path decides, and says why
    if width * height > limits.max_pixels:
        raise MediaError(f"image is {width}x{height} = {width * height / 1e6:.0f} MP, over the {limits.max_pixels / 1e6:.0f} MP limit")
    return fmt == "JPEG" and mode in DEVICE_MODES, int(orientation) if orientation in range(1, 9) else 1


def decode_on_device(images: list[bytes], size: int, device: str, limits: ImageLimits = ImageLimits()):
    """Decodes `images` to uint8 [N, 3, size, size] on `device` (centre square, bicubic resize,
    as `encoders.media.decode_image`), and per image an error (None when decoded). JPEGs the
    device takes are decoded there in one batch; the rest, and any it fails on, on the CPU."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    out = torch.zeros((len(images), 3, size, size), dtype=torch.uint8, device=device)
    errors: list[str | None] = [None] * len(images)
    on_device, orientation = [], {}
    for n, data in enumerate(images):
        try:
            ok, orientation[n] = jpeg_header(data, limits)
        except MediaError as e:
            errors[n] = str(e)
            continue
        if ok:
            on_device.append(n)
    decoded: dict[int, torch.Tensor] = {}
    if on_device:
        tensors = [torch.frombuffer(bytearray(images[n]), dtype=torch.uint8) for n in on_device]
        try:
            decoded = dict(zip(on_device, decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device)))
        except RuntimeError:  # one bad file fails the batch: retry one by one
            for n, tensor in zip(on_device, tensors):
                try:
                    decoded[n] = decode_jpeg(tensor, mode=ImageReadMode.RGB, device=device)
                except RuntimeError:
                    pass  # the CPU path below decodes it, or says what is wrong
    for n, data in enumerate(images):
        if errors[n] is not None:
            continue
        if n in decoded:
            out[n] = crop_and_resize(oriented(decoded[n], orientation[n]), size)
            continue
        try:
            pixels = decode_image(data, size, limits=limits)
            out[n] = torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1))).to(device)
        except MediaError as e:
            errors[n] = str(e)
    return out, errors


def oriented(image, orientation: int):
    """Applies an EXIF orientation (1-8) to a [3, H, W] tensor, as `ImageOps.exif_transpose`."""
    import torch

    if orientation in (2, 4):  # mirrored left-right, top-bottom
        return torch.flip(image, [2 if orientation == 2 else 1])
    turns = {3: 2, 5: 1, 6: -1, 7: -1, 8: 1}.get(orientation, 0)  # quarter turns anticlockwise
    image = torch.rot90(image, turns, dims=(1, 2)) if turns else image
    return torch.flip(image, [1]) if orientation in (5, 7) else image  # 5, 7: transposed

def crop_and_resize(image, size: int):
    """[3, H, W] uint8 -> [3, size, size] uint8: the centre square, resized (bicubic, antialiased)."""
    import torch

    _, height, width = image.shape
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = image[:, top : top + side, left : left + side].unsqueeze(0).float()
    resized = torch.nn.functional.interpolate(square, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    return resized.round_().clamp_(0, 255).to(torch.uint8)[0]
