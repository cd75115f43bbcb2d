"""OpenCLIP image and text encoders, and the embed stage that runs them on a batch of rows."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from shoplens.encoders.decode import DEFERRED_COLUMNS
from shoplens.encoders.errors import UsageError
from shoplens.encoders.media import text_or_none
from shoplens.encoders.rows import ERROR, OK
from shoplens.encoders.weights import (
    DEFAULT_MODEL,
    DEFAULT_PRETRAINED,
    RANDOM_SEED,
    REMEDY,
    ModelSource,
    WeightsError,
    query_weights,
    register_packaged_configs,
    resolve_weights,
)

log = logging.getLogger(__name__)
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class ClipSpec:
    model: str = DEFAULT_MODEL
    pretrained: str = DEFAULT_PRETRAINED
    device: str = "auto"  # auto | cpu | cuda
    # The weights as the driver resolved (and checksummed) them, so that no actor does it again.
    source: ModelSource | None = None

    @classmethod
    def resolved(cls, source: ModelSource, device: str) -> ClipSpec:
        return cls(source.model, source.pretrained, device, source)

    def resolve(self) -> ModelSource:
        return self.source or resolve_weights(self.model, self.pretrained)


class DeviceError(UsageError):
    """A device this host cannot run the model on."""


def pick_device(device: str) -> str:
    import torch

    if device not in DEVICES:
        raise DeviceError(f"--device must be one of {', '.join(DEVICES)}, not {device!r}")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        # Also where Ray gave this process a GPU that CUDA cannot initialise: never a silent CPU run.
        raise DeviceError("--device cuda was asked for (or a GPU was given to this process), but torch sees no CUDA device")
    return device


def query_encoder(provenance: str, pretrained: str | None = None, device: str = "auto") -> ClipEncoder:
    """The encoder of stored vectors made by the model of `provenance` (search queries, rescoring):
    rebuilt from it, or from the user's `pretrained` weights, and refused unless it is that model."""
    architecture, weights = query_weights(provenance, pretrained)
    encoder = ClipEncoder(ClipSpec(architecture, weights, device))
    if encoder.provenance != provenance:
        raise WeightsError(
            f"the table was embedded with {provenance}, but the query encoder is {encoder.provenance}: their vectors cannot be compared"
        )
    return encoder


class ClipEncoder:
    """One OpenCLIP model: uint8 images and strings in, L2-normalised float32 vectors out.
    Images go through the model `chunk` at a time, which bounds the memory of one call."""

    def __init__(self, spec: ClipSpec, num_threads: int | None = None, chunk: int = 256):
        import open_clip
        import torch

        if chunk < 1:
            raise ValueError(f"chunk must be at least 1 image, got {chunk}")
        if num_threads:
            torch.set_num_threads(num_threads)
        self.source = spec.resolve()
        self.device = pick_device(spec.device)
        self.model = _build_model(self.source).to(self.device).eval()
        # GPUs before Ampere (T4, V100) only emulate bf16, and fp16 could overflow: fp32 there.
        self._bf16 = self.device == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)
        visual = self.model.visual
        mean = getattr(visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN
        std = getattr(visual, "image_std", None) or open_clip.OPENAI_DATASET_STD
        shape = (1, 3, 1, 1)
        # (x / 255 - mean) / std as one multiply-add.
        self._scale = torch.tensor([1 / (255 * s) for s in std], device=self.device).view(shape)
        self._shift = torch.tensor([-m / s for m, s in zip(mean, std)], device=self.device).view(shape)
        self.tokenizer = open_clip.get_tokenizer(self.source.model)
        self.chunk = chunk
        self._copy_stream = torch.cuda.Stream() if self.device == "cuda" else None

    @property
    def provenance(self) -> str:
        return self.source.provenance

    @property
    def image_size(self) -> int:
        return self.source.image_size

    @property
    def dim(self) -> int:
        return self.source.embed_dim

    def encode_images(self, pixels) -> np.ndarray:
        """`pixels`: uint8 [N, S, S, 3] RGB at the model's image size (see encoders.media), a numpy
        array or a torch tensor (one already on the model's device is not copied)."""
        import torch

        if len(pixels) == 0:
            return np.zeros((0, self.dim), np.float32)
        if isinstance(pixels, np.ndarray):
            pixels = torch.from_numpy(np.require(pixels, np.uint8, ["C", "W"]))  # torch warns about read-only arrays (Ray hands those out)
        chunks = [pixels[s : s + self.chunk] for s in range(0, len(pixels), self.chunk)]
        with torch.inference_mode(), self._precision():
            features = [self.model.encode_image(self._normalise(batch)) for batch in self._on_device(chunks)]
            return _normalised(torch.cat(features))

    def _precision(self):
        """On a GPU with bf16 tensor cores, bf16 matrix products (half the memory traffic) with fp32
        weights, norms and softmax: bf16 has fp32's range, so no activation overflows as fp16's
        can. Elsewhere fp32 (CPUs have no fast path for it)."""
        import contextlib

        import torch

        return torch.autocast("cuda", dtype=torch.bfloat16) if self._bf16 else contextlib.nullcontext()

    def _normalise(self, batch):
        """uint8 NHWC on the model's device -> the model's normalised NCHW input."""
        return batch.permute(0, 3, 1, 2).float().mul_(self._scale).add_(self._shift)

    def _on_device(self, chunks: list):
        """Yields the uint8 chunks on the model's device. On a GPU, each chunk is pinned and
        copied on a side stream while the model works on the one before: transfer overlaps
        compute (the model waits, on the GPU, only for the copy of the chunk it takes)."""
        import torch

        if self._copy_stream is None or chunks[0].device.type == "cuda":
            yield from (chunk.to(self.device) for chunk in chunks)
            return

        def start_copy(host):
            pinned = host.pin_memory()
            with torch.cuda.stream(self._copy_stream):
                on_device = pinned.to(self.device, non_blocking=True)
            return on_device, self._copy_stream.record_event()

        compute = torch.cuda.current_stream()
        pending = start_copy(chunks[0])
        for following in [*chunks[1:], None]:
            batch, copied = pending
            pending = start_copy(following) if following is not None else None  # queued before this chunk's compute
            compute.wait_event(copied)
            batch.record_stream(compute)  # allocated on the copy stream, used on this one
            yield batch

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        import torch

        if len(texts) == 0:
            return np.zeros((0, self.dim), np.float32)
        with torch.inference_mode(), self._precision():
            tokens = self.tokenizer(list(texts)).to(self.device)
            return _normalised(_encode_text(self.model, tokens))


class ClipEmbedder:
    """Embed stage: adds `frame_vectors` [F, D] (one per decoded frame), `vector` (the item's:
    its image's, or the re-normalised mean of a video's frames) and `text_vector` (its title's).

    Rows whose status is not `ok` pass through with zero vectors; the store writes them as nulls.
    A non-finite embedding turns its row into an error rather than a poisoned vector. `pixels`
    are dropped unless `keep_pixels` (for a pixel-model stage that follows in the same process).
    """

    reads = ("status", "error", "title", "pixels", "pdq", "pdq_quality", *DEFERRED_COLUMNS)
    adds = ("vector", "text_vector", "frame_vectors", "model")

    def __init__(self, spec: ClipSpec, num_threads: int | None = None, max_frames_per_call: int = 256, keep_pixels: bool = False):
        # The chunk bounds memory for batches of long videos.
        self.encoder = ClipEncoder(spec, num_threads=num_threads, chunk=max_frames_per_call)
        self.keep_pixels = keep_pixels

    @property
    def drops(self) -> tuple[str, ...]:
        return DEFERRED_COLUMNS if self.keep_pixels else ("pixels", *DEFERRED_COLUMNS)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        status = batch["status"].astype(object)
        error = np.array([text_or_none(e) for e in batch["error"]], dtype=object)
        if "encoded" in batch:
            batch = self._decode_deferred(batch, status, error)
        titles = np.array([text_or_none(t) for t in batch["title"]], dtype=object)
        n, dim = len(status), self.encoder.dim
        vectors = np.zeros((n, dim), np.float32)
        text_vectors = np.zeros((n, dim), np.float32)
        frame_vectors = np.empty(n, dtype=object)
        frame_vectors[:] = [np.zeros((0, dim), np.float32)] * n
        ok = np.flatnonzero(status == OK)
        if len(ok):
            frames = [as_frames(batch["pixels"][i]) for i in ok]
            for i, per_item in zip(ok, _each_on_failure(frames, self._frame_vectors, self.encoder.device)):
                if isinstance(per_item, str):
                    status[i], error[i] = ERROR, per_item
                    continue
                frame_vectors[i] = per_item
                mean = per_item.mean(axis=0)
                vectors[i] = mean / np.linalg.norm(mean)
        titled = np.flatnonzero((status == OK) & (titles != None))  # noqa: E711 (elementwise)
        if len(titled):
            for i, text_vector in zip(
                titled, _each_on_failure(list(titles[titled]), lambda t: list(self.encoder.encode_texts(t)), self.encoder.device)
            ):
                if isinstance(text_vector, str):
                    status[i], error[i] = ERROR, text_vector
                else:
                    text_vectors[i] = text_vector
        finite = np.isfinite(vectors).all(axis=1) & np.isfinite(text_vectors).all(axis=1)
        broken = (status == OK) & ~finite
        status[broken] = ERROR
        error[broken] = "the model produced a non-finite embedding"
        out = {k: v for k, v in batch.items() if k not in self.drops}
        if self.keep_pixels:
            out["pixels"] = _pixels_on_host(batch["pixels"])
        out.update(
            status=status,
            error=error,
            vector=vectors,
            text_vector=text_vectors,
            frame_vectors=frame_vectors,
            model=np.full(n, self.encoder.provenance, dtype=object),
        )
        return out

    def _frame_vectors(self, frames: list) -> list[np.ndarray]:
        """Each item's frames [F, S, S, 3] to its frame vectors [F, D], in one model call. Frames
        the device decoded stay there; the host's join them there."""
        import torch

        if all(isinstance(f, np.ndarray) for f in frames):
            flat = self.encoder.encode_images(np.concatenate(frames))
        else:
            device = self.encoder.device
            flat = self.encoder.encode_images(
                torch.cat(
                    [torch.from_numpy(np.require(f, np.uint8, ["C", "W"])).to(device) if isinstance(f, np.ndarray) else f for f in frames]
                )
            )
        return np.split(flat, np.cumsum([len(f) for f in frames])[:-1])

    def _decode_deferred(self, batch: dict[str, np.ndarray], status: np.ndarray, error: np.ndarray) -> dict[str, np.ndarray]:
        """Decodes and fingerprints the JPEGs the decode stage left to this device, in batches
        (nvJPEG on a GPU); one that fails becomes its row's error."""
        from shoplens.encoders.device_decode import decode_on_device

        # Through Arrow, a column of no bytes comes back as NaNs: only bytes are work.
        rows = [i for i, data in enumerate(batch["encoded"]) if isinstance(data, bytes) and status[i] == OK]
        if not rows:
            return batch
        headers = [(int(batch["exif_orientation"][i]), int(batch["jpeg_pixels"][i])) for i in rows]
        decoded = decode_on_device([batch["encoded"][i] for i in rows], self.encoder.image_size, self.encoder.device, headers=headers)
        frames, pdq, quality = per_row(batch["pixels"]), per_row(batch["pdq"]), per_row(batch["pdq_quality"])
        on_device = decoded.pixels.permute(0, 2, 3, 1)  # [N, S, S, 3], into the model without a round trip through the host
        for k, (i, message, fingerprint) in enumerate(zip(rows, decoded.errors, decoded.fingerprints)):
            if message:
                status[i], error[i] = ERROR, message
            else:
                frames[i] = on_device[k : k + 1]
                pdq[i], quality[i] = np.array([fingerprint[0]], dtype=object), np.array([fingerprint[1]], np.int32)
        return batch | {"pixels": frames, "pdq": pdq, "pdq_quality": quality}


def _each_on_failure(inputs: list, encode, device: str) -> list:
    """`encode(inputs)` (a list, one result per input); where the batch call fails (the device out
    of memory), each input alone, and where that fails too, its error message. An error that
    leaves the device unusable is raised (encoders.device_faults), and so is one that every input
    of a batch meets alone too: that is a bug, not an input's fault."""
    from shoplens.encoders.device_faults import recoverable, release

    try:
        return encode(inputs)
    except RuntimeError as e:  # what torch raises for device faults
        if not recoverable(e, device):
            raise
        log.warning("the model failed on a batch of %d items (%s): encoding them one by one", len(inputs), e)
    release(device)
    results, errors = [], []
    for one in inputs:
        try:
            results += encode([one])
        except RuntimeError as e:
            if not recoverable(e, device):
                raise
            errors.append(e)
            results.append(f"the model failed on this item: {e}")
    if len(inputs) > 1 and len(errors) == len(inputs):
        raise errors[0]
    return results


def as_frames(pixels):
    """A row's frames: a torch tensor where the device decoded them, else a numpy array."""
    return np.asarray(pixels) if isinstance(pixels, np.ndarray | list) else pixels


def _pixels_on_host(column: np.ndarray) -> np.ndarray:
    """The `pixels` column with the device's frames brought to the host in one transfer (the
    pixel models read them there)."""
    import torch

    on_device = [i for i, pixels in enumerate(column) if not isinstance(pixels, np.ndarray | list)]
    if not on_device:
        return column
    column = per_row(column)
    host = torch.cat([column[i] for i in on_device]).cpu().numpy()
    for k, i in enumerate(on_device):
        column[i] = host[k : k + 1]
    return column


def per_row(column: np.ndarray) -> np.ndarray:
    """A column as one object per row. Through Arrow and Ray, a column whose rows all have one
    shape (every row's frames deferred: [N, 0, S, S, 3]) comes back as one N-D array, into
    whose rows a frame would not fit."""
    rows = np.empty(len(column), dtype=object)
    for i, value in enumerate(column):
        rows[i] = value
    return rows


def _build_model(source: ModelSource):
    import open_clip
    import torch

    register_packaged_configs()  # this process may not have resolved the weights itself

    if source.is_random:
        # Seeded, so every process builds the same random model and a table built with it stays
        # queryable and re-ingestable.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_SEED)
            return open_clip.create_model(source.model, pretrained=None)
    try:
        return open_clip.create_model(
            source.model,
            pretrained=None if source.model.startswith("local-dir:") else (source.checkpoint or source.pretrained),
            require_pretrained=True,
        )
    except Exception as e:  # OpenCLIP raises RuntimeError, FileNotFoundError, ValueError, ...
        raise WeightsError(f"could not load weights {source.pretrained!r} for {source.model}: {e}. {REMEDY}") from e


def _encode_text(model, tokens):
    """`model.encode_text`, but on only as many token positions as the longest text needs.

    CLIP's text tower is causal and pools at the end-of-text token, so positions after the last
    end-of-text token cannot change the result; titles use 10-20 of the 77 positions, and the
    tower's cost falls with them. Towers of other shapes run unchanged.
    """
    import torch
    from open_clip.transformer import text_global_pool

    if getattr(model, "text_pool_type", None) != "argmax" or getattr(model, "attn_mask", None) is None:
        return model.encode_text(tokens)
    length = int(tokens.argmax(dim=1).max()) + 1  # the end-of-text token has the highest id
    tokens = tokens[:, :length]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype) + model.positional_embedding[:length].to(cast_dtype)
    x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask[:length, :length]))
    x = text_global_pool(x, tokens, "argmax")
    if isinstance(model.text_projection, torch.nn.Linear):
        return model.text_projection(x)
    return x if model.text_projection is None else x @ model.text_projection


def _normalised(features) -> np.ndarray:
    import torch

    features = torch.nn.functional.normalize(features.float(), dim=-1)
    return features.cpu().numpy().astype(np.float32, copy=False)
