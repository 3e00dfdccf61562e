"""The model registry: every constructor takes (channels, num_classes, image_size, **options)."""
from dd.registry import Registry

MODELS: Registry = Registry("model")
