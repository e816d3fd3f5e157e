"""The CLIP wrapper: preprocessing, text features, prompt checks, spec forms, offline errors,
checkpoint round trips. Random-weight models from configs/clip/ only; nothing is downloaded."""

from __future__ import annotations

import time
import warnings

import pytest
import torch
import torch.nn.functional as F

from iss3d.core.errors import UserError
from iss3d.models import clip as clip_lib
from iss3d.models.clip import ClipModel, RandomResizedCrop, export_checkpoint, load_clip


@pytest.fixture(scope="module")
def clip() -> ClipModel:
    return load_clip("clip/tiny-64")


def test_random_config_is_frozen_and_untrained(clip):
    assert clip.spec == "clip/tiny-64" and clip.trained is False
    assert (clip.embed_dim, clip.image_size, clip.context_length) == (128, 64, 32)
    assert all(not p.requires_grad for p in clip.parameters())
    assert not clip.model.training
    parent = torch.nn.Sequential(clip)
    parent.train()  # a parent switching to train mode does not unfreeze it
    assert not clip.model.training


def test_preprocess_resizes_crops_and_normalises(clip):
    mean, std = clip.image_mean.view(3), clip.image_std.view(3)
    flat = torch.full((2, 3, 40, 24), 0.25)
    flat[:, 1] = 0.75
    out = clip.preprocess(flat)
    assert out.shape == (2, 3, 64, 64)
    expected = (torch.tensor([0.25, 0.75, 0.25]) - mean) / std
    torch.testing.assert_close(out, expected.view(1, 3, 1, 1).expand_as(out))
    # Not square: the shorter side (H = 32) goes to 64, then the centre 64 columns of the 128
    # are kept, which is exactly the middle half of the input (columns 16..48 of 64): ones.
    wide = torch.zeros(1, 3, 32, 64)
    wide[..., 16:48] = 1.0
    crop = clip.preprocess(wide) * std.view(1, 3, 1, 1) + mean.view(1, 3, 1, 1)
    assert crop[..., 4:-4].min() > 0.95 and crop.shape == (1, 3, 64, 64)
    # antialiased shrinking, compared with the plain reference
    big = torch.rand(1, 3, 128, 128)
    ref = F.interpolate(big, size=(64, 64), mode="bicubic", antialias=True, align_corners=False)
    torch.testing.assert_close(
        clip.preprocess(big), (ref - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    )
    # an image of the model's size passes through unchanged
    same = torch.rand(1, 3, 64, 64)
    torch.testing.assert_close(clip.preprocess(same), (same - clip.image_mean) / clip.image_std)


def test_encode_image_normalised_and_differentiable(clip):
    images = torch.rand(3, 3, 48, 48, requires_grad=True)
    seen = []

    def augment(x):
        seen.append(tuple(x.shape))
        return x.flip(-1)

    feats = clip.encode_image(images, augment=augment)
    assert feats.shape == (3, 128) and feats.dtype == torch.float32
    torch.testing.assert_close(feats.norm(dim=-1), torch.ones(3))
    assert seen == [(3, 3, 48, 48)]  # the augmentation sees the input before the resize
    feats[:, 0].sum().backward()
    assert images.grad is not None and torch.isfinite(images.grad).all()
    assert images.grad.abs().sum() > 0
    assert all(p.grad is None for p in clip.parameters())
    with pytest.raises(UserError, match="channels"):
        clip.encode_image(torch.rand(2, 48, 48, 3))


def test_random_resized_crop():
    x = torch.rand(4, 3, 16, 16, requires_grad=True)
    identity = RandomResizedCrop(scale=(1.0, 1.0), ratio=(1.0, 1.0))
    torch.testing.assert_close(identity(x), x)
    g = torch.Generator().manual_seed(0)
    out = RandomResizedCrop(scale=(0.3, 0.5), flip=True, generator=g)(x)
    assert out.shape == x.shape and not torch.allclose(out, x)
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_encode_text_normalised_and_cached(clip, monkeypatch):
    clip.clear_cache()
    prompts = ["a red chair", "a blue torus", "a red chair", "ein grüner Würfel", "赤い椅子"]
    feats = clip.encode_text(prompts)
    assert feats.shape == (5, 128) and not feats.requires_grad
    torch.testing.assert_close(feats.norm(dim=-1), torch.ones(5))
    torch.testing.assert_close(feats[0], feats[2])
    assert not torch.allclose(feats[0], feats[1])
    assert set(clip._text_cache) == set(prompts)
    calls = []
    original = clip.model.encode_text
    monkeypatch.setattr(
        clip.model, "encode_text", lambda *a, **k: calls.append(1) or original(*a, **k)
    )
    again = clip.encode_text(["a blue torus", "a red chair"])
    assert calls == []  # everything came from the cache
    torch.testing.assert_close(again, feats[[1, 0]])
    clip.encode_text(["a new prompt"])
    assert calls == [1]
    # the cached value is the one a fresh computation gives
    clip.clear_cache()
    torch.testing.assert_close(clip.encode_text(["a blue torus"])[0], feats[1])


@pytest.mark.parametrize("bad", ["", "   ", "\t\n"])
def test_empty_prompt_is_an_error(clip, bad):
    with pytest.raises(UserError, match="prompt 1: empty prompt"):
        clip.encode_text(["a red box", bad])


def test_control_character_is_an_error_naming_its_position(clip):
    with pytest.raises(UserError, match=r"U\+0007 at position 5"):
        clip.encode_text(["a red\x07 box"])
    with pytest.raises(TypeError, match="sequence"):
        clip.encode_text("a red box")
    clip.encode_text(["a red\tbox\non two lines"])  # ordinary whitespace is fine


def test_long_prompt_is_truncated_with_a_warning(clip):
    long = "a red chair with blue legs " * 371  # 10,017 characters
    assert len(long) > 10_000
    with pytest.warns(UserWarning, match=r"has \d+ tokens, more than the CLIP context length 32"):
        feats = clip.encode_text([long])
    assert feats.shape == (1, 128)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clip.encode_text(["a red chair"])  # short prompts do not warn


def test_unknown_names_tags_and_specs():
    with pytest.raises(UserError, match="unknown open_clip model 'ViT-Q-99'"):
        load_clip("ViT-Q-99:openai")
    with pytest.raises(
        UserError, match=r"unknown pretrained tag 'nope' for ViT-B-32 \(known: openai"
    ):
        load_clip("ViT-B-32:nope")
    with pytest.raises(UserError, match="ViT-B-32:<pretrained tag or file>"):
        load_clip("ViT-B-32")
    with pytest.raises(UserError, match="no such file"):
        load_clip("ViT-B-32:/nonexistent/open_clip_pytorch_model.bin")
    with pytest.raises(UserError, match="no such file"):
        load_clip("runs/none/clip.pt")
    with pytest.raises(UserError, match=r"ours: .*tiny-64"):
        load_clip("clip/no-such-config")
    with pytest.raises(UserError, match="not a file"):
        load_clip("just-words")


def test_missing_pretrained_weights_fail_fast_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for spec in ("ViT-B-32:openai", "ViT-B-32:laion2b_s34b_b79k"):
        start = time.perf_counter()
        with pytest.raises(UserError) as err:
            load_clip(spec, cache_dir=tmp_path, download=True)
        assert time.perf_counter() - start < 5.0
        message = str(err.value)
        assert "\n" not in message and "not in the local cache" in message
        assert "HF_HUB_OFFLINE=1" in message and "'ViT-B-32:/path/to/" in message


def _hub_cache(root, repo: str, filename: str, payload) -> None:
    """Lay out a Hugging Face hub cache entry for ``repo``/``filename`` under ``root``."""
    folder = root / f"models--{repo.replace('/', '--')}"
    revision = "0" * 40
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(revision)
    snapshot = folder / "snapshots" / revision
    snapshot.mkdir(parents=True)
    torch.save(payload, snapshot / filename)


def test_pretrained_tag_loads_from_the_local_cache(clip, tmp_path, monkeypatch):
    """A tag whose weights are in the hub cache loads from there (a fake tag of tiny-64)."""
    from open_clip import pretrained

    clip_lib.register_clip_configs()
    monkeypatch.setitem(pretrained._PRETRAINED, "tiny-64", {"fake": {"hf_hub": "iss3d/fake/"}})
    _hub_cache(tmp_path, "iss3d/fake", "open_clip_pytorch_model.bin", clip.model.state_dict())
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = load_clip("tiny-64:fake", cache_dir=tmp_path)
    assert loaded.trained and loaded.spec == "tiny-64:fake"
    images = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(loaded.encode_image(images), clip.encode_image(images))


def test_name_and_weights_file(clip, tmp_path):
    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save({f"module.{k}": v for k, v in clip.model.state_dict().items()}, path)
    loaded = load_clip(f"tiny-64:{path}")
    images = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(loaded.encode_image(images), clip.encode_image(images))
    other = tmp_path / "other.bin"
    torch.save(load_clip("clip/small-64").model.state_dict(), other)
    with pytest.raises(
        UserError, match=r"other.bin: shape mismatch for visual\.positional_embedding"
    ):
        load_clip(f"tiny-64:{other}")


def test_exported_checkpoint_round_trip(clip, tmp_path):
    cfg = clip_lib.clip_config("tiny-64")
    full = export_checkpoint(tmp_path / "full.pt", clip.model, cfg, half=False, step=7)
    half = export_checkpoint(tmp_path / "half.pt", clip.model, cfg, half=True)
    a, b = load_clip(str(full)), load_clip(str(half))
    assert a.trained and a.info["step"] == 7 and a.spec == str(full)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    images, prompts = torch.rand(2, 3, 64, 64), ["a red chair", "a blue box"]
    clip.clear_cache()  # features of the same batch of prompts are bitwise equal
    assert torch.equal(a.encode_image(images), clip.encode_image(images))
    assert torch.equal(a.encode_text(prompts), clip.encode_text(prompts))
    torch.testing.assert_close(b.encode_image(images), clip.encode_image(images), atol=5e-3, rtol=0)


def test_wrong_shaped_checkpoint_names_the_key(clip, tmp_path):
    cfg = clip_lib.clip_config("tiny-64")
    path = export_checkpoint(tmp_path / "clip.pt", clip.model, cfg, half=False)
    payload = torch.load(path, weights_only=True)
    payload["state_dict"]["visual.proj"] = torch.zeros(7, 7)
    torch.save(payload, path)
    with pytest.raises(
        UserError, match=r"shape mismatch for visual\.proj: checkpoint \(7, 7\)"
    ) as e:
        load_clip(str(path))
    assert "\n" not in str(e.value)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read"):
        load_clip(str(tmp_path / "junk.pt"))
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="not an iss3d CLIP checkpoint"):
        load_clip(str(tmp_path / "other.pt"))
