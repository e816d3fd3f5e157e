"""``iss3d evaluate``: every method over a prompt set, measured against a reference dataset.

The modules, each importing only those listed above it:

- :mod:`iss3d.infer.evaluation.metrics`: the metric functions (Frechet distance for FID and
  FPD, the FID feature networks, PointNet features, CLIP R-precision, lattice IoU, colour
  accuracy), on arrays and tensors, with no knowledge of runs or files.
- :mod:`iss3d.infer.evaluation.methods`: the methods compared (``full``, the ablations, E_I + D,
  pure CLIP), each turning one prompt into one shape, and the models they need.
- :mod:`iss3d.infer.evaluation.items`: one (method, prompt, sample) (``Item``), its seed
  and its ``.npz`` file under ``OUT/items/`` (save and load).
- :mod:`iss3d.infer.evaluation.report`: from the item files to ``results.json``,
  ``results.csv``, ``report.md`` and ``plots/``.
- :mod:`iss3d.infer.evaluation.run`: the command itself: the evaluate config, checking the
  inputs and loading the models (``prepare``), rendering each shape, the output folder,
  generating the items (sharded, resumable, ``--workers`` subprocesses), then the report.

The command line (``iss3d evaluate``, :mod:`iss3d.infer.cli.evaluate`) calls
:func:`iss3d.infer.evaluation.run.evaluate`. Nothing is imported here, so importing one module
loads only what it needs.
"""
