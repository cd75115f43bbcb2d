"""Where OpenCLIP weights come from: a hub tag, a local file, a `local-dir:` folder, or seeded random.

Resolving is cheap and happens before any job starts, so that weights that cannot be loaded stop
the job in seconds with a message naming the remedy, instead of after a minute of hub retries.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from shoplens.encoders.errors import UsageError

# The model a job uses unless told otherwise.
DEFAULT_MODEL, DEFAULT_PRETRAINED = "ViT-B-32", "laion2b_s34b_b79k"
RANDOM = "random"
LOCAL_DIR = "local-dir:"
RANDOM_SEED = 0
# The tiny architectures shipped for smoke runs and tests live beside this file.
PACKAGED_CONFIGS = Path(__file__).with_name("model_configs")
CONFIG_NAME = re.compile(r"[\w.-]+")  # a config file's name: no path of its own

REMEDY = (
    "To run without a network, copy the weights to this host and pass "
    "--pretrained /path/to/open_clip_model.safetensors (a checkpoint file) or "
    "--pretrained local-dir:/path/to/folder (with open_clip_config.json), or pre-fill the "
    "Hugging Face cache and set HF_HUB_OFFLINE=1. `--pretrained random` runs on random "
    "weights, for smoke tests only."
)


class WeightsError(UsageError):
    """Weights that cannot be found or loaded; the message says what to do instead."""


@dataclass(frozen=True)
class ModelSource:
    """A resolved model: what to build, from which weights, and how to name it in provenance."""

    model: str  # OpenCLIP architecture name, or `local-dir:/folder`
    pretrained: str  # as the user gave it
    checkpoint: str | None  # local weights file, when there is one to load
    provenance: str  # stored in every row's `model` column
    image_size: int
    embed_dim: int

    @property
    def is_random(self) -> bool:
        return self.pretrained == RANDOM


def register_packaged_configs() -> None:
    import open_clip

    if PACKAGED_CONFIGS not in open_clip.factory._MODEL_CONFIG_PATHS:
        open_clip.add_model_config(PACKAGED_CONFIGS)


def resolve_weights(model: str, pretrained: str, *, probe_timeout_s: float = 3.0) -> ModelSource:
    """Checks that `pretrained` can be loaded for `model` and says how; raises WeightsError.
    Random weights, a local file and a `local-dir:` folder are resolved without importing
    OpenCLIP (torch: seconds of a small job's start-up, on the driver that is starting Ray)."""
    if pretrained.startswith(LOCAL_DIR):
        return _local_dir_source(pretrained)
    config = architecture_config(model)
    if config is None:
        raise WeightsError(f"unknown OpenCLIP architecture {model!r}; see open_clip.list_models()")
    shape = {"image_size": _side(config["vision_cfg"]["image_size"]), "embed_dim": int(config["embed_dim"])}
    if pretrained == RANDOM:
        return ModelSource(model, pretrained, None, format_provenance(model, f"{RANDOM}-seed{RANDOM_SEED}"), **shape)
    if os.path.isfile(pretrained):
        return ModelSource(model, pretrained, pretrained, format_provenance(model, file_digest(pretrained)), **shape)
    import open_clip

    tag_cfg = open_clip.get_pretrained_cfg(model, pretrained)
    if not tag_cfg:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(model)) or "none"
        raise WeightsError(
            f"--pretrained {pretrained!r} is neither a weights tag of {model} (known tags: {tags}), "
            f"nor an existing file, nor `local-dir:FOLDER`, nor `random`."
        )
    if not _tag_is_cached(tag_cfg):
        host = _tag_host(tag_cfg)
        if not _reachable(host, probe_timeout_s):
            raise WeightsError(f"weights {model}/{pretrained} are not in the local cache and {host} cannot be reached. {REMEDY}")
    return ModelSource(model, pretrained, None, format_provenance(model, pretrained), **shape)


def architecture_config(model: str) -> dict | None:
    """An architecture's OpenCLIP config: from the config files (shoplens's, then OpenCLIP's own
    folder, which is what `open_clip.get_model_config` reads) without importing OpenCLIP; other
    names (`hf-hub:...`) through OpenCLIP."""
    import importlib.util

    if CONFIG_NAME.fullmatch(model):
        open_clip_configs = Path(importlib.util.find_spec("open_clip").submodule_search_locations[0]) / "model_configs"
        for folder in (PACKAGED_CONFIGS, open_clip_configs):
            # Listed, not opened by name: a case-insensitive file system would find `vit-b-32`.
            if f"{model}.json" in os.listdir(folder):
                config = json.loads((folder / f"{model}.json").read_text())
                if all(key in config for key in ("embed_dim", "vision_cfg", "text_cfg")):  # what OpenCLIP takes for a config
                    return config
    import open_clip

    register_packaged_configs()
    return open_clip.get_model_config(model)


def format_provenance(architecture: str, weights: str) -> str:
    """The `model` column's value: `open_clip/<architecture>/<weights>`, where weights are a tag,
    `random-seed0`, or `sha256:<16 hex>` of a checkpoint file (and architecture may be
    `local-dir:<folder name>`)."""
    return f"open_clip/{architecture}/{weights}"


def parse_provenance(provenance: str) -> tuple[str, str]:
    """(architecture, weights) of a provenance string; a WeightsError for anything else."""
    family, _, rest = provenance.partition("/")
    architecture, _, weights = rest.partition("/")
    if family != "open_clip" or not architecture or not weights:
        raise WeightsError(f"{provenance!r} is not a model provenance (open_clip/ARCHITECTURE/WEIGHTS)")
    return architecture, weights


def query_weights(provenance: str, pretrained: str | None) -> tuple[str, str]:
    """(architecture, --pretrained) that rebuild the model of `provenance`: a tag or seeded random
    weights rebuild themselves; a checkpoint (`sha256:...`) or `local-dir:` needs the user's
    weights (`--pretrained PATH`), which the caller checks against the provenance."""
    architecture, weights = parse_provenance(provenance)
    if pretrained is not None:
        return architecture, pretrained
    if weights == f"{RANDOM}-seed{RANDOM_SEED}":
        return architecture, RANDOM
    if weights.startswith("sha256:") or architecture.startswith(LOCAL_DIR):
        raise WeightsError(f"the table was embedded with local weights ({provenance}): pass them with --pretrained")
    return architecture, weights


def file_digest(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()[:16]}"


def _side(image_size) -> int:
    return int(image_size[0] if isinstance(image_size, (list, tuple)) else image_size)


def _local_dir_source(pretrained: str) -> ModelSource:
    folder = Path(pretrained[len(LOCAL_DIR) :])
    config_path = folder / "open_clip_config.json"
    if not config_path.is_file():
        raise WeightsError(f"{pretrained}: no open_clip_config.json in {folder}. {REMEDY}")
    weights = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".pt", ".pth"))
    # OpenCLIP only warns when the folder has no weights and builds a random model: refuse instead.
    if not weights:
        raise WeightsError(f"{pretrained}: no weights file (*.safetensors, *.bin) in {folder}. {REMEDY}")
    model_cfg = json.loads(config_path.read_text())["model_cfg"]
    return ModelSource(
        model=f"{LOCAL_DIR}{folder}",
        pretrained=pretrained,
        checkpoint=None,
        provenance=format_provenance(f"{LOCAL_DIR}{folder.name}", file_digest(weights[0])),
        image_size=_side(model_cfg["vision_cfg"]["image_size"]),
        embed_dim=int(model_cfg["embed_dim"]),
    )


def _tag_is_cached(tag_cfg: dict) -> bool:
    from huggingface_hub import try_to_load_from_cache

    if tag_cfg.get("hf_hub"):
        repo_id, filename = os.path.split(tag_cfg["hf_hub"])
        filename = filename or "open_clip_pytorch_model.bin"
        candidates = [filename]
        if filename.endswith(".bin"):
            candidates.insert(
                0, "open_clip_model.safetensors" if filename == "open_clip_pytorch_model.bin" else filename[:-4] + ".safetensors"
            )
        return any(isinstance(try_to_load_from_cache(repo_id, name), str) for name in candidates)
    url = tag_cfg.get("url", "")
    return bool(url) and (Path.home() / ".cache" / "clip" / os.path.basename(url)).is_file()


def _tag_host(tag_cfg: dict) -> str:
    if tag_cfg.get("hf_hub"):
        from huggingface_hub import constants

        return urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    return urlparse(tag_cfg.get("url", "")).hostname or "the weights host"


def _reachable(host: str, timeout_s: float) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    try:
        socket.create_connection((host, 443), timeout=timeout_s).close()
        return True
    except OSError:
        return False
