"""layerleak's library: data, models, training, per-sample gradient statistics, attacks, Shapley values.

Plain functions and classes; nothing here imports Ray (the orchestration lives in ``flows``).
"""

__version__ = "0.1.0"
