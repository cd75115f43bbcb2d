"""JPEG decoding on the embedding device: on a GPU, nvJPEG through torchvision, batched, with
the orientation, centre crop, resize and PDQ fingerprint done there too, so the CPU only reads
bytes and headers (a CPU decode of a 1024-pixel JPEG, even at 1/8 scale, costs more than the
model's share of a GPU).

Every check that can refuse an image still runs on the CPU first, from the header alone (format,
pixel count, bombs). What the device decoder refuses, a JPEG that does not end where a whole one
ends (truncated, or with a trailer), and every other format are decoded on the CPU by
`encoders.media` as usual. The result is the same pixels, up to resampling rounding, and the same
fingerprint, up to a few of its 256 bits.
"""

from __future__ import annotations

import io
import logging
import warnings
from dataclasses import dataclass

import numpy as np

from shoplens.encoders.device_faults import recoverable, release
from shoplens.encoders.media import ImageLimits, MediaError, crop_to_model, fit_within, load_image
from shoplens.encoders.phash import hashes_on_host, pdq_bits, pdq_hash

log = logging.getLogger(__name__)
EXIF_ORIENTATION = 0x0112
DEVICE_MODES = ("RGB", "L")  # what nvJPEG decodes as the CPU path would; CMYK, YCCK... go to the CPU
END_OF_IMAGE = b"\xff\xd9"
DECODE_BATCH = 64  # JPEGs decoded at once...
DECODE_PIXELS = 256 * 2**20  # ...holding at most this many pixels (768 MB) on the device
GROUP_PIXELS = 64 * 2**20  # pixels resized and fingerprinted at once: bounds the device memory of their float copies


@dataclass
class DeviceDecoded:
    """`pixels` uint8 [N, 3, size, size] on the device; per image its error (None when decoded)
    and its PDQ fingerprint (hash, quality), None where it failed."""

    pixels: object
    errors: list
    fingerprints: list


@dataclass(frozen=True)
class JpegHeader:
    on_device: bool  # whether the device may decode it
    orientation: int = 1  # EXIF, 1-8
    pixels: int = 0  # width x height


def jpeg_header(data: bytes, limits: ImageLimits = ImageLimits()) -> JpegHeader:
    """What the header alone says. Raises MediaError for what the CPU path would refuse before
    decoding (size, bombs, empty files)."""
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
            # Progressive JPEGs are Huffman-decoded on the host, one at a time, by nvJPEG: the
            # decode stage's many cores do them faster.
            progressive = bool(image.info.get("progressive") or image.info.get("progression"))
            orientation = image.getexif().get(EXIF_ORIENTATION, 1) if fmt == "JPEG" else 1
    except Exception:
        return JpegHeader(False)  # the CPU path decides, and says why
    if width * height > limits.max_pixels:
        raise MediaError(f"image is {width}x{height} = {width * height / 1e6:.0f} MP, over the {limits.max_pixels / 1e6:.0f} MP limit")
    # A truncated JPEG lacks its end marker; GPU decoders may fill the rest with grey where
    # Pillow refuses it, so the CPU decides (a trailer after the marker also lands there).
    whole = data.rstrip(b"\0").endswith(END_OF_IMAGE)
    orientation = int(orientation) if orientation in range(1, 9) else 1
    return JpegHeader(fmt == "JPEG" and mode in DEVICE_MODES and whole and not progressive, orientation, width * height)


def decode_on_device(
    images: list[bytes], size: int, device: str, limits: ImageLimits = ImageLimits(), headers: list[tuple[int, int]] | None = None
) -> DeviceDecoded:
    """Decodes `images` to uint8 [N, 3, size, size] on `device` (centre square, bicubic resize,
    as `encoders.media.decode_image`) and fingerprints each whole picture. JPEGs the device
    takes are decoded there, in batches of at most DECODE_BATCH images and DECODE_PIXELS pixels;
    the rest, and any it fails on, on the CPU. `headers`: each image's (EXIF orientation, pixel
    count) from a `jpeg_header` that already accepted it (the decode stage's), so that the
    process feeding the GPU does not parse headers again.

    A device step that fails (out of memory, a kernel's refusal) fails its batch, never the call:
    the batch's images are retried one by one on the device, then decoded on the CPU, and only
    what the CPU refuses too becomes that image's error. An error that leaves the device unusable
    is raised (encoders.device_faults). Fingerprints reach the host in one transfer."""
    import torch

    out = torch.zeros((len(images), 3, size, size), dtype=torch.uint8, device=device)
    errors: list[str | None] = [None] * len(images)
    fingerprints: list[tuple[str, int] | None] = [None] * len(images)
    checked: dict[int, JpegHeader] = {}
    for n, data in enumerate(images):
        try:
            checked[n] = JpegHeader(True, *headers[n]) if headers is not None else jpeg_header(data, limits)
        except MediaError as e:
            errors[n] = str(e)
    on_device = [n for n, header in checked.items() if header.on_device]
    hashed: dict[int, tuple] = {}  # image -> (its bits and quality on the device)
    for batch_members in _decode_batches(on_device, [checked[n].pixels for n in on_device]):
        jpegs = {n: images[n] for n in batch_members}
        if (done := _on_device(device, _device_steps, jpegs, checked, out, size, device)) is not None:
            hashed |= done
            continue
        log.warning("device decode failed for a batch of %d images: retrying one by one", len(jpegs))
        for n, data in jpegs.items():
            hashed |= _on_device(device, _device_steps, {n: data}, checked, out, size, device) or {}  # else the CPU
    for n, fingerprint in zip(hashed, hashes_on_host([bits for bits, _ in hashed.values()], [q for _, q in hashed.values()])):
        fingerprints[n] = fingerprint
    for n, data in enumerate(images):
        if errors[n] is not None or fingerprints[n] is not None:
            continue
        try:
            pixels, fingerprint = decode_on_cpu(data, size, limits)
            out[n] = torch.from_numpy(pixels.transpose(2, 0, 1).copy()).to(device)
            fingerprints[n] = fingerprint
        except MediaError as e:
            errors[n] = str(e)
        except RuntimeError as e:  # the device cannot even take a copy
            if not recoverable(e, device):
                raise
            errors[n] = f"the embedding device failed on this image: {e}"
    return DeviceDecoded(out, errors, fingerprints)


def _device_steps(jpegs: dict[int, bytes], checked: dict[int, JpegHeader], out, size: int, device: str) -> dict[int, tuple]:
    """Decode, orient, crop, resize and fingerprint `jpegs` on the device, writing their pixels
    into `out`; returns each decoded image's PDQ bits and quality, still on the device (what the
    device refused or failed on is left out, for the CPU)."""
    decoded = _decode_jpegs(jpegs, device)
    decoded = {n: oriented(image, checked[n].orientation) for n, image in decoded.items()}  # the unrotated ones freed
    hashed = {}
    for group in _same_shape_groups(decoded):
        if (done := _on_device(device, _resize_and_hash, group, out, size)) is not None:
            hashed |= done
            continue
        for n, image in group.items():  # e.g. a resize too large for the device's kernel: each alone, then the CPU
            hashed |= _on_device(device, _resize_and_hash, {n: image}, out, size) or {}
    return hashed


def decode_on_cpu(data: bytes, size: int, limits: ImageLimits, fingerprint: bool = True) -> tuple[np.ndarray, tuple]:
    """The CPU path: uint8 [size, size, 3] (`encoders.media.decode_image`) and the PDQ (hash,
    quality) of the whole picture, (None, None) unless `fingerprint`. Raises MediaError."""
    pixels, fingerprint, _ = decode_whole(data, size, limits, fingerprint)
    return pixels, fingerprint


def decode_whole(data: bytes, size: int, limits: ImageLimits, fingerprint: bool = True, read_side: int = 0) -> tuple:
    """`decode_on_cpu`'s pixels and fingerprint, and with `read_side` the whole picture fitted
    within that many pixels (for OCR), else None."""
    image = load_image(data, max(size, read_side), limits=limits)
    whole = fit_within(image, read_side) if read_side else None
    return crop_to_model(image, size), pdq_hash(np.asarray(image)) if fingerprint else (None, None), whole


def _decode_batches(members: list[int], pixels: list[int]) -> list[list[int]]:
    """`members` in order, cut into batches of at most DECODE_BATCH images and DECODE_PIXELS
    decoded pixels (at least one image each): full-size photos are large (12 MP is 36 MB decoded)."""
    batches: list[list[int]] = []
    total = 0
    for n, count in zip(members, pixels):
        if not batches or len(batches[-1]) == DECODE_BATCH or total + count > DECODE_PIXELS:
            batches.append([])
            total = 0
        batches[-1].append(n)
        total += count
    return batches


def _on_device(device: str, step, *args):
    """`step(*args)`, or None where it failed in a way the device survives (encoders.device_faults);
    other errors are raised. The failed step's tensors are freed before the caller retries."""
    try:
        return step(*args)
    except RuntimeError as e:  # what torch raises for device faults, out-of-memory included
        if not recoverable(e, device):
            raise
    release(device)
    return None


def _resize_and_hash(group: dict, out, size: int) -> dict[int, tuple]:
    import torch

    batch = torch.stack(list(group.values()))
    resized = crop_and_resize(batch, size)
    bits, qualities = pdq_bits(batch)
    out[torch.tensor(list(group), device=out.device)] = resized
    return {n: (bits[k], qualities[k]) for k, n in enumerate(group)}


def _decode_jpegs(jpegs: dict[int, bytes], device: str) -> dict:
    """nvJPEG (torchvision) on a batch; what it refuses is left out, for the CPU to decode or refuse."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    tensors = {n: torch.frombuffer(bytearray(data), dtype=torch.uint8) for n, data in jpegs.items()}
    if torch.device(device).type == "cuda":
        # torchvision allocates the outputs on the current stream but nvJPEG writes them from a
        # private one that does not wait for it: memory the current stream still uses would be
        # overwritten. Waiting for the current stream first makes that memory free indeed.
        torch.cuda.current_stream(device).synchronize()
    try:
        return dict(zip(tensors, decode_jpeg(list(tensors.values()), mode=ImageReadMode.RGB, device=device)))
    except RuntimeError as e:  # one bad file fails the batch: retry one by one
        if not recoverable(e, device):
            raise
        decoded = {}
        for n, tensor in tensors.items():
            try:
                decoded[n] = decode_jpeg(tensor, mode=ImageReadMode.RGB, device=device)
            except RuntimeError as e:
                if not recoverable(e, device):
                    raise
        return decoded


def _same_shape_groups(images: dict) -> list[dict]:
    """Images of one shape, at most GROUP_PIXELS in all (at least one image) per group: catalog
    photos come in a few sizes, so each size is one batch of device work, not one per image."""
    by_shape: dict[tuple, dict] = {}
    for n, image in images.items():
        by_shape.setdefault(tuple(image.shape), {})[n] = image
    groups = []
    for shape, members in by_shape.items():
        per_group = max(1, GROUP_PIXELS // (shape[1] * shape[2]))
        items = list(members.items())
        groups += [dict(items[start : start + per_group]) for start in range(0, len(items), per_group)]
    return groups


def oriented(image, orientation: int):
    """Applies an EXIF orientation (1-8) to a [3, H, W] tensor, as `ImageOps.exif_transpose`."""
    import torch

    if orientation in (2, 4):  # mirrored left-right, top-bottom
        return torch.flip(image, [2 if orientation == 2 else 1])
    turns = {3: 2, 5: 1, 6: -1, 7: -1, 8: 1}.get(orientation, 0)  # quarter turns anticlockwise
    image = torch.rot90(image, turns, dims=(1, 2)) if turns else image
    return torch.flip(image, [1]) if orientation in (5, 7) else image  # 5, 7: transposed


def crop_and_resize(images, size: int):
    """[N, 3, H, W] uint8 -> [N, 3, size, size] uint8: the centre square, resized (bicubic, antialiased)."""
    import torch

    height, width = images.shape[-2:]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = images[:, :, top : top + side, left : left + side].float()
    resized = torch.nn.functional.interpolate(square, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    return resized.round_().clamp_(0, 255).to(torch.uint8)
