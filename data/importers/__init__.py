"""Importers from other datasets' layouts into the iss3d multi-view HDF5 format."""

from iss3d.data.importers.blender import import_blender
from iss3d.data.importers.dvr import import_dvr

__all__ = ["import_blender", "import_dvr"]
