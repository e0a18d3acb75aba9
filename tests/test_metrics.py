import torch
import torch.nn as nn

from core.data import Split
from core.metrics import ba_asr


class PixelOracle(nn.Module):
    """Predicts the class written in pixel (0, 0) of channel 0 (value/255), or 3 if the corner is white."""

    def forward(self, x):
        cls = (x[:, 0, 0, 0] * 255).round().long()
        cls = torch.where(x[:, 0, -1, -1] > 0.99, torch.full_like(cls, 3), cls)
        return nn.functional.one_hot(cls, 5).float()


def test_ba_and_asr_count_every_sample_exactly():
    n = 1003  # not a multiple of the batch size: the last partial batch must count
    labels = torch.arange(n) % 5
    images = torch.zeros(n, 3, 8, 8, dtype=torch.uint8)
    images[:, 0, 0, 0] = labels.to(torch.uint8)
    images[:7, 0, 0, 0] = (labels[:7] + 1) % 5  # 7 wrong predictions
    poisoned = images[labels != 3].clone()
    poisoned[:500, 0, -1, -1] = 255  # 500 of the 803 non-target images carry a working trigger
    m = ba_asr(PixelOracle(), Split(images, labels, (), ""), Split(poisoned, torch.full((803,), 3), (), ""),
               batch_size=100)
    assert (m["BA_correct"], m["BA_total"]) == (n - 7, n)
    assert (m["ASR_hits"], m["ASR_total"]) == (500, 803)
    assert abs(m["ASR"] - 100 * 500 / 803) < 1e-9
