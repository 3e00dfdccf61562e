"""The method registry: name -> Method subclass (each with a typed Config dataclass)."""
from dd.registry import Registry

METHODS: Registry = Registry("method")
