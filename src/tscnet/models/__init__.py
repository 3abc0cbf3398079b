"""Models: our CIFAR ResNets and access to timm's and torchvision's ResNet families."""

from .cifar_resnet import CIFAR_MODELS, CifarResNet, cifar_resnet
from .registry import create_model, list_models, register_source

__all__ = ["CIFAR_MODELS", "CifarResNet", "cifar_resnet", "create_model", "list_models", "register_source"]
