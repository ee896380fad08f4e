"""Backbone-only export (medssl_utils.models.export, docs/export.md): a medssl checkpoint's encoder in timm's own
key names, loaded by timm, by segmentation_models_pytorch and by medssl; each docs snippet is run here as written."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import segmentation_models_pytorch as smp
import timm
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from medssl_utils.errors import DataError
from medssl_utils.models import (build_unet, encoder_state, export_encoder, load_checkpoint, load_exported,
                                 save_checkpoint)
from training_kit import pre_epoch

STAGE = {"method": "byol", "data": ["natural"], "epochs": 3}
TINY_DECODER = (16, 8, 8, 8, 8)


def medssl_checkpoint(tmp_path, name: str):
    """A medssl checkpoint of a tiny U-Net over ``name`` whose every encoder tensor is changed away from its init (so
    a tensor left at timm's init never passes as loaded)."""
    torch.manual_seed(0)
    unet = build_unet(name, num_classes=2, decoder_channels=TINY_DECODER)
    with torch.no_grad():
        for v in unet.encoder.state_dict().values():
            if v.is_floating_point():
                v.copy_(torch.randn_like(v).abs() + 0.5)
            else:
                v.fill_(7)
    path = save_checkpoint(tmp_path / "checkpoints" / "final.pt", encoder_state=encoder_state(unet),
                           encoder_name=name, in_channels=1, lineage_stage=STAGE,
                           parent_lineage=unet.medssl_init["lineage"])
    return path, {k[len("model."):]: v for k, v in encoder_state(unet).items()}


def same_tensors(model_state, expected, rename=lambda k: k):
    assert {rename(k) for k in model_state} == set(expected)
    for k, v in model_state.items():
        assert torch.equal(v, expected[rename(k)]), k


# ----------------------------------------------------------------------------- the file
@pytest.mark.parametrize("name", ["tf_efficientnet_lite0", "resnet18"])
def test_the_file_holds_the_encoder_under_timm_names_with_its_lineage(tmp_path, name):
    ckpt, enc = medssl_checkpoint(tmp_path, name)
    out = export_encoder(ckpt, tmp_path / "checkpoints" / "encoder.safetensors")
    assert out == tmp_path / "checkpoints" / "encoder.safetensors"
    assert sorted(p.name for p in out.parent.iterdir()) == ["encoder.safetensors", "final.pt"]  # no temporary left
    state = load_file(out)
    same_tensors(state, enc)  # smp's model.conv1.weight is timm's conv1.weight, nothing added or dropped
    full = timm.create_model(name, in_chans=1, num_classes=0).state_dict()
    assert set(state) <= set(full) and all(state[k].shape == full[k].shape for k in state)
    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
    assert all(isinstance(v, str) for v in meta.values())
    assert meta["format"] == "pt" and meta["medssl_export"] == "1"
    assert (meta["encoder_name"], meta["in_chans"], meta["encoder_depth"]) == (name, "1", "5")
    lineage = load_checkpoint(ckpt)["lineage"]
    assert json.loads(meta["lineage"]) == lineage and meta["lineage_name"] == "random → BYOL(natural, 3 ep)"
    assert meta["source"] == str(ckpt.resolve())
    # what timm's model has and the encoder has not got is named, never filled in
    absent = json.loads(meta["not_in_export"])
    assert absent == sorted(set(full) - set(state))
    assert absent == ([] if name == "resnet18" else ["bn2.bias", "bn2.num_batches_tracked", "bn2.running_mean",
                                                     "bn2.running_var", "bn2.weight", "conv_head.weight"])
    back = load_exported(out)
    assert (back["encoder_name"], back["in_chans"], back["encoder_depth"]) == (name, 1, 5)
    assert back["lineage"] == lineage and back["not_in_export"] == absent
    same_tensors(back["state_dict"], enc)


# ----------------------------------------------------------------------------- (a) timm
def test_timm_resnet_loads_it_strictly_as_a_pooled_model(tmp_path):
    ckpt, enc = medssl_checkpoint(tmp_path, "resnet18")
    path = str(export_encoder(ckpt, tmp_path / "encoder.safetensors"))
    # docs/export.md, "timm": num_classes=0 in the overlay keeps timm's loading strict
    model = timm.create_model("resnet18", pretrained=True, pretrained_cfg_overlay=dict(file=path, num_classes=0),
                              in_chans=1, num_classes=0)
    same_tensors(model.state_dict(), enc)
    # the brief's form (without num_classes=0 in the overlay) loads the same here, but not strictly
    loose = timm.create_model("resnet18", pretrained=True, pretrained_cfg_overlay=dict(file=path), in_chans=1,
                              num_classes=0)
    same_tensors(loose.state_dict(), enc)
    assert model.eval()(torch.randn(1, 1, 32, 32)).shape == (1, 512)


@pytest.mark.parametrize("name", ["tf_efficientnet_lite0", "resnet18"])
def test_timm_features_only_backbone_is_exactly_the_pretrained_encoder(tmp_path, name):
    ckpt, enc = medssl_checkpoint(tmp_path, name)
    path = str(export_encoder(ckpt, tmp_path / "encoder.safetensors"))
    # docs/export.md, "timm": the feature backbone, any family
    backbone = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=path), in_chans=1,
                                 features_only=True)
    same_tensors(backbone.state_dict(), enc)
    assert len(backbone.eval()(torch.randn(1, 1, 32, 32))) == 5


def test_efficientnet_pooled_model_is_refused_when_strict_and_half_random_when_not(tmp_path):
    """The trap docs/export.md warns of: EfficientNet's conv_head/bn2 (before pooling) are not in a features-only
    encoder. Strict loading says so; timm's default (num_classes=0 only in the call) leaves them at random init."""
    name = "tf_efficientnet_lite0"
    ckpt, enc = medssl_checkpoint(tmp_path, name)
    path = str(export_encoder(ckpt, tmp_path / "encoder.safetensors"))
    with pytest.raises(RuntimeError, match=r"Missing key\(s\).*conv_head\.weight"):
        timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=path, num_classes=0), in_chans=1,
                          num_classes=0)
    loose = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=path), in_chans=1,
                              num_classes=0).state_dict()
    for k, v in enc.items():
        assert torch.equal(loose[k], v), k  # every tensor medssl trained arrives...
    assert sorted(set(loose) - set(enc)) == load_exported(path)["not_in_export"]  # ...the head layers do not
    with pytest.raises(DataError, match=r"does not fit EfficientNet: 6 tensors of the model are not in the file "
                                        r"\(bn2\.bias, bn2\.running_mean, bn2\.running_var, bn2\.weight, "
                                        r"conv_head\.weight and 1 more\)"):
        load_exported(path, into=timm.create_model(name, in_chans=1, num_classes=0))


# ----------------------------------------------------------------------------- (b) segmentation_models_pytorch
@pytest.mark.parametrize("name", ["tf_efficientnet_lite0", "resnet18"])
def test_smp_unet_loads_it_into_its_tu_encoder(tmp_path, name):
    ckpt, enc = medssl_checkpoint(tmp_path, name)
    path = str(export_encoder(ckpt, tmp_path / "encoder.safetensors"))
    # docs/export.md, "segmentation_models_pytorch"
    model = smp.Unet(f"tu-{name}", encoder_weights=None, in_channels=1, classes=4)
    model.encoder.model.load_state_dict(load_file(path))  # strict: a missing or extra tensor raises
    same_tensors(model.encoder.model.state_dict(), enc)
    other = smp.Unet(f"tu-{name}", encoder_weights=None, in_channels=1, classes=4)
    load_exported(path, into=other)
    same_tensors(other.encoder.model.state_dict(), enc)
    assert model.eval()(torch.randn(1, 1, 32, 32)).shape == (1, 4, 32, 32)


def test_a_convnext_is_renamed_both_ways(tmp_path):
    """timm's FeatureListNet flattens ConvNeXt's stages (smp's model.stages_0.… is timm's stages.0.…): the file has
    timm's names, timm's features_only loads them, smp loads them through load_exported."""
    name = "test_convnext"
    ckpt, enc = medssl_checkpoint(tmp_path, name)
    path = str(export_encoder(ckpt, tmp_path / "encoder.safetensors"))
    state = load_file(path)
    assert "stages.0.blocks.0.conv_dw.weight" in state and "stages_0.blocks.0.conv_dw.weight" in enc
    full = timm.create_model(name, in_chans=1, num_classes=0).state_dict()
    assert set(state) <= set(full) and load_exported(path)["not_in_export"] == ["head.norm.bias", "head.norm.weight"]
    backbone = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=path), in_chans=1,
                                 features_only=True)
    same_tensors(backbone.state_dict(), state, rename=lambda k: re.sub(r"^([a-z]+)_(\d+)\.", r"\1.\2.", k))
    model = smp.Unet(f"tu-{name}", encoder_weights=None, in_channels=1, classes=4)
    with pytest.raises(RuntimeError, match="stages_0"):
        model.encoder.model.load_state_dict(load_file(path))
    load_exported(path, into=model)
    same_tensors(model.encoder.model.state_dict(), enc)


def test_medssl_itself_reads_it_as_a_file_init(tmp_path):
    ckpt, enc = medssl_checkpoint(tmp_path, "tf_efficientnet_lite0")
    path = export_encoder(ckpt, tmp_path / "encoder.safetensors")
    unet = build_unet("tf_efficientnet_lite0", num_classes=4, init=f"file:{path}", decoder_channels=TINY_DECODER)
    same_tensors(unet.encoder.model.state_dict(), enc)
    assert unet.medssl_init["lineage"][0]["method"] == "file"  # the lineage is final.pt's, not the export's


def test_exporting_a_model_or_state_dict_needs_the_encoder_name(tmp_path):
    unet = build_unet("test_resnet", num_classes=2, decoder_channels=TINY_DECODER)
    path = export_encoder(unet, tmp_path / "a.safetensors", encoder_name="test_resnet")
    assert load_exported(path)["lineage_name"] == "random"
    same_tensors(load_file(path), {k[len("model."):]: v for k, v in encoder_state(unet).items()})
    with pytest.raises(ValueError, match=r"^encoder_name=None: expected the timm name"):
        export_encoder(encoder_state(unet), tmp_path / "b.safetensors")


# ----------------------------------------------------------------------------- (c) every pretraining run
def test_a_pretraining_run_writes_its_encoder_export(tmp_path):
    r = pre_epoch(tmp_path / "p")
    path = tmp_path / "p" / "checkpoints" / "encoder.safetensors"
    assert r["encoder_export"] == str(path) and path.is_file()
    assert json.loads((tmp_path / "p" / "result.json").read_text())["encoder_export"] == str(path)
    back = load_exported(path)
    assert back["lineage"] == r["lineage"] and back["lineage_name"] == r["lineage_name"]
    assert back["encoder_name"] == "test_resnet" and Path(back["metadata"]["source"]) == Path(r["checkpoint"]).resolve()
    final = load_checkpoint(r["checkpoint"])["encoder"]
    same_tensors(back["state_dict"], {k[len("model."):]: v for k, v in final.items()})


# ----------------------------------------------------------------------------- (d) refusals
def test_a_missing_or_damaged_checkpoint_is_one_line_naming_the_file(tmp_path):
    target = tmp_path / "out" / "encoder.safetensors"
    missing = tmp_path / "run" / "checkpoints" / "final.pt"
    with pytest.raises(DataError, match=rf"^medssl checkpoint {missing} does not exist$"):
        export_encoder(missing, target)
    ckpt, _ = medssl_checkpoint(tmp_path, "test_resnet")
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError) as e:
        export_encoder(ckpt, target)
    assert str(ckpt) in str(e.value) and "\n" not in str(e.value) and "truncated" in str(e.value)
    torch.save({"state_dict": {}}, ckpt)
    with pytest.raises(DataError, match=rf"^{ckpt} is not a medssl checkpoint"):
        export_encoder(ckpt, target)
    assert not target.parent.exists() or not any(target.parent.iterdir())  # nothing written


def test_an_encoder_that_is_not_the_named_one_is_refused_naming_the_keys(tmp_path):
    _, enc = medssl_checkpoint(tmp_path, "test_resnet")
    state = {f"model.{k}": v for k, v in enc.items()}
    kw = dict(encoder_name="test_resnet", in_channels=1, lineage_stage=STAGE)
    lost = save_checkpoint(tmp_path / "lost.pt", encoder_state={k: v for k, v in state.items()
                                                                if k != "model.conv1.0.weight"}, **kw)
    with pytest.raises(DataError, match=rf"^{lost.resolve()}: the encoder tensors do not match the test_resnet encoder"
                                        r" smp builds .*: 1 missing \(model\.conv1\.0\.weight\)$"):
        export_encoder(lost, tmp_path / "x.safetensors")
    extra = save_checkpoint(tmp_path / "extra.pt", encoder_state={**state, "model.fc.weight": torch.ones(2, 2)}, **kw)
    with pytest.raises(DataError, match=r"1 unexpected \(model\.fc\.weight\)"):
        export_encoder(extra, tmp_path / "x.safetensors")
    other = save_checkpoint(tmp_path / "other.pt", encoder_state=state, **{**kw, "encoder_name": "resnet18"})
    with pytest.raises(DataError, match=r"do not match the resnet18 encoder smp builds .*missing"):
        export_encoder(other, tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


def test_load_exported_refuses_other_files_naming_them(tmp_path):
    with pytest.raises(DataError, match=rf"^encoder export {tmp_path / 'none.safetensors'} does not exist$"):
        load_exported(tmp_path / "none.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not safetensors")
    with pytest.raises(DataError, match=rf"^cannot read encoder export {bad}: truncated or not a safetensors file"):
        load_exported(bad)
    from safetensors.torch import save_file

    plain = tmp_path / "plain.safetensors"
    save_file({"conv1.weight": torch.ones(1)}, str(plain))
    with pytest.raises(DataError, match=rf"^{plain} is not a medssl encoder export"):
        load_exported(plain)
