"""Lightning systems, the DataModule (``datamodule``), run folders and the trainer (``runs``), and
the entry points of the training stages: SVR, CLIP, stage 1, E_I + D, PointNet."""
