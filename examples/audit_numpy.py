"""Audit an in-memory model on numpy arrays with layerleak's Python API (as in a notebook).

    python examples/audit_numpy.py [OUT]

A small MLP is trained here on 300 chosen digits (scikit-learn's bundled set), the members; 300 other digits are
the non-members. ``audit`` runs the whole pipeline (per-sample gradient statistics, the attacks, the exact Shapley
sweep over the layers, the report) on a local Ray instance and returns the result as pandas DataFrames.
"""

import sys

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

from layerleak import audit


class MLP(nn.Module):
    """Defined in this script (``__main__``): audit() pickles it by value, so the Ray workers rebuild it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.out = nn.Linear(64, 128), nn.Linear(128, 64), nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def main(out: str = "runs/example-api") -> None:
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)  # the model's inputs exactly as it sees them
    order = np.random.default_rng(0).permutation(len(y))
    members, nonmembers = order[:300], order[300:600]

    torch.manual_seed(0)
    model = MLP()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    xm, ym = torch.from_numpy(x[members]), torch.from_numpy(y[members])
    for _ in range(300):  # full batch until it fits its members
        opt.zero_grad()
        nn.functional.cross_entropy(model(xm), ym).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        acc = lambda ids: (model(torch.from_numpy(x[ids])).argmax(1).numpy() == y[ids]).mean()
        print(f"train accuracy {acc(members):.3f}, non-member accuracy {acc(nonmembers):.3f}")

    result = audit(model, (x[members], y[members]), (x[nonmembers], y[nonmembers]), out=out)
    print("\n".join(result.answer))
    print(result.shapley[["player", "params", "shapley", "shapley_low", "shapley_high", "flagged"]].to_string(index=False))
    print(result.attacks[["attack", "auc", "auc_low", "auc_high"]].to_string(index=False))
    print(f"{len(result.scores)} per-sample scores; report: {result.paths['html']}")


if __name__ == "__main__":
    main(*sys.argv[1:])
