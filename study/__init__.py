"""optstudy: a reproducibility study of optimizer, BatchNorm, init and LR-schedule choices.

Library layers (DeepOBS-style):
- what a run is: :mod:`study.data`, :mod:`study.models`, :mod:`study.optim`, :mod:`study.config`
- how it is run: :mod:`study.train` (loop), :mod:`study.tracking` (MLflow)
- how results are read: :mod:`study.stats`, :mod:`study.plots`
"""

__version__ = "0.1.0"
