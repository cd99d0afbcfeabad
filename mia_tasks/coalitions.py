"""Fit the logistic-regression attack on thousands of layer coalitions at once.

A coalition is a set of feature columns (the 7 statistics of each of its layers). Every coalition's
attack is the model of :class:`mia_tasks.attacks.LogisticAttack`: features standardised with
attack-train's mean/std, then L2 logistic regression with an unpenalised intercept,

    minimise  C · Σ_n logloss(y_n, x_n·w + b) + ½‖w‖²          (scikit-learn's lbfgs objective;
                                                               optionally ½ Σ_j penalty_j w_j²)

Instead of one lbfgs fit per coalition, a chunk of coalitions takes full-batch quasi-Newton steps
together (torch; a GPU with ``device="cuda"``):

- logits and gradients of the whole chunk are two GEMMs with the feature matrix (each
  coalition's weights scattered into a row that is zero outside it);
- the linear algebra runs in each coalition's own coordinates (chunks hold coalitions of equal
  width, narrower ones padded with identity rows), so factorising costs O(|S|³), not O(D³);
- the first Hessian is free: at w = 0 every p = ½, so it is ¼·C·XᵀX restricted to the coalition;
- a coalition whose step did not halve its gradient gets its exact Hessian back: one GEMM
  [k, N] x [N, (D+1)(D+2)/2] of the curvatures p(1-p) against precomputed column products;
  otherwise BFGS updates the inverse in place;
- the [k, N] work runs in float32 until the gradient is small, then float64 finishes to ``tol``
  (the precision of the last gradients decides where the fit stops, not that of the steps);
- an Armijo line search keeps every objective decreasing (separable data, collinear columns:
  the penalty keeps every Hessian positive definite).

Metrics on attack-eval are batched too, with the conventions of :mod:`mia_tasks.metrics`: a
sample is predicted a member when its score is >= 0, tied scores move together on the ROC curve.
"""

from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np
import torch

from .errors import LayerleakError
from .metrics import LOW_FPRS

COALITION_METRICS = ("accuracy", "balanced_accuracy", "far", "auc", *LOW_FPRS)  # what fit_coalitions returns per coalition
_FPR_SLACK = 1e-12  # as mia_tasks.metrics: an FPR equal to the target up to rounding counts as within it
_REFRESH_RATIO = 0.5  # recompute a coalition's exact Hessian when a step shrank its gradient less than 2x
_SWITCH_TOL = 1e-6  # float32 steps until the (scikit-learn-scaled) gradient is this small, then float64


def coalition_mask(coalition_cols: Sequence[Sequence[int]] | np.ndarray, n_features: int) -> np.ndarray:
    """Boolean matrix [K, D] from a list of column-index arrays or a boolean matrix; no empty rows."""
    if isinstance(coalition_cols, np.ndarray) and coalition_cols.dtype == bool:
        mask = coalition_cols
        if mask.ndim != 2 or mask.shape[1] != n_features:
            raise LayerleakError(f"coalition mask must have shape [K, {n_features}], got {mask.shape}")
    else:
        mask = np.zeros((len(coalition_cols), n_features), dtype=bool)
        for k, cols in enumerate(coalition_cols):
            cols = np.asarray(cols, dtype=np.int64).ravel()
            if cols.size and (cols.min() < 0 or cols.max() >= n_features):
                raise LayerleakError(f"coalition {k} names column {int(cols.max() if cols.max() >= n_features else cols.min())}, "
                                     f"but there are {n_features} feature columns")
            mask[k, cols] = True
    empty = np.flatnonzero(~mask.any(axis=1))
    if empty.size:
        raise LayerleakError(f"coalition {int(empty[0])} has no feature columns (v(empty) is not fitted)")
    return mask


def standardise(X_train: np.ndarray, X_eval: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both sets scaled with attack-train's mean and (population) std, as LogisticAttack does.

    Non-finite entries count as missing: they are left out of the mean/std and become 0 after
    scaling; a constant (or all-missing) column keeps scale 1.
    """
    Xt = np.where(np.isfinite(X_train), X_train, np.nan).astype(np.float64)
    Xe = np.where(np.isfinite(X_eval), X_eval, np.nan).astype(np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
        mean = np.nan_to_num(np.nanmean(Xt, axis=0), nan=0.0)
        scale = np.nanstd(Xt, axis=0)
    scale = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
    return (np.nan_to_num((Xt - mean) / scale, nan=0.0), np.nan_to_num((Xe - mean) / scale, nan=0.0))


def _check_xy(X: np.ndarray, y: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y).ravel()
    if X.ndim != 2 or X.shape[0] != y.size:
        raise LayerleakError(f"{what}: features {X.shape} and {y.size} member labels do not match")
    if not np.isin(y, (0, 1)).all():
        raise LayerleakError(f"{what}: member labels must be 0/1")
    if np.unique(y).size < 2:
        raise LayerleakError(f"{what} needs both members and non-members")
    return X, y.astype(np.float64)


class _Problem:
    """Standardised attack-train data on the device, and the column products the Hessians reuse."""

    def __init__(self, Xt: np.ndarray, yt: np.ndarray, C: float, device: torch.device, memory_bytes: int):
        dd = dict(dtype=torch.float64, device=device)
        n, d = Xt.shape
        self.n, self.d, self.C, self.device = n, d, C, device
        self.X1 = torch.cat([torch.as_tensor(Xt, **dd), torch.ones(n, 1, **dd)], dim=1)  # intercept = column d
        y = torch.as_tensor(yt, **dd)
        # [N]-sized data in both precisions: float32 for the early steps, float64 to finish.
        self.data = {dt: dict(X1=self.X1.to(dt), X1T=self.X1.T.contiguous().to(dt), y=y.to(dt),
                              sign=(1.0 - 2.0 * y).to(dt))  # logloss(y, z) = softplus(sign · z)
                     for dt in (torch.float32, torch.float64)}
        self.gram = self.X1.T @ self.X1
        # Column products x_i x_j (i <= j), float32, for the Hessian GEMM (built per block if too large),
        # and where the product of columns (i, j) sits in a packed row.
        self.iu = torch.triu_indices(d + 1, d + 1, device=device)
        p = self.iu.shape[1]
        self.pidx = torch.empty(d + 1, d + 1, dtype=torch.int64, device=device)
        self.pidx[self.iu[0], self.iu[1]] = torch.arange(p, device=device)
        self.pidx[self.iu[1], self.iu[0]] = torch.arange(p, device=device)
        self.q_block = n if n * p * 4 <= memory_bytes // 2 else max(1, (memory_bytes // 4) // (p * 4))
        self.Q = self._products(0, n) if self.q_block == n else None

    def q_bytes(self) -> int:
        return 0 if self.Q is None else self.Q.numel() * 4

    def _products(self, lo: int, hi: int) -> torch.Tensor:
        X = self.X1[lo:hi].float()
        return torch.cat([X[:, i:i + 1] * X[:, i:] for i in range(X.shape[1])], dim=1)  # triu order

    def loss(self, Z: torch.Tensor, tmp: torch.Tensor | None = None) -> torch.Tensor:
        """C·Σ_n logloss per row of logits Z (float64 sums); ``tmp`` (Z's shape) is scratch, so nothing
        [k, N]-sized is allocated."""
        data = self.data[Z.dtype]
        u = torch.mul(Z, data["sign"], out=tmp) if tmp is not None else Z * data["sign"]
        # softplus(u) = (u + |u|)/2 + log1p(exp(-|u|)), in place.
        lin = u.sum(dim=1, dtype=torch.float64)
        lin += u.abs_().sum(dim=1, dtype=torch.float64)
        u.neg_().exp_().log1p_()
        return self.C * (0.5 * lin + u.sum(dim=1, dtype=torch.float64))

    def data_gradient(self, Z: torch.Tensor, tmp: torch.Tensor | None = None) -> torch.Tensor:
        """C·X1ᵀ(σ(z) − y) per row, over all D+1 columns, float64."""
        data = self.data[Z.dtype]
        r = torch.sigmoid(Z, out=tmp) if tmp is not None else torch.sigmoid(Z)
        r.sub_(data["y"])
        return self.C * (r @ data["X1"]).double()

    def logits(self, W: torch.Tensor, out: torch.Tensor | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
        """W [k, D+1] (float64) times the data, in the precision of ``out`` (or ``dtype``)."""
        dtype = out.dtype if out is not None else dtype
        return torch.matmul(W.to(dtype), self.data[dtype]["X1T"], out=out)

    def data_hessian(self, Z: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """C·Σ_n p(1-p) x_n x_nᵀ at logits Z [k, N], on the columns idx [k, m] of each row: [k, m, m]."""
        p = torch.sigmoid(Z)
        s = (p * (1.0 - p)).float()
        if self.Q is not None:
            packed = s @ self.Q
        else:
            packed = sum(s[:, lo:lo + self.q_block] @ self._products(lo, min(lo + self.q_block, self.n))
                         for lo in range(0, self.n, self.q_block))
        k, m = idx.shape
        where = self.pidx[idx[:, :, None], idx[:, None, :]].view(k, m * m)
        return self.C * packed.gather(1, where).view(k, m, m).double()


def _inverse(H: torch.Tensor) -> torch.Tensor:
    """Batched inverse of SPD matrices via Cholesky; a numerically singular one gets a growing ridge."""
    L, info = torch.linalg.cholesky_ex(H)
    bad = torch.nonzero(info).ravel()
    jitter = 1e-10
    while bad.numel():
        eye = torch.eye(H.shape[-1], dtype=H.dtype, device=H.device)
        scale = H[bad].diagonal(dim1=-2, dim2=-1).abs().amax(dim=-1).clamp_min(1.0)
        Lb, ib = torch.linalg.cholesky_ex(H[bad] + (jitter * scale)[:, None, None] * eye)
        L[bad] = Lb
        bad = bad[ib != 0]
        jitter *= 100
        if jitter > 1.0:
            raise LayerleakError("coalition fit: a Hessian could not be factored (NaN or infinite features?)")
    # (L Lᵀ)⁻¹ = L⁻ᵀ L⁻¹; torch.cholesky_inverse is far slower on batches of small matrices on CPU.
    eye = torch.eye(H.shape[-1], dtype=H.dtype, device=H.device).expand_as(H)
    Linv = torch.linalg.solve_triangular(L, eye, upper=False)
    return Linv.transpose(1, 2) @ Linv


class _Coalitions:
    """A chunk of coalitions in their own coordinates: row k works on columns idx[k, :m] of X1.

    Each row lists its feature columns, then the intercept, then padding (pad = 0) up to the
    chunk's widest coalition; padded coordinates get identity Hessian rows and zero gradient, so
    they stay at 0.
    """

    def __init__(self, mask: np.ndarray, d: int, device: torch.device, penalty: np.ndarray | None = None):
        k = mask.shape[0]
        width = mask.sum(axis=1)
        m = int(width.max()) + 1
        idx = np.full((k, m), d, dtype=np.int64)  # intercept, and the padding, point at column d
        idx[:, : m - 1] = np.argsort(~mask, axis=1, kind="stable")[:, : m - 1]  # a row's columns, ascending
        pos = np.arange(m)
        idx[pos >= width[:, None]] = d
        pad = pos > width[:, None]
        self.idx = torch.as_tensor(idx, device=device)
        self.real = torch.as_tensor(~pad, dtype=torch.float64, device=device)
        # the penalty covers feature weights (each scaled by ``penalty``), not the intercept
        scale = np.ones(d + 1) if penalty is None else np.r_[np.asarray(penalty, np.float64), 1.0]
        self.reg = self.real * (self.idx < d) * torch.as_tensor(scale, dtype=torch.float64, device=device)[self.idx]
        self.scatter_to = torch.where(torch.as_tensor(pad, device=device), d + 1, self.idx)  # pads -> spare column
        self.d = d

    def take(self, rows: torch.Tensor) -> "_Coalitions":
        out = object.__new__(_Coalitions)
        out.idx, out.real, out.reg, out.scatter_to, out.d = self.idx[rows], self.real[rows], self.reg[rows], self.scatter_to[rows], self.d
        return out

    def full(self, W: torch.Tensor) -> torch.Tensor:
        """Weights [k, m] in coalition coordinates -> [k, D+1] over all columns (0 outside)."""
        out = torch.zeros(W.shape[0], self.d + 2, dtype=W.dtype, device=W.device)
        out.scatter_(1, self.scatter_to, W)
        return out[:, : self.d + 1]

    def hessian(self, data: torch.Tensor) -> torch.Tensor:
        """Objective Hessian from the data part: + penalty, identity on padding."""
        H = data * (self.real[:, :, None] * self.real[:, None, :])
        H.diagonal(dim1=-2, dim2=-1).add_(self.reg + (1.0 - self.real))
        return H


def _newton(pb: _Problem, co: _Coalitions, max_iter: int, tol: float, dtype: torch.dtype,
            W0: torch.Tensor | None = None, Hi0: torch.Tensor | None = None,
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quasi-Newton fits of a chunk of coalitions, from W0 (default 0) in coalition coordinates.

    Returns W [k, m], inverse-Hessian estimates [k, m, m], n_iter [k] and converged [k]. Each
    coalition keeps an inverse-Hessian estimate, exact at w = 0 (free: every p = ½ there), replaced
    by the exact inverse Hessian whenever the last step shrank the gradient less than
    1/_REFRESH_RATIO-fold or needed a line search, and BFGS-updated in between. ``dtype`` is the
    precision of the [k, N] work (logits, losses, residuals); the state is float64. Converged rows
    leave the working set, which stays a contiguous prefix of preallocated buffers.
    """
    k, m = co.idx.shape
    C, n, dev = pb.C, pb.n, pb.device
    f64 = dict(dtype=torch.float64, device=dev)
    W_out, Hi_out = torch.zeros(k, m, **f64), torch.empty(k, m, m, **f64)
    n_iter = torch.zeros(k, dtype=torch.int64, device=dev)
    converged = torch.zeros(k, dtype=torch.bool, device=dev)
    # In float32 the objective is only resolved to ~1e-7 relative: trust full steps sooner.
    flat = 1e-12 if dtype == torch.float64 else 1e-7

    rows = torch.arange(k, device=dev)  # chunk row of each working row
    W = torch.zeros(k, m, **f64) if W0 is None else W0.clone()
    Z, Zn, tmp = (torch.empty(k, n, dtype=dtype, device=dev) for _ in range(3))
    pb.logits(co.full(W), out=Z)
    f = pb.loss(Z, tmp) + 0.5 * (W * W * co.reg).sum(dim=1)
    g = (pb.data_gradient(Z, tmp).gather(1, co.idx) + co.reg * W) * co.real
    if Hi0 is None:
        H0 = 0.25 * C * pb.gram[co.idx[:, :, None], co.idx[:, None, :]]
        Hi = _inverse(co.hessian(H0))  # the exact inverse Hessian at w = 0
        del H0
    else:
        Hi = Hi0.clone()
    Hi_spare = torch.empty_like(Hi)
    d = -(Hi @ g[:, :, None])[:, :, 0]
    gscale = C * n  # scikit-learn's gradient is ours / (C·N): tol is in its units
    it = 0
    while True:
        done = g.abs().amax(dim=1) <= tol * gscale
        if it >= max_iter:
            done[:] = True
        if bool(done.any()):
            W_out[rows[done]], Hi_out[rows[done]] = W[done], Hi[: done.numel()][done]
            converged[rows[done]] = g[done].abs().amax(dim=1) <= tol * gscale
            keep = torch.nonzero(~done).ravel()
            a = keep.numel()
            if a == 0:
                break
            rows, W, g, f, d, co = rows[keep], W[keep], g[keep], f[keep], d[keep], co.take(keep)
            torch.index_select(Z[: done.numel()], 0, keep, out=Zn[:a])
            Z, Zn = Zn, Z
            torch.index_select(Hi[: done.numel()], 0, keep, out=Hi_spare[:a])
            Hi, Hi_spare = Hi_spare, Hi
        a = rows.numel()
        it += 1
        n_iter[rows] += 1
        Zna, tmpa, Hia = Zn[:a], tmp[:a], Hi[:a]

        # Line search along d: the full step unless the objective fails to drop enough (Armijo).
        decrement = -(g * d).sum(dim=1)
        Wn = W + d
        pb.logits(co.full(Wn), out=Zna)
        fn = pb.loss(Zna, tmpa) + 0.5 * (Wn * Wn * co.reg).sum(dim=1)
        # Near the optimum the objective is flat to rounding: take the full step there.
        bad = (fn > f - 1e-4 * decrement) & (decrement > flat * f.abs())
        t = torch.ones(a, **f64)
        for _ in range(60):
            if not bool(bad.any()):
                break
            idx = torch.nonzero(bad).ravel()
            t[idx] *= 0.5
            Wb = W[idx] + t[idx, None] * d[idx]
            Zb = pb.logits(co.take(idx).full(Wb), dtype=dtype)
            fb = pb.loss(Zb) + 0.5 * (Wb * Wb * co.reg[idx]).sum(dim=1)
            Wn[idx], Zna[idx], fn[idx] = Wb, Zb, fb
            bad[idx] = fb > f[idx] - 1e-4 * t[idx] * decrement[idx]
        gn = (pb.data_gradient(Zna, tmpa).gather(1, co.idx) + co.reg * Wn) * co.real

        # Inverse-Hessian estimate for the next step: exact where progress was slow, BFGS elsewhere.
        ratio = gn.abs().amax(dim=1) / g.abs().amax(dim=1).clamp_min(1e-300)
        step, dy = Wn - W, gn - g
        sy = (step * dy).sum(dim=1)
        refresh = (ratio > _REFRESH_RATIO) | (t < 1.0) | (sy <= 1e-12 * step.norm(dim=1) * dy.norm(dim=1))
        Hg = (Hia @ gn[:, :, None])[:, :, 0]
        upd = ~refresh
        if bool(upd.any()):
            # Hi += c·s sᵀ − (Hi·y sᵀ + s yᵀ·Hi)/sy, c = (sy + yᵀHi y)/sy², as one rank-2 baddbmm;
            # Hi·y = Hi·g_new − Hi·g_old = Hg + d.
            Hy = Hg + d
            syu = torch.where(upd, sy, 1.0)
            c = (syu + (dy * Hy).sum(dim=1)) / syu**2
            U = torch.stack([c[:, None] * step - Hy / syu[:, None], -step / syu[:, None]], dim=2) * upd[:, None, None]
            V = torch.stack([step, Hy], dim=2)
            Hia.baddbmm_(U, V.transpose(1, 2))
            Hg += (U @ (V.transpose(1, 2) @ gn[:, :, None]))[:, :, 0]
        ridx = torch.nonzero(refresh).ravel()
        if ridx.numel():
            sub = co.take(ridx)
            Hia[ridx] = _inverse(sub.hessian(pb.data_hessian(Zna[ridx], sub.idx)))
            Hg[ridx] = (Hia[ridx] @ gn[ridx, :, None])[:, :, 0]
        W, g, f, d = Wn, gn, fn, -Hg * co.real
        Z, Zn = Zn, Z
    return W_out, Hi_out, n_iter, converged


def _fit_chunk(pb: _Problem, co: _Coalitions, max_iter: int, tol: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fit one chunk: float32 work down to a gradient of ``_SWITCH_TOL`` (or tol), then float64 to tol;
    each phase takes at most max_iter steps.

    Returns W [k, D+1] over all columns, n_iter and converged.
    """
    W, Hi, it32, _ = _newton(pb, co, max_iter, max(tol, _SWITCH_TOL), torch.float32)
    W, _, it64, ok = _newton(pb, co, max_iter, tol, torch.float64, W, Hi)
    return co.full(W), it32 + it64, ok


def _sort_order(Z: torch.Tensor) -> torch.Tensor:
    """Row-wise ascending argsort; numpy's SIMD argsort is several times torch's on CPU."""
    if Z.device.type == "cpu":
        return torch.from_numpy(np.argsort(Z.numpy(), axis=1))
    return torch.argsort(Z, dim=1)


def batched_metrics(Z: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Metrics of K score rows Z [K, N] against member labels y [N] (bool), as mia_tasks.metrics.

    accuracy/balanced_accuracy/far at threshold 0 (member when score >= 0); AUC = Mann-Whitney with
    ties counted half (roc_auc_score); tpr@x = the largest TPR among ROC thresholds whose FPR <= x,
    tied scores entering together (roc_curve with drop_intermediate=False).
    """
    n = y.numel()
    pos = int(y.sum())
    neg = n - pos
    yf = y.to(Z.dtype)
    pred = (Z >= 0).to(Z.dtype)
    tp = pred @ yf
    fp = pred.sum(dim=1) - tp
    tpr, fpr = tp / pos, fp / neg
    out = {"accuracy": (tp + (neg - fp)) / n, "balanced_accuracy": (tpr + 1.0 - fpr) / 2, "far": fpr}

    order = _sort_order(Z).to(Z.device)
    zs = torch.gather(Z, 1, order)
    ys = yf[order]
    negs = 1.0 - ys
    upto = torch.cumsum(negs, dim=1)  # non-members with score <= this one (exact when no ties)
    rank_sum = (ys * upto).sum(dim=1)
    tied = (zs[:, 1:] == zs[:, :-1]).any(dim=1)
    if bool(tied.any()):
        r = torch.nonzero(tied).ravel()
        zt, yt, nt, ut = zs[r], ys[r], negs[r], upto[r]
        same_prev = torch.cat([torch.zeros_like(zt[:, :1], dtype=torch.bool), zt[:, 1:] == zt[:, :-1]], dim=1)
        same_next = torch.cat([zt[:, 1:] == zt[:, :-1], torch.zeros_like(zt[:, :1], dtype=torch.bool)], dim=1)
        # Both counts are non-decreasing along the row, so a running max/min fills each tie group.
        below = torch.cummax(torch.where(same_prev, 0.0, ut - nt), dim=1).values  # score < this one
        at_or_below = torch.flip(torch.cummin(torch.flip(torch.where(same_next, math.inf, ut), [1]), dim=1).values, [1])
        rank_sum[r] = (yt * (below + at_or_below) / 2).sum(dim=1)
    out["auc"] = rank_sum / (pos * neg)

    zneg, zpos = Z[:, ~y], Z[:, y]
    fprs = torch.arange(neg + 1, dtype=torch.float64) / neg
    for key, target in LOW_FPRS.items():
        m = int((fprs <= target + _FPR_SLACK).sum()) - 1  # most non-members a threshold may pass
        if m >= neg:
            out[key] = torch.ones(Z.shape[0], dtype=Z.dtype, device=Z.device)
        else:
            # Thresholds above the (m+1)-th highest non-member score pass at most m non-members.
            cut = torch.topk(zneg, m + 1, dim=1).values[:, -1]
            out[key] = (zpos > cut[:, None]).sum(dim=1).to(Z.dtype) / pos
    return out


def _memory_budget(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)  # ours to reuse
        return int((free + cached) * 0.5)
    return 1 << 30


def fit_coalitions(
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_eval: np.ndarray,
    y_eval: np.ndarray,
    coalition_cols: Sequence[Sequence[int]] | np.ndarray,
    C: float = 1.0,
    max_iter: int = 100,
    tol: float = 1e-8,
    device: str | torch.device = "cpu",
    *,
    return_params: bool = False,
    memory_bytes: int | None = None,
    max_chunk: int | None = None,
    penalty: Sequence[float] | np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Fit the logistic attack of every coalition; metrics on attack-eval, one entry per coalition.

    ``coalition_cols``: K column-index arrays, or a boolean matrix [K, D]. ``tol`` is scikit-learn's
    (max |gradient| of its mean objective); Newton usually ends far below it. Returns float64 arrays
    [K] under ``accuracy``, ``balanced_accuracy``, ``far``, ``auc``, ``tpr@1%``, ``tpr@0.1%``; with
    ``return_params`` also ``coef`` [K, D] (standardised features, 0 outside the coalition),
    ``intercept`` [K], ``n_iter`` [K] and ``converged`` [K]. Coalitions go in chunks of at most
    ``max_chunk`` (default 512 on CPU, 8192 on a GPU) that fit in ``memory_bytes`` (default 1 GiB on
    CPU, half the free memory on a GPU). ``penalty`` [D]: each column's multiplier of the L2 penalty (default 1;
    0 leaves a column unpenalised like the intercept, e.g. a baseline attack's score every coalition sees).
    """
    X_train, y_train = _check_xy(X_train, y_train, "attack-train")
    X_eval, y_eval = _check_xy(X_eval, y_eval, "attack-eval")
    if X_eval.shape[1] != X_train.shape[1]:
        raise LayerleakError(f"attack-train has {X_train.shape[1]} feature columns, attack-eval {X_eval.shape[1]}")
    if not C > 0:
        raise LayerleakError(f"attack.C must be > 0, got {C}")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LayerleakError("device 'cuda' asked for, but torch sees no CUDA GPU; use device='cpu'")
    mask = coalition_mask(coalition_cols, X_train.shape[1])
    K, D = mask.shape
    if penalty is not None:
        penalty = np.asarray(penalty, np.float64)
        if penalty.shape != (D,) or not (np.isfinite(penalty) & (penalty >= 0)).all():
            raise LayerleakError(f"coalition fit: penalty must be {D} non-negative numbers, one per column, got {penalty.shape}")
    budget = int(memory_bytes or _memory_budget(device))
    Xt, Xe = standardise(X_train, X_eval)
    pb = _Problem(Xt, y_train, float(C), device, budget)
    Xe1 = torch.cat([torch.as_tensor(Xe, dtype=torch.float64, device=device),
                     torch.ones(Xe.shape[0], 1, dtype=torch.float64, device=device)], dim=1)
    ye = torch.as_tensor(y_eval > 0.5, device=device)
    n, ne, d1 = Xt.shape[0], Xe.shape[0], D + 1
    # Per coalition: four [m, m] float64 matrices (inverse Hessians, their spares, a Hessian) and the
    # gather index of one, three [N] logit buffers per precision, packed curvatures, eval scores.
    per_coalition = 8 * (5 * d1 * d1 + 3 * n + 4 * ne) + 4 * (4 * n + pb.iu.shape[1])
    max_chunk = max_chunk or (8192 if device.type == "cuda" else 512)
    chunk = max(1, min(K, max_chunk, (budget - pb.q_bytes()) // per_coalition))

    out = {key: np.empty(K) for key in COALITION_METRICS}
    coef, intercept = np.zeros((K, D)), np.zeros(K)
    n_iter, converged = np.zeros(K, dtype=np.int64), np.zeros(K, dtype=bool)
    # Coalitions of equal width share a chunk, so each chunk's linear algebra is as small as it can be.
    order = np.argsort(mask.sum(axis=1), kind="stable")
    for lo in range(0, K, chunk):
        rows = order[lo:lo + chunk]
        W, it, ok = _fit_chunk(pb, _Coalitions(mask[rows], D, device, penalty), max_iter, tol)
        for key, val in batched_metrics(W @ Xe1.T, ye).items():
            out[key][rows] = val.cpu().numpy()
        coef[rows], intercept[rows] = W[:, :D].cpu().numpy(), W[:, D].cpu().numpy()
        n_iter[rows], converged[rows] = it.cpu().numpy(), ok.cpu().numpy()
    if not converged.all():
        warnings.warn(f"coalition fit: {int((~converged).sum())} of {K} coalitions did not converge in "
                      f"{max_iter} Newton steps", RuntimeWarning, stacklevel=2)
    if return_params:
        out.update(coef=coef, intercept=intercept, n_iter=n_iter, converged=converged)
    return out


def fit_one_sklearn(
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_eval: np.ndarray,
    y_eval: np.ndarray,
    cols: Sequence[int],
    C: float = 1.0,
    tol: float = 1e-8,
    max_iter: int = 10000,
) -> dict[str, float | np.ndarray]:
    """Reference for one coalition: scikit-learn's lbfgs LogisticRegression on the same standardised
    columns, metrics from :func:`mia_tasks.metrics.attack_metrics`; also ``coef``, ``intercept``, ``scores``."""
    from sklearn.linear_model import LogisticRegression

    from .metrics import attack_metrics

    X_train, y_train = _check_xy(X_train, y_train, "attack-train")
    X_eval, y_eval = _check_xy(X_eval, y_eval, "attack-eval")
    cols = np.asarray(cols, dtype=np.int64)
    Xt, Xe = standardise(X_train[:, cols], X_eval[:, cols])
    model = LogisticRegression(C=C, tol=tol, max_iter=max_iter).fit(Xt, y_train.astype(np.int64))
    scores = model.decision_function(Xe)
    out: dict[str, float | np.ndarray] = dict(attack_metrics(y_eval.astype(np.int64), scores, threshold=0.0))
    out.update(coef=model.coef_.ravel().copy(), intercept=float(model.intercept_[0]), scores=scores)
    return out
