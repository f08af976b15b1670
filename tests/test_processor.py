import json

import numpy as np
import pytest
import torch
from PIL import Image

from vla import ImageProcessor
from vla.processor import DINO_MEAN, DINO_STD


def test_hand_computed_pixels_at_224():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
    pixels = ImageProcessor()(image)
    assert pixels.shape == (1, 6, 224, 224) and pixels.dtype == torch.float32
    y, x = 17, 200
    for c in range(3):
        value = image[y, x, c] / 255.0
        assert pixels[0, c, y, x].item() == pytest.approx((value - DINO_MEAN[c]) / DINO_STD[c], abs=1e-5)
        assert pixels[0, 3 + c, y, x].item() == pytest.approx((value - 0.5) / 0.5, abs=1e-5)


def test_official_dino_stats_are_bf16_rounded_imagenet():
    imagenet_mean, imagenet_std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    assert torch.equal(imagenet_mean.bfloat16().float(), torch.tensor(DINO_MEAN))
    assert torch.equal(imagenet_std.bfloat16().float(), torch.tensor(DINO_STD))


def test_other_sizes_are_squashed_with_bicubic():
    image = np.random.default_rng(1).integers(0, 256, (256, 320, 3), dtype=np.uint8)
    expected = np.asarray(Image.fromarray(image).resize((224, 224), Image.Resampling.BICUBIC)) / 255.0
    pixels = ImageProcessor()([image, Image.fromarray(image)])
    assert pixels.shape == (2, 6, 224, 224)
    np.testing.assert_allclose(pixels[1, 3:].permute(1, 2, 0).numpy(), (expected - 0.5) / 0.5, atol=1e-5)
    assert torch.equal(pixels[0], pixels[1])


def test_preprocessor_config_round_trip_prefers_tvf_params(tmp_path):
    config = ImageProcessor().to_preprocessor_config()
    assert config["means"][0] == [0.485, 0.456, 0.406]  # nominal, as the official file stores them
    config["tvf_normalize_params"][0]["mean"] = [0.1, 0.2, 0.3]
    path = tmp_path / "preprocessor_config.json"
    path.write_text(json.dumps(config))
    processor = ImageProcessor.from_preprocessor_config(path)
    assert processor.means[0] == (0.1, 0.2, 0.3) and processor.stds[0] == DINO_STD


def test_bad_inputs():
    with pytest.raises(ValueError, match="uint8"):
        ImageProcessor()(np.zeros((224, 224, 3), np.float32))
    with pytest.raises(ValueError, match="letterbox"):
        ImageProcessor.from_preprocessor_config({"image_resize_strategy": "letterbox"})


def _mixed_images():
    rng = np.random.default_rng(3)
    return [rng.integers(0, 256, (224, 224, 3), dtype=np.uint8), rng.integers(0, 256, (160, 200, 3), dtype=np.uint8)]


def test_pixel_values_on_the_cpu_are_the_call():
    processor, images = ImageProcessor(), _mixed_images()
    assert torch.equal(processor.pixel_values(images, "cpu"), processor(images))


@pytest.mark.gpu
def test_pixel_values_normalized_on_the_gpu_equal_the_host_path():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    processor, images = ImageProcessor(), _mixed_images()
    on_device = processor.pixel_values(images, "cuda")
    assert on_device.device.type == "cuda"
    torch.testing.assert_close(on_device.cpu(), processor(images), rtol=0, atol=0)
