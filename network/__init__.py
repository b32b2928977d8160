"""SPOL networks: torchvision-layout ResNet backbones and the MFF-Net head (shared by every stage)."""
from network.mffnet import MFFNet, build_mffnet, load_mffnet
from network.resnet import BACKBONES, ResNet, build_resnet, load_backbone_weights

__all__ = ["MFFNet", "build_mffnet", "load_mffnet", "BACKBONES", "ResNet", "build_resnet", "load_backbone_weights"]
