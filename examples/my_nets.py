"""Your own architecture for `styleforge classify train --model examples/my_nets.py:LeNet`.

A class whose ``__init__`` takes any of ``num_classes``, ``in_channels``, ``input_shape`` and
``activation`` gets them from the data and the command line; other arguments come from
``--option KEY=VALUE`` (here ``--option width=12``).
"""

from torch import nn


class LeNet(nn.Module):
    """LeCun et al.'s LeNet-5 (1998) with max pooling and ReLU, for 28x28 (or 32x32) images."""

    def __init__(self, num_classes: int = 10, input_shape: tuple = (1, 28, 28), width: int = 6) -> None:
        super().__init__()
        channels, height, width_px = input_shape
        self.features = nn.Sequential(
            nn.Conv2d(channels, width, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),  # 28 -> 14
            nn.Conv2d(width, 16, 5), nn.ReLU(), nn.MaxPool2d(2),                   # 14 -> 10 -> 5
        )
        flat = 16 * ((height // 2 - 4) // 2) * ((width_px // 2 - 4) // 2)
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(flat, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, num_classes),
        )

    def forward(self, x):
        return self.head(self.features(x))
