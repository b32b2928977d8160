"""SPOL networks: the backbone registry (network/registry.py; the backbones, ResNet-18..152, in
network/backbones/), the MFF-Net (shared by every localisation stage) and the ImageNet weight files
(network/weights.py); network/classifier.py has the cls stages' classifiers."""
from network.backbones import BACKBONES, get_backbone
from network.backbones.resnet import ResNet, build_resnet
from network.mffnet import MFFNet, build_mffnet, load_mffnet
from network.weights import load_backbone_weights

__all__ = ["MFFNet", "build_mffnet", "load_mffnet", "BACKBONES", "get_backbone", "ResNet", "build_resnet",
           "load_backbone_weights"]
