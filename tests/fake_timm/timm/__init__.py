"""A stand-in for timm's model factory (tests only): real timm needs torchvision, which does not load
beside this project's CPU torch. It offers the two calls the project uses, `create_model(name,
pretrained, num_classes)` and `model.get_classifier()`, so `--arch timm:<name>` can be tested."""
import torch.nn as nn


class TinyNet(nn.Module):
    def __init__(self, num_classes: int):
        super().__init__()
        self.conv_stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.classifier = nn.Linear(8, num_classes)

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def forward(self, x):
        return self.classifier(self.bn1(self.conv_stem(x)).relu().mean((2, 3)))


def create_model(name: str, pretrained: bool = False, num_classes: int = 1000) -> nn.Module:
    if name != "tinynet" or pretrained:
        raise RuntimeError(f"fake timm: only create_model('tinynet', pretrained=False), not {name!r}")
    return TinyNet(num_classes)
