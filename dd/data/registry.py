"""The dataset registry: `DATASETS.get(name)(root=...)` -> ImageDataset."""
from dd.registry import Registry

DATASETS: Registry = Registry("dataset")
