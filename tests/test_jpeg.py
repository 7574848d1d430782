"""The fused JPEG decode + RandomResizedCrop (harness.data.jpeg) against torchvision's transform on
PIL's full decode, on ImageNet-like JPEGs from the decode benchmark's generator."""

import io

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from harness.bench import jpeg_world
from harness.data import jpeg
from harness.data.transforms import decode_image, split, to_uint8_chw


@pytest.fixture(scope="module")
def jpegs():
    rng = np.random.default_rng(3)
    return [jpeg_world.make_image(rng)[0] for _ in range(5)]


@pytest.fixture(scope="module")
def crop():
    return open_clip.image_transform(224, is_train=True).transforms[0]  # 224, scale (0.9, 1), bicubic


def reference(crop, data, seed):
    torch.manual_seed(seed)
    return to_uint8_chw(crop(decode_image(data)))


def fused(crop, data, seed, decoder=jpeg.DEFAULT):
    torch.manual_seed(seed)
    return jpeg.FusedCrop(crop, decoder)(data)


def diff(a, b):
    return (a.int() - b.int()).abs().float()


def test_the_default_path_is_within_tolerance_of_torchvision_on_pil(jpegs, crop):
    d = torch.cat([diff(fused(crop, data, i), reference(crop, data, i)).flatten() for i, data in enumerate(jpegs)])
    assert d.mean() <= jpeg.TOLERANCE["mean_abs"] and d.max() <= jpeg.TOLERANCE["max_abs"]


def test_the_crop_is_the_one_torchvision_draws(jpegs, crop):
    # Other seeds draw other boxes, far more than the tolerance apart: the match above is the crop's.
    a = fused(crop, jpegs[1], 0)
    assert max(diff(a, reference(crop, jpegs[1], seed)).mean() for seed in range(1, 6)) > 5 * jpeg.TOLERANCE["mean_abs"]


@pytest.mark.parametrize("decoder", sorted(jpeg.DECODERS))
def test_every_decoder_keeps_the_crop_and_never_upsamples(jpegs, crop, decoder):
    if not jpeg.decoder_available(decoder):
        pytest.skip(f"{decoder} not importable here (PyTurboJPEG needs Debian's libturbojpeg0)")
    for i, data in enumerate(jpegs):
        out = fused(crop, data, i, decoder)
        assert out.shape == (3, 224, 224) and out.dtype == torch.uint8
        assert diff(out, reference(crop, data, i)).mean() < 12  # the same picture, scaled IDCT or not


def test_the_scale_is_the_smallest_that_keeps_the_crop():
    eighths = tuple(k / 8 for k in range(1, 9))
    assert jpeg._scale(500, 375, (0, 0, 350, 350), (224, 224), eighths) == 0.75  # 5/8 would give 218 < 224
    assert jpeg._scale(2000, 1500, (0, 0, 1400, 1400), (224, 224), eighths) == 0.25
    assert jpeg._scale(300, 200, (0, 0, 190, 190), (224, 224), eighths) == 1.0  # smaller than the crop: full size


def test_open_clips_train_transform_takes_the_fused_path_and_eval_does_not():
    assert split(open_clip.image_transform(224, is_train=True)).jpeg is not None
    assert split(open_clip.image_transform(224, is_train=False)).jpeg is None
    assert split(open_clip.image_transform(224, is_train=True), fuse_jpeg=False).jpeg is None


def test_png_bytes_take_the_pil_path(crop):
    buf = io.BytesIO()
    Image.fromarray(np.full((300, 300, 3), 77, np.uint8)).save(buf, "PNG")
    fast = split(open_clip.image_transform(224, is_train=True))
    assert (fast.encoded(buf.getvalue()) == 77).all()


def test_unknown_decoder_names_the_valid_ones(crop):
    with pytest.raises(ValueError, match="valid: torchvision, simplejpeg"):
        jpeg.FusedCrop(crop, "nope")


def test_the_generator_matches_imagenets_figures(tmp_path):
    shards = jpeg_world.generate(tmp_path, 24, per_shard=10)
    assert len(shards) == 3 and jpeg_world.generate(tmp_path, 24, per_shard=10) == shards  # cached
    facts = jpeg_world.stats(shards)
    assert facts["images"] == 24
    assert 90 <= facts["quality_min"] <= facts["quality_max"] <= 96
    assert 380 < facts["width"] < 560 and 300 < facts["height"] < 470  # 469 x 387, 24 draws
    assert 60 < facts["kbytes"] < 170  # ~110 KB


def test_quality_is_read_back_from_the_quantisation_table():
    for quality in (50, 90, 96):
        buf = io.BytesIO()
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(
            buf, "JPEG", quality=quality)
        assert jpeg_world.estimate_quality(Image.open(buf)) == quality
