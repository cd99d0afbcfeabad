"""Benchmarks behind ``layerleak bench NAME``: each module here has ``main(argv) -> int``; BENCHES names them."""

BENCHES = {
    "extract": "per-sample gradient statistics: the project's paths against a one-sample loop",
    "sweep": "coalition fitting: the batched fitter against a serial scikit-learn loop",
    "calibration": "the uncertainty chain on simulated audits: interval coverage, quiet null tables",
    "train": "target training: layerleak's train_epochs against a plain PyTorch loop (and channels-last)",
    "pooled": "the pooled metrics over several targets on simulated populations: two-way bootstrap coverage",
}
