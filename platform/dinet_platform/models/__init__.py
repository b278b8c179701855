"""Networks (plain PyTorch): DINet, DINet with attention, discriminators, the sync expert."""

from dinet_platform.models.dinet import DINet, ReferenceFeatures
from dinet_platform.models.dinet_attention import DINetWithAttention
from dinet_platform.models.discriminator import Discriminator, stack_clip
from dinet_platform.models.factory import (
    Discriminators,
    build_discriminators,
    build_generator,
    build_syncnet,
    count_parameters,
)
from dinet_platform.models.syncnet import SyncNet, sync_loss
from dinet_platform.models.weights import LoadReport, load_generator_weights, read_state_dict

__all__ = [
    "DINet",
    "DINetWithAttention",
    "Discriminator",
    "Discriminators",
    "LoadReport",
    "ReferenceFeatures",
    "SyncNet",
    "build_discriminators",
    "build_generator",
    "build_syncnet",
    "count_parameters",
    "load_generator_weights",
    "read_state_dict",
    "stack_clip",
    "sync_loss",
]
