"""Tests for medssl_utils.data.transforms (batched, seeded augmentations)."""

from __future__ import annotations


import pytest
import torch

from medssl_utils.data.transforms import SegAugment, SSLAugment
from medssl_utils.errors import ParameterError

OFF = dict(jitter_p=0.0, gamma_p=0.0, blur_p=0.0, noise_p=0.0)  # all intensity ops off
SSL_IDENTITY = dict(scale=(1.0, 1.0), hflip_p=0.0, vflip_p=0.0, **OFF)
SEG_IDENTITY = dict(scale=(1.0, 1.0), rotation=0.0, translate=0.0, hflip_p=0.0, vflip_p=0.0, **OFF)
SSL_STRONG = dict(
    scale=(0.08, 1.0), rotation=180.0, hflip_p=1.0, vflip_p=1.0, jitter_p=1.0, brightness=10.0,
    contrast=10.0, gamma_p=1.0, gamma=(0.2, 5.0), blur_p=1.0, blur_sigma=(0.1, 5.0),
    noise_p=1.0, noise_std=(0.0, 1.0),
)
SEG_STRONG = dict(
    scale=(0.5, 2.0), rotation=180.0, translate=0.5, hflip_p=1.0, vflip_p=1.0, jitter_p=1.0,
    brightness=10.0, contrast=10.0, gamma_p=1.0, gamma=(0.2, 5.0), blur_p=1.0,
    blur_sigma=(0.1, 5.0), noise_p=1.0, noise_std=(0.0, 1.0),
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def phantom(b: int = 6, h: int = 32, w: int = 40, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """z-scored MR-like images (negative noisy background, bright blobs) and their masks."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    masks = torch.zeros(b, h, w, dtype=torch.int64)
    for i in range(b):
        cy, cx = h / 2 + (i % 3) - 1, w / 2 + (i % 2) * 3 - 1
        r = torch.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
        masks[i][r < 11] = 2
        masks[i][r < 7] = 3
        masks[i][(r < 14) & (xx < cx - 9)] = 1
    raw = masks.float() * 100 + 5 * torch.randn(b, h, w, generator=g)
    raw = raw + 20 * yy / h  # an intensity ramp, so flips and shifts are visible everywhere
    images = (raw - raw.mean(dim=(1, 2), keepdim=True)) / raw.std(dim=(1, 2), keepdim=True)
    return images.unsqueeze(1), masks


# ----------------------------------------------------------------------- reproducibility
def test_ssl_same_seed_identical_different_seed_different():
    x, _ = phantom()
    aug = SSLAugment()
    a1, a2 = aug(x, gen(3))
    b1, b2 = aug(x, gen(3))
    assert torch.equal(a1, b1) and torch.equal(a2, b2)
    c1, c2 = aug(x, gen(4))
    assert not torch.allclose(a1, c1) and not torch.allclose(a2, c2)


def test_seg_same_seed_identical_different_seed_different():
    x, m = phantom()
    aug = SegAugment(output_size=24)
    a = aug(x, m, gen(5))
    b = aug(x, m, gen(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    c = aug(x, m, gen(6))
    assert not torch.allclose(a[0], c[0])


def all_different(v: torch.Tensor) -> bool:
    flat = v.flatten(1)
    return all(not torch.allclose(flat[i], flat[j]) for i in range(len(flat)) for j in range(i))


def test_views_and_samples_are_independent():
    x, m = phantom(b=1)
    batch = x.repeat(8, 1, 1, 1)
    v1, v2 = SSLAugment()(batch, gen(0))
    assert all_different(v1) and all_different(v2)
    assert not torch.allclose(v1, v2)
    # each stage on its own is drawn per sample: geometry only, then intensity only
    assert all_different(SSLAugment(**OFF).view(batch, gen(0)))
    assert all_different(SSLAugment(**{**SSL_IDENTITY, "jitter_p": 1.0}).view(batch, gen(0)))
    _, masks = SegAugment(rotation=30.0, **OFF)(batch, m.repeat(8, 1, 1), gen(0))
    assert all_different(masks)
    out, _ = SegAugment(**{**SEG_IDENTITY, "jitter_p": 1.0})(batch, None, gen(0))
    assert all_different(out)


# ----------------------------------------------------------------------- shapes and dtypes
def test_shapes_and_dtypes():
    x, m = phantom(b=3, h=30, w=36)
    v1, v2 = SSLAugment(output_size=(16, 20))(x, gen())
    assert v1.shape == v2.shape == (3, 1, 16, 20) and v1.dtype == torch.float32
    assert SSLAugment().view(x, gen(), 1).shape == x.shape
    assert SSLAugment(output_size=12).view(x, gen()).shape == (3, 1, 12, 12)
    xi, mi = SegAugment(output_size=24)(x, m, gen())
    assert xi.shape == (3, 1, 24, 24) and xi.dtype == torch.float32
    assert mi.shape == (3, 24, 24) and mi.dtype == torch.int64
    xi, mi = SegAugment()(x, None, gen())
    assert xi.shape == x.shape and mi is None
    two = torch.cat([x, -x], dim=1)  # several channels share one geometry
    v = SSLAugment(**{**SSL_IDENTITY, "hflip_p": 1.0}).view(two, gen())
    assert torch.allclose(v, two.flip(-1), atol=1e-5)


# ----------------------------------------------------------------------- geometry
def test_identity_settings_return_input():
    x, m = phantom()
    v1, v2 = SSLAugment(**SSL_IDENTITY, ratio=(0.5, 2.0))(x, gen())
    assert (v1 - x).abs().max() < 1e-5 and (v2 - x).abs().max() < 1e-5
    xi, mi = SegAugment(**SEG_IDENTITY)(x, m, gen())
    assert (xi - x).abs().max() < 1e-5
    assert torch.equal(mi, m)


@pytest.mark.parametrize("dims,key", [((-1,), "hflip_p"), ((-2,), "vflip_p"), ((-2, -1), "both")])
def test_flips_actually_flip(dims, key):
    x, m = phantom()
    flags = {"hflip_p": 1.0, "vflip_p": 1.0} if key == "both" else {key: 1.0}
    v1, v2 = SSLAugment(**{**SSL_IDENTITY, **flags})(x, gen())
    assert (v1 - x.flip(dims)).abs().max() < 1e-5 and (v2 - x.flip(dims)).abs().max() < 1e-5
    xi, mi = SegAugment(**{**SEG_IDENTITY, **flags})(x, m, gen())
    assert (xi - x.flip(dims)).abs().max() < 1e-5
    assert torch.equal(mi, m.flip(dims))


def test_flip_probability_is_per_sample():
    x, _ = phantom(b=1)
    batch = x.repeat(64, 1, 1, 1)
    v = SSLAugment(**{**SSL_IDENTITY, "hflip_p": 0.5}).view(batch, gen(2))
    flipped = ((v - x.flip(-1)).flatten(1).abs().amax(1) < 1e-5).sum().item()
    same = ((v - x).flatten(1).abs().amax(1) < 1e-5).sum().item()
    assert flipped + same == 64 and 15 < flipped < 49


def test_seg_crop_is_an_exact_window_of_the_input():
    x, m = phantom(b=8, h=32, w=40)
    out, masks = SegAugment(**SEG_IDENTITY, output_size=(20, 24))(x, m, gen(1))
    offsets = set()
    for i in range(8):
        found = [
            (y0, x0)
            for y0 in range(32 - 20 + 1)
            for x0 in range(40 - 24 + 1)
            if (out[i] - x[i, :, y0 : y0 + 20, x0 : x0 + 24]).abs().max() < 1e-5
        ]
        assert len(found) == 1, f"sample {i}: crop is not a window of the input"
        y0, x0 = found[0]
        assert torch.equal(masks[i], m[i, y0 : y0 + 20, x0 : x0 + 24])
        offsets.add(found[0])
    assert len(offsets) > 1, "every sample got the same crop"


def test_seg_crop_larger_than_input_pads_with_min_and_background():
    x, m = phantom(b=6, h=20, w=20)
    out, masks = SegAugment(**SEG_IDENTITY, output_size=28)(x, m, gen(0))
    low = x.amin(dim=(1, 2, 3))
    offsets = set()
    for i in range(6):
        found = [
            (y0, x0)
            for y0 in range(9)
            for x0 in range(9)
            if (out[i, :, y0 : y0 + 20, x0 : x0 + 20] - x[i]).abs().max() < 1e-5
        ]
        assert len(found) == 1, f"sample {i}: input not placed whole inside the output"
        y0, x0 = found[0]
        offsets.add(found[0])
        assert torch.equal(masks[i, y0 : y0 + 20, x0 : x0 + 20], m[i])
        outside = torch.ones(28, 28, dtype=torch.bool)
        outside[y0 : y0 + 20, x0 : x0 + 20] = False
        assert ((out[i, 0][outside] - low[i]).abs() < 1e-5).all()
        assert (masks[i][outside] == 0).all()
    assert len(offsets) > 1


def test_out_of_bounds_filled_with_per_image_minimum():
    x, m = phantom(b=4)
    low = x.amin(dim=(1, 2, 3))
    assert (low < -0.5).all()  # z-scored: background is negative, so zero fill would be wrong
    out, masks = SegAugment(**{**SEG_IDENTITY, "scale": (0.5, 0.5)})(x, m, gen())
    for i in range(4):
        assert torch.allclose(out[i, 0, :3, :3], low[i].expand(3, 3), atol=1e-5)
        assert torch.allclose(out[i, 0, -3:, -3:], low[i].expand(3, 3), atol=1e-5)
    assert (masks[:, :3, :3] == 0).all() and (masks[:, -3:, -3:] == 0).all()
    v = SSLAugment(**{**SSL_IDENTITY, "rotation": 180.0}).view(x, gen(1))  # rotated corners
    rotated = (v[:, 0, 0, 0] - low).abs() < 1e-5
    assert rotated.any() and torch.isfinite(v).all()


def test_mask_follows_image_geometry():
    x, m = phantom(b=8, h=40, w=40)
    as_image = m.unsqueeze(1).float()
    aug = SegAugment(**{**SEG_STRONG, **OFF, "scale": (0.7, 1.4)}, output_size=32)
    out, masks = aug(as_image, m, gen(7))
    # masks are nearest-resampled from the same grid as the bilinear image: they agree
    # wherever the image is locally constant, and almost everywhere in total
    agree = out[:, 0].round().long() == masks
    assert agree.float().mean() > 0.95
    flat = torch.zeros_like(agree)
    for i in range(8):  # pixels whose 3x3 neighbourhood in the output mask is one class
        mi = masks[i].float()[None, None]
        lo = -torch.nn.functional.max_pool2d(-mi, 3, 1, 1)[0, 0]
        hi = torch.nn.functional.max_pool2d(mi, 3, 1, 1)[0, 0]
        flat[i] = lo == hi
    assert flat.sum() > 0.5 * flat.numel()
    assert agree[flat].all()
    # the geometry is not trivial: the masks really moved
    assert (masks != m[:, 4:36, 4:36]).float().mean() > 0.1


def test_masks_keep_only_original_class_ids():
    x, m = phantom(b=8)
    m = torch.where(m == 3, 7, m)  # class ids need not be contiguous
    _, masks = SegAugment(**SEG_STRONG, output_size=28)(x, m, gen(2))
    assert set(masks.unique().tolist()) <= {0, 1, 2, 7}
    assert 7 in masks.unique().tolist()


def test_rotation_keeps_shapes_on_non_square_images():
    # a disk stays a disk of the same area at any angle; rotating in normalised coordinates
    # (a classic affine_grid mistake) would turn it into a tilted ellipse on a 32 x 48 image
    h, w = 32, 48
    yy, xx = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    disk = (((yy - 15.5) ** 2 + (xx - 23.5) ** 2) < 10**2).long()
    m = disk.expand(16, h, w).clone()
    _, masks = SegAugment(**{**SEG_IDENTITY, "rotation": 180.0})(m[:, None].float(), m, gen(0))
    for i in range(16):
        ys, xs = torch.nonzero(masks[i], as_tuple=True)
        assert abs(len(ys) - disk.sum().item()) <= 0.03 * disk.sum().item()
        cov = torch.cov(torch.stack([ys.float(), xs.float()]))
        eig = torch.linalg.eigvalsh(cov)
        assert eig[1] / eig[0] < 1.1, f"sample {i}: disk became an ellipse"


# ----------------------------------------------------------------------- intensity
def test_brightness_is_a_shift_in_units_of_image_std():
    x, _ = phantom(b=16)
    x = x * torch.linspace(0.2, 3.0, 16).view(16, 1, 1, 1)  # stds far from 1
    aug = SSLAugment(**{**SSL_IDENTITY, "jitter_p": 1.0, "brightness": 0.5, "contrast": 0.0})
    v = aug.view(x, gen())
    shift = (v - x).flatten(1)
    assert torch.allclose(shift, shift[:, :1].expand_as(shift), atol=1e-4)  # constant per image
    ratio = shift[:, 0] / x.flatten(1).std(1, unbiased=False)
    assert (ratio.abs() <= 0.5 + 1e-4).all() and ratio.std() > 0.05


def test_contrast_scales_about_the_image_mean():
    x, _ = phantom(b=16)
    aug = SSLAugment(**{**SSL_IDENTITY, "jitter_p": 1.0, "brightness": 0.0, "contrast": 1.0})
    v = aug.view(x, gen())
    assert torch.allclose(v.mean(dim=(1, 2, 3)), x.mean(dim=(1, 2, 3)), atol=1e-4)
    factor = v.flatten(1).std(1) / x.flatten(1).std(1)
    assert (factor >= 0.5 - 1e-4).all() and (factor <= 2.0 + 1e-4).all()
    assert factor.max() - factor.min() > 0.3


def test_gamma_keeps_range_and_order():
    x, _ = phantom(b=8)
    v = SSLAugment(**{**SSL_IDENTITY, "gamma_p": 1.0, "gamma": (0.5, 2.0)}).view(x, gen())
    assert torch.allclose(v.amin(dim=(1, 2, 3)), x.amin(dim=(1, 2, 3)), atol=1e-5)
    assert torch.allclose(v.amax(dim=(1, 2, 3)), x.amax(dim=(1, 2, 3)), atol=1e-5)
    for i in range(8):  # monotonic: the sort order of the pixels is unchanged
        order = x[i].flatten().argsort()
        assert (v[i].flatten()[order].diff() >= -1e-5).all()
    assert not torch.allclose(v, x, atol=1e-3)


def total_variation(v: torch.Tensor) -> torch.Tensor:
    return (v.diff(dim=-1).abs().sum(dim=(1, 2, 3))) + (v.diff(dim=-2).abs().sum(dim=(1, 2, 3)))


def test_blur_per_view_probability_and_per_sample_sigma():
    x, _ = phantom(b=1)
    batch = x.repeat(8, 1, 1, 1)
    aug = SSLAugment(**{**SSL_IDENTITY, "blur_p": (1.0, 0.0), "blur_sigma": (0.5, 3.0)})
    v1, v2 = aug(batch, gen())
    assert (v2 - batch).abs().max() < 1e-5  # view 2 never blurred
    tv = total_variation(v1)
    assert (tv < 0.9 * total_variation(batch)).all()  # view 1 always blurred
    assert tv.max() - tv.min() > 0.1 * tv.max()  # with a different sigma per sample
    # a normalised kernel keeps a constant image constant and the mean about the same
    const = torch.full((2, 1, 16, 16), -0.7)
    assert torch.allclose(aug.view(const, gen()), const, atol=1e-5)
    assert torch.allclose(v1.mean(dim=(1, 2, 3)), batch.mean(dim=(1, 2, 3)), atol=0.05)


def test_batched_blur_matches_a_per_sample_2d_reference():
    from medssl_utils.data.transforms import _gaussian_blur

    x, _ = phantom(b=4)
    sigma = torch.tensor([0.3, 0.8, 1.5, 2.0])
    out = _gaussian_blur(x, sigma, radius=6)
    offsets = torch.arange(-6, 7).float()
    for i in range(4):  # one sample at a time, with a full 2D kernel
        k1 = torch.exp(-(offsets**2) / (2 * sigma[i] ** 2))
        k2 = torch.outer(k1, k1) / k1.sum() ** 2
        padded = torch.nn.functional.pad(x[i : i + 1], (6, 6, 6, 6), mode="replicate")
        ref = torch.nn.functional.conv2d(padded, k2[None, None])
        assert torch.allclose(out[i : i + 1], ref, atol=1e-5)


def test_noise_level_in_intensity_units():
    x, _ = phantom(b=32)
    v = SSLAugment(**{**SSL_IDENTITY, "noise_p": 1.0, "noise_std": (0.2, 0.4)}).view(x, gen())
    level = (v - x).flatten(1).std(1)
    assert (level > 0.17).all() and (level < 0.43).all()
    assert level.max() - level.min() > 0.05


@pytest.mark.parametrize("name", ["ssl", "seg"])
def test_no_blank_or_nan_at_strong_settings(name):
    x, m = phantom(b=16)
    uint16_like = (x - x.amin()) * 1000.0  # raw scanner-like range: must not blank either
    const = torch.full((2, 1, 32, 40), -1.3)  # a blank input must not give NaN
    for images, masks in ((x, m), (uint16_like, m), (const, m[:2])):
        for seed in range(3):
            if name == "ssl":
                outs = SSLAugment(**SSL_STRONG)(images, gen(seed))
            else:
                outs = (SegAugment(**SEG_STRONG, output_size=24)(images, masks, gen(seed))[0],)
            for out in outs:
                assert torch.isfinite(out).all()
                if images is not const:
                    spread = out.flatten(1).std(1) / images.flatten(1).std(1)
                    assert (spread > 1e-2).all(), "an augmentation produced a blank image"


# ----------------------------------------------------------------------- parameters
@pytest.mark.parametrize(
    "cls,kwargs,name",
    [
        (SSLAugment, {"scale": (0.0, 1.0)}, "scale"),
        (SSLAugment, {"scale": (0.5, 1.5)}, "scale"),
        (SSLAugment, {"scale": (0.9, 0.5)}, "scale"),
        (SSLAugment, {"scale": 0.5}, "scale"),
        (SSLAugment, {"ratio": (0.0, 2.0)}, "ratio"),
        (SSLAugment, {"hflip_p": 1.5}, "hflip_p"),
        (SSLAugment, {"blur_p": (1.0, -0.1)}, "blur_p"),
        (SSLAugment, {"blur_p": (1.0, 0.1, 0.5)}, "blur_p"),
        (SSLAugment, {"jitter_p": float("nan")}, "jitter_p"),
        (SSLAugment, {"brightness": -0.1}, "brightness"),
        (SSLAugment, {"contrast": float("inf")}, "contrast"),
        (SSLAugment, {"gamma": (0.0, 1.5)}, "gamma"),
        (SSLAugment, {"blur_sigma": (0.0, 2.0)}, "blur_sigma"),
        (SSLAugment, {"noise_std": (-0.1, 0.1)}, "noise_std"),
        (SSLAugment, {"output_size": (0, 32)}, "output_size"),
        (SSLAugment, {"rotation": 270.0}, "rotation"),
        (SegAugment, {"scale": (-1.0, 1.0)}, "scale"),
        (SegAugment, {"translate": 1.5}, "translate"),
        (SegAugment, {"vflip_p": 2}, "vflip_p"),
        (SegAugment, {"blur_p": (1.0, 0.1)}, "blur_p"),
        (SegAugment, {"output_size": 22.5}, "output_size"),
        (SegAugment, {"noise_p": True}, "noise_p"),
    ],
)
def test_bad_parameters_raise_parameter_error(cls, kwargs, name):
    with pytest.raises(ParameterError, match=name) as info:
        cls(**kwargs)
    assert "[" in str(info.value) or "(" in str(info.value)  # names the allowed range / form


def test_bad_inputs_raise_parameter_error():
    x, m = phantom(b=2)
    with pytest.raises(ParameterError, match="generator"):
        SSLAugment()(x, 0)
    with pytest.raises(ParameterError, match="images"):
        SSLAugment()(x[:, 0], gen())
    with pytest.raises(ParameterError, match="images"):
        SSLAugment()(x.long(), gen())
    with pytest.raises(ParameterError, match="masks"):
        SegAugment()(x, m[:, :-1], gen())
    with pytest.raises(ParameterError, match="masks"):
        SegAugment()(x, m.float(), gen())
    with pytest.raises(ParameterError, match="index"):
        SSLAugment().view(x, gen(), 2)
    with pytest.raises(TypeError):
        SSLAugment(0.5)  # keyword-only: positional values are too easy to misplace


def test_describe_and_config_list_every_parameter():
    aug = SSLAugment(blur_p=(1.0, 0.1))
    text = aug.describe()
    for key in ("scale", "ratio", "hflip_p", "jitter_p", "brightness", "contrast", "gamma", "blur_p", "noise_std"):
        assert key in text and key in aug.config() and key in repr(aug)
    assert aug.config()["blur_p"] == (1.0, 0.1) and SSLAugment(blur_p=0.5).config()["blur_p"] == (0.5, 0.5)
    assert "translate" in SegAugment().describe() and SegAugment().config()["output_size"] is None
    assert SegAugment(output_size=224).output_size == (224, 224)


def test_cpu_generator_with_tensors_on_the_generators_device_or_not():
    x, m = phantom(b=2)
    out = SegAugment()(x, m, torch.Generator(device="cpu").manual_seed(0))
    assert out[0].device == x.device
    if torch.cuda.is_available():  # CPU generator, GPU tensors, and a GPU generator
        v_cpu_gen = SSLAugment().view(x.cuda(), gen(0))
        assert v_cpu_gen.is_cuda
        cuda_gen = torch.Generator(device="cuda").manual_seed(0)
        a = SSLAugment().view(x.cuda(), cuda_gen)
        b = SSLAugment().view(x.cuda(), torch.Generator(device="cuda").manual_seed(0))
        assert torch.equal(a, b)


def test_equalize_leaves_no_intensity_statistic():
    """After equalisation (gamma 1) a CT-like image with clipped, tied values and a noisy MR-like one
    have the same standardised histogram; the spatial order of the pixels is kept."""
    gen = torch.Generator().manual_seed(0)
    ct = torch.randn(1, 1, 32, 32, generator=gen).clamp(-0.5, 0.5) * 2          # half the pixels tied at ±1
    mr = (torch.randperm(1024, generator=gen).float() ** 2 / 1e5).view(1, 1, 32, 32)  # skewed, distinct
    x = torch.cat([ct, mr])
    aug = SSLAugment(scale=(1.0, 1.0), hflip_p=0.0, jitter_p=0.0, gamma_p=0.0, blur_p=0.0, noise_p=0.0,
                     equalize_p=1.0, gamma=(1.0, 1.0))
    out = aug.view(x, torch.Generator().manual_seed(1))
    z = [(o - o.mean()) / o.std(unbiased=False) for o in out]
    torch.testing.assert_close(z[0].flatten().sort().values, z[1].flatten().sort().values, atol=1e-5, rtol=0)
    before = [(a - a.mean()) / a.std(unbiased=False) for a in x]
    assert not torch.allclose(before[0].flatten().sort().values, before[1].flatten().sort().values, atol=0.1)
    # the order of distinct values is kept (ranks), and each image keeps its mean and std
    flat_in, flat_out = mr.flatten(), out[1].flatten()
    assert torch.equal(flat_in.argsort(), flat_out.argsort())
    torch.testing.assert_close(out.mean(dim=(1, 2, 3)), x.mean(dim=(1, 2, 3)), atol=1e-4, rtol=1e-4)
    # probability 0 is the identity, per view
    off = SSLAugment(scale=(1.0, 1.0), hflip_p=0.0, jitter_p=0.0, gamma_p=0.0, blur_p=0.0, noise_p=0.0,
                     equalize_p=(0.0, 1.0))
    v1, v2 = off(x, torch.Generator().manual_seed(2))
    torch.testing.assert_close(v1, x)
    assert not torch.allclose(v2, x)
    with pytest.raises(ParameterError, match="equalize_p"):
        SSLAugment(equalize_p=1.5)
