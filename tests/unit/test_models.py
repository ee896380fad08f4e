"""U-Net factory, encoder initialisation (incl. foreign checkpoint conversion), medssl checkpoints.

Foreign checkpoints are synthetic: a timm/torchvision ResNet-18 state dict with random values,
renamed and wrapped the way each library stores it. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import os
import re

import pytest
import timm
import torch

from medssl_utils.errors import DataError, ParameterError
from medssl_utils.models import (
    build_encoder,
    build_unet,
    decoder_state,
    describe_lineage,
    encoder_state,
    load_checkpoint,
    load_encoder_init,
    save_checkpoint,
)

SMALL = (8, 8, 8, 8, 8)  # decoder channels: tiny, fast CPU models
N_RESNET18 = 100  # resnet18 encoder tensors, BatchNorm num_batches_tracked counters not counted
# torchvision ResNet children: conv1 bn1 relu maxpool layer1..4 avgpool fc -> Sequential indices
SEQ_INDEX = {"conv1": "0", "bn1": "1", "layer1": "4", "layer2": "5", "layer3": "6", "layer4": "7"}


def random_state(name: str, seed: int) -> dict[str, torch.Tensor]:
    """A classifier model's state dict (RGB first conv, ``fc`` head) with random values."""
    g = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        shapes = {k: (v.shape, v.dtype) for k, v in timm.create_model(name).state_dict().items()}
    return {k: torch.rand(s, generator=g) + 0.5 if dt.is_floating_point else torch.tensor(seed)
            for k, (s, dt) in shapes.items()}


@pytest.fixture(scope="module")
def ref():
    return random_state("resnet18", 1)


@pytest.fixture(scope="module")
def other():
    """Different values for the momentum / target / EMA copies a file also holds."""
    return random_state("resnet18", 2)


@pytest.fixture(scope="module")
def unet18():
    """One small U-Net whose encoder is zeroed before each use (building is the slow part)."""
    model = build_unet("resnet18", decoder_channels=SMALL)

    def zeroed():
        for t in model.encoder.state_dict().values():
            t.zero_()
        return model

    return zeroed


def backbone(sd):
    return {k: v for k, v in sd.items() if not k.startswith("fc.")}


def sequential(sd):
    """Keys of ``nn.Sequential(*list(resnet.children())[:-1])`` (lightly, BYOL-PyTorch)."""
    out = {}
    for k, v in backbone(sd).items():
        head, _, rest = k.partition(".")
        out[f"{SEQ_INDEX[head]}.{rest}"] = v
    return out


def prefixed(prefix, sd):
    return {prefix + k: v for k, v in sd.items()}


def assert_encoder_is(model, sd, in_channels=1):
    enc = model.encoder.model.state_dict()
    assert len(enc) == len(backbone(sd))
    for k, v in enc.items():
        expected = sd[k]
        if k == "conv1.weight" and in_channels == 1:
            assert expected.shape == (64, 3, 7, 7)
            expected = expected.sum(dim=1, keepdim=True)  # RGB filters summed
        assert torch.equal(v, expected), k


def save(tmp_path, obj, name="weights.pth"):
    path = tmp_path / name
    torch.save(obj, path)
    return path


# ----------------------------------------------------------------------------- factory
@pytest.mark.parametrize("encoder", ["resnet18", "convnext_atto"])
def test_build_unet_shapes(encoder):
    torch.manual_seed(0)
    model = build_unet(encoder, num_classes=3, decoder_channels=(32, 16, 8, 8, 4)).eval()
    with torch.no_grad():
        y = model(torch.randn(2, 1, 64, 64))
    assert y.shape == (2, 3, 64, 64)
    assert [b.conv2[0].out_channels for b in model.decoder.blocks] == [32, 16, 8, 8, 4]
    assert model.segmentation_head[0].in_channels == 4
    assert model.encoder.model.state_dict()[next(iter(model.encoder.model.state_dict()))].shape[1] == 1
    info = model.medssl_init
    assert info["init"] == "random" and info["encoder"] == encoder and info["in_channels"] == 1
    assert info["lineage"] == [{"method": "random"}] and info["report"]["decoder"] == "random"


def test_build_unet_depth_follows_decoder_channels_and_seed_repeats():
    torch.manual_seed(3)
    a = build_unet("resnet18", 2, decoder_channels=(16, 8, 8))
    torch.manual_seed(3)
    b = build_unet("resnet18", 2, decoder_channels=(16, 8, 8))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert a(torch.zeros(1, 1, 32, 32)).shape == (1, 2, 32, 32)


@pytest.mark.parametrize("kwargs, match", [
    (dict(encoder="resnet19"), r"encoder='resnet19' is not a timm model name.*resnet18"),
    (dict(encoder=""), "encoder=''"),
    (dict(num_classes=0), r"num_classes=0: expected a whole number >= 1"),
    (dict(num_classes=True), "num_classes=True"),
    (dict(in_channels=0), "in_channels=0"),
    (dict(decoder_channels=()), "decoder_channels=()"),
    (dict(decoder_channels=(8, -1)), "decoder_channels"),
    (dict(no_such_option=1), "no_such_option"),
])
def test_build_unet_bad_arguments(kwargs, match):
    with pytest.raises(ParameterError, match=match):
        build_unet(**{"decoder_channels": SMALL, **kwargs})


# ----------------------------------------------------------------------------- foreign formats
def torchvision_file(ref, other):
    return ref  # plain state dict, RGB conv1, fc head


def timm_train_file(ref, other):  # timm train.py checkpoint (DDP prefixes, EMA copy, argparse args)
    return {"epoch": 7, "arch": "resnet18", "args": argparse.Namespace(lr=0.1),
            "state_dict": prefixed("module.", ref), "state_dict_ema": prefixed("module.", other),
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]}}


def solo_learn_file(ref, other):  # Lightning checkpoint of a solo-learn BYOL run
    sd = {**prefixed("backbone.", backbone(ref)), **prefixed("momentum_backbone.", backbone(other)),
          "projector.0.weight": torch.randn(64, 512), "momentum_projector.0.weight": torch.randn(64, 512),
          "predictor.0.weight": torch.randn(64, 64), "classifier.weight": torch.randn(10, 512)}
    return {"epoch": 99, "global_step": 1000, "state_dict": sd, "hyper_parameters": {"method": "byol"}}


def lightly_file(ref, other):  # Lightning checkpoint of lightly's BYOL example module
    sd = {**prefixed("backbone.", sequential(ref)), **prefixed("backbone_momentum.", sequential(other)),
          "projection_head.layers.0.weight": torch.randn(64, 512),
          "prediction_head.layers.0.weight": torch.randn(64, 64)}
    return {"state_dict": sd, "epoch": 3}


def lightly_backbone_file(ref, other):  # torch.save(backbone.state_dict()) of the Sequential
    return sequential(ref)


def byol_pytorch_file(ref, other):  # BYOL-PyTorch released weights: online/target backbones, DDP
    return {"online_backbone": prefixed("module.", sequential(ref)),
            "target_backbone": prefixed("module.", sequential(other)),
            "predictor": {"module.l1.weight": torch.randn(64, 64)}, "epoch": 300}


def byol_pytorch_train_file(ref, other):  # BYOL-PyTorch training snapshot
    model = {**prefixed("module.online_network.encoder.", sequential(ref)),
             **prefixed("module.target_network.encoder.", sequential(other)),
             "module.online_network.projetion.l1.weight": torch.randn(64, 512),
             "module.predictor.predictor.l1.weight": torch.randn(64, 64)}
    return {"config": {"lr": 0.3}, "epoch": 10, "steps": 100, "model": model}


@pytest.mark.parametrize("make, prefix, dropped, ignored", [
    (torchvision_file, "", ["fc.weight", "fc.bias"], []),
    (timm_train_file, "state_dict.module.", ["state_dict.module.fc.weight", "state_dict.module.fc.bias"],
     ["state_dict_ema"]),
    (solo_learn_file, "state_dict.backbone.", [],
     ["state_dict.classifier", "state_dict.momentum_backbone", "state_dict.momentum_projector",
      "state_dict.predictor", "state_dict.projector"]),
    (lightly_file, "state_dict.backbone.", [],
     ["state_dict.backbone_momentum", "state_dict.prediction_head", "state_dict.projection_head"]),
    (lightly_backbone_file, "", [], []),
    (byol_pytorch_file, "online_backbone.module.", [], ["predictor", "target_backbone"]),
    (byol_pytorch_train_file, "model.module.online_network.encoder.", [],
     ["model.module.online_network.projetion", "model.module.predictor", "model.module.target_network"]),
])
def test_foreign_formats_convert_to_the_encoder(tmp_path, unet18, ref, other, make, prefix, dropped, ignored):
    path = save(tmp_path, make(ref, other))
    model = unet18()
    assert load_encoder_init(model, f"file:{path}") is model.medssl_init
    assert_encoder_is(model, ref)  # the online / non-EMA copy, first conv summed over RGB
    report = model.medssl_init["report"]
    assert report["format"] == "foreign" and report["source"] == str(path)
    assert report["prefix"] == prefix
    assert len(report["matched"]) == 120 and report["n_encoder_tensors"] == N_RESNET18
    assert report["missing"] == [] and report["unexpected"] == []
    assert sorted(report["dropped"]) == sorted(dropped)
    assert report["ignored"] == ignored
    assert report["adapted"] == ["conv1.weight: 3→1 input channels (summed)"]
    assert "loaded 100/100 encoder tensors" in report["summary"]
    assert model.medssl_init["lineage"] == [{"method": "file", "path": str(path.resolve()), "prefix": prefix}]
    assert describe_lineage(model.medssl_init["lineage"]) == "file weights.pth"


def test_safetensors_file(tmp_path, unet18, ref):
    from safetensors.torch import save_file

    save_file(ref, tmp_path / "model.safetensors")
    model = unet18()
    load_encoder_init(model, f"file:{tmp_path / 'model.safetensors'}")
    assert_encoder_is(model, ref)


def test_weights_key_picks_the_target_network(tmp_path, unet18, ref, other):
    path = save(tmp_path, byol_pytorch_file(ref, other))
    model = unet18()
    load_encoder_init(model, str(path), weights_key="target_backbone")
    assert_encoder_is(model, other)
    assert model.medssl_init["report"]["prefix"] == "target_backbone.module."
    with pytest.raises(DataError, match="no tensor under weights_key='nothing'"):
        load_encoder_init(model, str(path), weights_key="nothing")


def test_three_channel_encoder_keeps_rgb_and_missing_keys_are_reported(tmp_path, ref):
    sd = dict(ref)
    del sd["layer4.1.bn2.running_var"]  # 99 of 100 tensors: above the 90% floor, reported
    path = save(tmp_path, sd)
    with pytest.warns(UserWarning, match="1 missing"):
        model = build_unet("resnet18", init=f"file:{path}", in_channels=3, decoder_channels=SMALL)
    report = model.medssl_init["report"]
    assert report["missing"] == ["layer4.1.bn2.running_var"] and report["adapted"] == []
    assert torch.equal(model.encoder.model.conv1.weight, ref["conv1.weight"])


def test_timm_features_naming_and_sequential_indices_other_architecture(tmp_path):
    """ConvNeXt: timm's features model renames stem.0 -> stem_0; lightly indexes children."""
    sd = random_state("convnext_atto", 5)
    seq = {}
    for k, v in sd.items():
        head, _, rest = k.partition(".")
        if head != "head":
            seq[f"{['stem', 'stages', 'norm_pre'].index(head)}.{rest}"] = v
    model = build_unet("convnext_atto", init=f"file:{save(tmp_path, sd)}", decoder_channels=SMALL)
    for obj in (None, {"state_dict": prefixed("backbone.", seq)}):
        if obj is not None:
            for t in model.encoder.state_dict().values():
                t.zero_()
            load_encoder_init(model, f"file:{save(tmp_path, obj)}")
        enc = model.encoder.model.state_dict()
        assert torch.equal(enc["stem_0.weight"], sd["stem.0.weight"].sum(1, keepdim=True))
        assert torch.equal(enc["stages_3.blocks.1.mlp.fc2.weight"], sd["stages.3.blocks.1.mlp.fc2.weight"])
        assert model.medssl_init["report"]["missing"] == []


def test_build_encoder_alone_matches_unet_encoder_keys(tmp_path, ref):
    enc = build_encoder("resnet18", init=f"file:{save(tmp_path, ref)}")
    feats = enc(torch.zeros(1, 1, 64, 64))
    assert [f.shape[1] for f in feats] == enc.out_channels == [1, 64, 64, 128, 256, 512]
    assert set(encoder_state(enc)) == set(build_unet("resnet18", decoder_channels=SMALL).encoder.state_dict())
    assert torch.equal(encoder_state(enc)["model.layer2.0.conv1.weight"], ref["layer2.0.conv1.weight"])


# ----------------------------------------------------------------------------- refusals
def test_missing_file_is_refused(tmp_path):
    for init in (f"file:{tmp_path}/nope.pth", str(tmp_path / "nope.pth"), tmp_path / "nope.pth"):
        with pytest.raises(DataError, match=re.escape(str(tmp_path / "nope.pth")) + " does not exist"):
            build_unet("resnet18", init=init, decoder_channels=SMALL)


def shaped_zeros(name: str) -> dict[str, torch.Tensor]:
    """A classifier state dict of the right shapes, stored tiny (zero-stride views of one value)."""
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in timm.create_model(name).state_dict().items()}
    return {k: torch.zeros(()).expand(s) for k, s in shapes.items()}


def test_wrong_architecture_is_refused(tmp_path):
    path = save(tmp_path, shaped_zeros("resnet50"))
    with pytest.raises(DataError, match=r"do not fit the resnet18 encoder: \d+ tensors have other shapes"):
        build_unet("resnet18", init=f"file:{path}", decoder_channels=SMALL)


def test_deeper_same_block_architecture_is_refused(tmp_path, ref):
    path = save(tmp_path, shaped_zeros("resnet34"))  # every resnet18 tensor fits, many extra blocks
    with pytest.raises(DataError, match="fit nothing in the resnet18 encoder"):
        build_unet("resnet18", init=f"file:{path}", decoder_channels=SMALL)


def test_mostly_unrelated_keys_are_refused(tmp_path, ref):
    sd = {"conv1.weight": ref["conv1.weight"], **{f"decoder.{i}.weight": torch.ones(3) for i in range(40)}}
    with pytest.raises(DataError, match=r"only 1 of the 100 tensors of the resnet18 encoder were found"):
        build_unet("resnet18", init=f"file:{save(tmp_path, sd)}", decoder_channels=SMALL)
    with pytest.raises(DataError, match="no tensor matches the resnet18 encoder"):
        build_unet("resnet18", init=f"file:{save(tmp_path, {'a.b': torch.ones(2)})}", decoder_channels=SMALL)


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """No network and an empty Hugging Face / torch hub cache (huggingface_hub reads these at import)."""
    import huggingface_hub.constants as hf

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    for var in ("HF_HUB_CACHE", "TORCH_HOME"):
        monkeypatch.setenv(var, str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(cache))
    return cache


def test_timm_init_offline_without_cache_is_refused(offline_hub):
    with pytest.raises(DataError) as err:
        build_unet("resnet18", init="timm", decoder_channels=SMALL)
    msg = str(err.value)
    for part in ("init='timm'", "'resnet18'", "timm/resnet18.a1_in1k", "does not fall back to random",
                 "HF_HUB_CACHE", "TORCH_HOME", "HF_HUB_OFFLINE=1", "init='file:PATH'"):
        assert part in msg, part


def test_timm_init_reads_the_offline_cache(offline_hub, ref):
    from safetensors.torch import save_file

    repo = offline_hub / "models--timm--resnet18.a1_in1k"
    rev = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(rev)
    (repo / "snapshots" / rev).mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in ref.items()}, repo / "snapshots" / rev / "model.safetensors")
    model = build_unet("resnet18", init="timm", decoder_channels=SMALL)
    assert_encoder_is(model, ref)
    assert model.medssl_init["report"]["source"] == "hf-hub:timm/resnet18.a1_in1k"
    assert model.medssl_init["lineage"] == [{"method": "timm", "weights": "resnet18.a1_in1k", "data": ["imagenet"],
                                             "source": "hf-hub:timm/resnet18.a1_in1k"}]


@pytest.mark.parametrize("init, error, match", [
    ("imagnet", ParameterError, r"init='imagnet' is not recognised; expected 'random', 'timm' or 'imagenet'.*'file:PATH'"),
    ("file:", ParameterError, "'file:' must be followed by the path"),
    ("", ParameterError, "init=''"),
    (None, ParameterError, "init=None"),
])
def test_unknown_init_is_refused(init, error, match):
    with pytest.raises(error, match=match):
        build_unet("resnet18", init=init, decoder_channels=SMALL)


def test_unreadable_files_are_refused(tmp_path, ref):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint" * 20)
    with pytest.raises(DataError, match="cannot read weights file .*garbage.pth"):
        build_unet("resnet18", init=f"file:{garbage}", decoder_channels=SMALL)
    pickled = save(tmp_path, {"model": ref, "obj": Unsafe()}, "pickled.pth")
    with pytest.raises(DataError, match=r"Python objects besides tensors \(.*Unsafe\).*weights_only"):
        build_unet("resnet18", init=f"file:{pickled}", decoder_channels=SMALL)


class Unsafe:
    """Stands for an arbitrary pickled object that weights_only loading must refuse."""


# ----------------------------------------------------------------------------- medssl checkpoints
def test_checkpoint_round_trip_encoder_and_decoder(tmp_path):
    torch.manual_seed(0)
    a = build_unet("resnet18", decoder_channels=SMALL)
    path = save_checkpoint(tmp_path / "ckpts" / "hssl.pt", encoder_state=encoder_state(a), decoder_state=decoder_state(a),
                           encoder_name="resnet18", in_channels=1, extra={"epoch": 4},
                           lineage_stage={"method": "hssl", "data": ["phantom:cardiac", "phantom:brain-mr"],
                                          "epochs": 2, "init": "random"},
                           parent_lineage=a.medssl_init["lineage"])
    assert [p.name for p in path.parent.iterdir()] == ["hssl.pt"]  # no temporary file left
    ck = load_checkpoint(path)
    assert ck["medssl_checkpoint"] == 1 and ck["encoder_name"] == "resnet18" and ck["extra"] == {"epoch": 4}
    assert set(ck["encoder"]) == set(a.encoder.state_dict()) and next(iter(ck["encoder"])).startswith("model.")

    torch.manual_seed(1)
    b = build_unet("resnet18", init=str(path), decoder_channels=SMALL, load_decoder=True)
    for x, y in ((a.encoder, b.encoder), (a.decoder, b.decoder)):
        assert all(torch.equal(u, v) for u, v in zip(x.state_dict().values(), y.state_dict().values()))
    assert not torch.equal(a.segmentation_head[0].weight, b.segmentation_head[0].weight)  # head stays random
    assert b.medssl_init["report"]["format"] == "medssl" and b.medssl_init["report"]["decoder"] == "loaded"
    assert b.medssl_init["report"]["adapted"] == [] and len(b.medssl_init["report"]["matched"]) == 120
    assert describe_lineage(b.medssl_init["lineage"]) == "random → HSSL(phantom:cardiac+phantom:brain-mr, 2 ep)"

    c = build_unet("resnet18", init=f"file:{path}", decoder_channels=SMALL)  # decoder not asked for
    assert not torch.equal(a.decoder.blocks[0].conv1[0].weight, c.decoder.blocks[0].conv1[0].weight)
    assert c.medssl_init["report"]["decoder"].startswith("random (the checkpoint holds a pretrained decoder")
    assert torch.equal(a.encoder.model.conv1.weight, c.encoder.model.conv1.weight)


def test_lineage_chain_across_two_stages(tmp_path):
    model = build_unet("resnet18", decoder_channels=SMALL)
    first = save_checkpoint(tmp_path / "byol_natural.pt", encoder_state=encoder_state(model), encoder_name="resnet18",
                            in_channels=1, lineage_stage={"method": "byol", "data": "natural", "epochs": 5,
                                                          "init": "random", "parent": None},
                            parent_lineage=model.medssl_init["lineage"])
    model2 = build_unet("resnet18", init=f"file:{first}", decoder_channels=SMALL)
    second = save_checkpoint(tmp_path / "byol_cardiac.pt", encoder_state=encoder_state(model2),
                             encoder_name="resnet18", in_channels=1,
                             lineage_stage={"method": "byol", "data": ["phantom:cardiac"], "epochs": 3,
                                            "init": f"file:{first}", "parent": first},
                             parent_lineage=model2.medssl_init["lineage"])
    lineage = load_checkpoint(second)["lineage"]
    assert [s["method"] for s in lineage] == ["random", "byol", "byol"]
    assert lineage[1]["parent"] is None and lineage[2]["parent"] == str(first)
    assert lineage[1]["data"] == ["natural"] and lineage[2]["init"] == f"file:{first}"
    assert all(re.match(r"\d{4}-\d\d-\d\dT", s["created"]) for s in lineage[1:])
    assert describe_lineage(lineage) == "random → BYOL(natural, 5 ep) → BYOL(phantom:cardiac, 3 ep)"
    model3 = build_unet("resnet18", init=second, decoder_channels=SMALL)
    assert model3.medssl_init["lineage"] == lineage


def test_describe_lineage_names_starts():
    byol = {"method": "byol", "data": ["cardiac"], "epochs": 3}
    assert describe_lineage([{"method": "timm", "weights": "resnet50.a1_in1k", "data": ["imagenet"]}, byol]) \
        == "ImageNet (timm) → BYOL(cardiac, 3 ep)"
    assert describe_lineage([{**byol, "init": "timm"}]) == "ImageNet (timm) → BYOL(cardiac, 3 ep)"
    assert describe_lineage([{**byol, "init": "random"}]) == "random → BYOL(cardiac, 3 ep)"
    assert describe_lineage([{"method": "file", "path": "/w/byol_in1k.pth"}, {"method": "simclr"}]) \
        == "file byol_in1k.pth → SimCLR"
    assert describe_lineage([{"method": "random"}]) == "random" and describe_lineage([]) == "unknown"


def test_checkpoint_refusals(tmp_path, ref):
    model = build_unet("resnet18", decoder_channels=SMALL)
    kw = dict(encoder_state=encoder_state(model), encoder_name="resnet18", in_channels=1)
    path = save_checkpoint(tmp_path / "enc.pt", lineage_stage={"method": "byol"}, **kw)

    with pytest.raises(DataError, match=r"holds no decoder"):
        load_encoder_init(model, str(path), load_decoder=True)
    with pytest.raises(DataError, match=r"holds a 'resnet18' encoder but the model was built with encoder='resnet34'"):
        build_unet("resnet34", init=str(path), decoder_channels=SMALL)
    with pytest.raises(ParameterError, match="load_decoder=True needs init to be a medssl checkpoint"):
        build_unet("resnet18", decoder_channels=SMALL, load_decoder=True)

    with_dec = save_checkpoint(tmp_path / "dec.pt", decoder_state=decoder_state(model),
                               lineage_stage={"method": "hssl"}, **kw)
    with pytest.raises(DataError, match="pretrained decoder does not fit this U-Net"):
        build_unet("resnet18", init=str(with_dec), decoder_channels=(16, 16, 16, 16, 16), load_decoder=True)

    broken = tmp_path / "broken.pt"
    broken.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    for load in (load_checkpoint, lambda p: load_encoder_init(model, p)):
        with pytest.raises(DataError, match=r"cannot read .*broken.pt: truncated, corrupted"):
            load(broken)
    with pytest.raises(DataError, match="is not a medssl checkpoint .*init='file:PATH'"):
        load_checkpoint(save(tmp_path, ref))
    with pytest.raises(DataError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")

    with pytest.raises(ParameterError, match="lineage_stage"):
        save_checkpoint(tmp_path / "x.pt", lineage_stage={"data": ["natural"]}, **kw)
    with pytest.raises(ParameterError, match="JSON-like"):
        save_checkpoint(tmp_path / "x.pt", lineage_stage={"method": "byol", "when": object()}, **kw)
    with pytest.raises(ParameterError, match="parent_lineage"):
        save_checkpoint(tmp_path / "x.pt", lineage_stage={"method": "byol"}, parent_lineage=model.medssl_init, **kw)
    assert not (tmp_path / "x.pt").exists() and not [p for p in os.listdir(tmp_path) if ".tmp" in p]
