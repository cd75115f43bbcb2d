import json
import shutil
import time

import numpy as np
import pytest
from conftest import MICRO, sample_photo

from shoplens.encoders.clip import ClipEncoder, ClipSpec
from shoplens.encoders.media import decode_image
from shoplens.encoders.weights import PACKAGED_CONFIGS, WeightsError, resolve_weights


def test_random_weights_are_named_in_provenance():
    source = resolve_weights("shoplens-micro", "random")
    assert source.provenance == "open_clip/shoplens-micro/random-seed0"
    assert (source.image_size, source.embed_dim) == (64, 64)
    assert resolve_weights("ViT-B-32", "random").embed_dim == 512


def test_unknown_architecture():
    with pytest.raises(WeightsError, match="unknown OpenCLIP architecture 'ViT-Nope'"):
        resolve_weights("ViT-Nope", "random")
    for name in ("../../etc/passwd", "model_configs/../ViT-B-32", ""):  # never a path of the user's choosing
        with pytest.raises(WeightsError, match="unknown OpenCLIP architecture"):
            resolve_weights(name, "random")


def test_architecture_configs_read_from_files_are_open_clips_own():
    import open_clip

    from shoplens.encoders.weights import architecture_config, register_packaged_configs

    register_packaged_configs()
    names = open_clip.list_models()
    assert "shoplens-micro" in names and len(names) > 100
    for name in names:
        assert architecture_config(name) == open_clip.get_model_config(name), name


def test_random_and_local_weights_resolve_without_importing_torch(tmp_path, micro_checkpoint):
    """The driver resolves the weights while Ray starts, on the same cores: OpenCLIP's import
    (torch, seconds) would slow both."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from shoplens.encoders.weights import resolve_weights\n"
        "resolve_weights('ViT-B-32', 'random'); resolve_weights('shoplens-micro', sys.argv[1])\n"
        "assert 'torch' not in sys.modules and 'open_clip' not in sys.modules, 'imported'\n"
    )
    subprocess.run([sys.executable, "-c", code, str(micro_checkpoint)], check=True)


def test_unknown_tag_lists_the_known_ones():
    with pytest.raises(WeightsError, match="known tags: .*laion2b_s34b_b79k"):
        resolve_weights("ViT-B-32", "no-such-tag")


def test_uncached_tag_fails_fast_offline():
    started = time.perf_counter()
    with pytest.raises(WeightsError, match="--pretrained local-dir:"):
        resolve_weights("ViT-B-32", "laion2b_s34b_b79k")
    assert time.perf_counter() - started < 5


def test_uncached_tag_fails_fast_when_the_hub_is_unreachable(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(constants, "ENDPOINT", "https://127.0.0.1")  # nothing listens on 443 here
    started = time.perf_counter()
    with pytest.raises(WeightsError, match="127.0.0.1 cannot be reached"):
        resolve_weights("ViT-B-32", "laion2b_s34b_b79k")
    assert time.perf_counter() - started < 5


@pytest.fixture(scope="module")
def trained():
    """The micro architecture with weights that are not the seeded random ones, as a trained
    model's are not: every parameter moved by noise of another seed. Its vectors are computed
    with the weights put into the model directly, not through any checkpoint loader."""
    import torch

    encoder = ClipEncoder(MICRO, num_threads=1)  # its own model, changed below
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in encoder.model.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return encoder


@pytest.fixture(scope="module")
def micro_checkpoint(tmp_path_factory, trained):
    """`trained`'s weights, saved the way OpenCLIP checkpoints ship."""
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("weights") / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in trained.model.state_dict().items()}, str(path))
    return path


def astronaut(size):
    return decode_image(sample_photo("astronaut.png").read_bytes(), size)[None]


def assert_vectors_of(encoder, trained, micro_encoder):
    """`encoder` gives the trained weights' vectors, far from the seeded random model's: a
    checkpoint that silently fell back to random weights would fail here."""
    for texts in (["a red mug"], ["an astronaut", "a cat print"]):
        np.testing.assert_allclose(encoder.encode_texts(texts), trained.encode_texts(texts), atol=1e-5)
    np.testing.assert_allclose(encoder.encode_images(astronaut(64)), trained.encode_images(astronaut(64)), atol=1e-5)
    random = micro_encoder.encode_images(astronaut(64))
    assert float(encoder.encode_images(astronaut(64))[0] @ random[0]) < 0.99
    assert np.abs(encoder.encode_texts(["a red mug"]) - micro_encoder.encode_texts(["a red mug"])).max() > 0.01


def test_checkpoint_file_loads_and_is_named_by_checksum(micro_checkpoint, trained, micro_encoder):
    import hashlib

    encoder = ClipEncoder(ClipSpec("shoplens-micro", str(micro_checkpoint), "cpu"), num_threads=1)
    digest = hashlib.sha256(micro_checkpoint.read_bytes()).hexdigest()
    assert encoder.provenance.startswith("open_clip/shoplens-micro/sha256:") and digest.startswith(encoder.provenance.split(":")[1])
    assert_vectors_of(encoder, trained, micro_encoder)


def test_local_dir_loads(tmp_path, micro_checkpoint, trained, micro_encoder):
    shutil.copyfile(micro_checkpoint, tmp_path / "open_clip_model.safetensors")
    model_cfg = json.loads((PACKAGED_CONFIGS / "shoplens-micro.json").read_text())
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": {}}))
    encoder = ClipEncoder(ClipSpec("ignored", f"local-dir:{tmp_path}", "cpu"), num_threads=1)
    assert encoder.provenance.startswith(f"open_clip/local-dir:{tmp_path.name}/sha256:")
    assert_vectors_of(encoder, trained, micro_encoder)


def test_local_dir_without_weights_is_refused_not_random(tmp_path):
    model_cfg = json.loads((PACKAGED_CONFIGS / "shoplens-micro.json").read_text())
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg}))
    with pytest.raises(WeightsError, match="no weights file"):
        resolve_weights("ViT-B-32", f"local-dir:{tmp_path}")


def test_corrupt_checkpoint_is_an_error_not_random(tmp_path):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(np.random.default_rng(1).bytes(1000))
    with pytest.raises(WeightsError, match="could not load weights"):
        ClipEncoder(ClipSpec("shoplens-micro", str(path), "cpu"))


def test_checkpoint_of_another_architecture_is_an_error(micro_checkpoint):
    with pytest.raises(WeightsError, match="could not load weights"):
        ClipEncoder(ClipSpec("ViT-S-32", str(micro_checkpoint), "cpu"))
