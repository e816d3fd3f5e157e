"""iss3d: text to coloured 3D shapes the ISS way (Image as Stepping Stone, Liu et al., ICLR 2023).

The sub-packages install from the project's top-level folders: ``iss3d.data`` (formats,
importers, the synthetic world, datasets), ``iss3d.models`` (networks, renderers, meshes,
losses, the shipped weights), ``iss3d.train`` (Lightning training of each stage) and
``iss3d.infer`` (stage 2, stylization, export, evaluation and the ``iss3d`` command line);
``iss3d.configs`` holds the YAML presets. ``iss3d.core`` holds the generic utilities
below all of them (UserError, strict configs and YAML presets, atomic outputs, the device
choice, the installed files); the layers import only downwards: core < data < models < train
< infer.
"""

__version__ = "0.1.0"

__all__ = ["Generator", "__version__"]


def __getattr__(name: str):
    """``iss3d.Generator`` (:class:`iss3d.infer.generator.Generator`), imported on first use so
    that ``import iss3d`` stays light."""
    if name == "Generator":
        from iss3d.infer.generator import Generator

        return Generator
    raise AttributeError(f"module 'iss3d' has no attribute {name!r}")
