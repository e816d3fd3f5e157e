"""iss3d.core: the generic utilities every layer uses, below all of them.

``errors`` (:class:`~iss3d.core.errors.UserError`, the one exception for a user's mistakes),
``config`` (strict dataclass configs and the YAML files, presets and ``key=value`` overrides
they are read from), ``atomic`` (outputs that appear only when complete, strict JSON),
``device`` (``--device auto|cpu|cuda`` resolved in one place) and ``resources`` (the files
installed with the package: YAML presets, shipped weights).

It imports nothing from ``iss3d.data``, ``iss3d.models``, ``iss3d.train`` or ``iss3d.infer``:
the layers above import it, never the other way round.
"""
