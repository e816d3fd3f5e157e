"""iss3d data: the multi-view HDF5 format, importers, the synthetic shape world, datasets.

No Lightning and no learned model: the DataModule over these datasets is
``iss3d.train.datamodule``.
"""
