"""hubkiln: bake ready JupyterHub virtual machine images from a YAML course profile."""

__version__ = "0.1.0"
