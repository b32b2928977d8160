"""Every backbone of the MFF-Net, one module each (resnet.py: ResNet-18..152; vgg.py: VGG16 and inception.py:
InceptionV3, as wsolevaluation defines them for CAM). Importing this package imports all of its modules, and each
registers its backbones (network/registry.py), so a new backbone is one new file here: an `nn.Module` whose call
returns its four levels and a `register(Backbone(...))` call, as resnet.py does. It is then a
`--backbone` choice of every stage and tool, and tests/test_backbones.py checks it against its entry. Look
backbones up through this package (not network.registry), so that the table is complete."""
import importlib
import pkgutil

from network.registry import BACKBONES, Backbone, get_backbone, register

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["BACKBONES", "Backbone", "get_backbone", "register"]
