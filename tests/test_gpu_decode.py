"""harness.data.gpu_decode: torchvision's decode_jpeg + v2 crop on the CPU against PIL, and on CUDA
(nvJPEG) against the CPU path, where a CUDA device exists."""

import numpy as np
import open_clip
import pytest
import torch

from harness.bench import jpeg_world
from harness.data import gpu_decode
from harness.data.transforms import decode_image, to_uint8_chw

CUDA, WHY_NOT = gpu_decode.cuda_decode_available()


@pytest.fixture(scope="module")
def jpegs():
    rng = np.random.default_rng(5)
    return [jpeg_world.make_image(rng)[0] for _ in range(4)]


@pytest.fixture(scope="module")
def crop():
    return open_clip.image_transform(224, is_train=True).transforms[0]


def within(a: torch.Tensor, b: torch.Tensor, tolerance: dict) -> None:
    d = (a.cpu().int() - b.cpu().int()).abs().float().flatten()
    assert d.mean() <= tolerance["mean_abs"], d.mean()
    assert torch.quantile(d[::3], 0.999) <= tolerance["p999_abs"]


def test_the_cpu_path_draws_torchvisions_crops_and_matches_pil(jpegs, crop):
    torch.manual_seed(0)
    got = gpu_decode.decode_crop_batch(jpegs, crop, "cpu")
    torch.manual_seed(0)
    boxes = gpu_decode.crop_boxes(jpegs, crop)
    torch.manual_seed(0)
    want = torch.stack([to_uint8_chw(crop(decode_image(data))) for data in jpegs])
    assert got.shape == (4, 3, 224, 224) and got.dtype == torch.uint8 and len(set(boxes)) == 4
    within(got, want, gpu_decode.TOLERANCE)


@pytest.mark.skipif(not CUDA, reason=f"GPU decode needs CUDA: {WHY_NOT}")
def test_the_cuda_path_matches_the_cpu_path(jpegs, crop):
    torch.manual_seed(0)
    on_gpu = gpu_decode.decode_crop_batch(jpegs, crop, "cuda")
    torch.manual_seed(0)
    on_cpu = gpu_decode.decode_crop_batch(jpegs, crop, "cpu")
    assert on_gpu.device.type == "cuda" and on_gpu.shape == on_cpu.shape
    within(on_gpu, on_cpu, gpu_decode.TOLERANCE)
