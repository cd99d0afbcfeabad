"""Leakage with honest uncertainty: cross-fitted scores, bootstrap intervals, verdicts, several targets.

The chain for one target (pure numpy/scipy; the batched fitter for the sweep):

    cc = crossfit_coalitions(X, y, coalition_cols, k=5, seed=seed)        # every sample scored once, out of fold
    W = stratified_weights(y, replicates=1000, seed=seed)                 # shared by every number: paired
    sb = bootstrap_sweep(cc.packed, masks, y, n_players=L, weights=W)      # all v(S), Shapley, per replicate
    auc = bootstrap_metrics(y, cc.scores[full_row], weights=W)["auc"]     # all-layer attack
    base = crossfit_attack(LossThresholdAttack, loss_data, k=5, seed=seed)
    v = verdicts(sb, names, auc, bootstrap_metrics(y, base.scores, weights=W)["auc"], params, depth)

Several targets: ``combine_targets`` (t-interval, n = targets) and ``ranking_stability``.
Every number is ``{"value", "ci95": [lo, hi], "n", "resampling"}``.
"""

from .bootstrap import (SweepBootstrap, bootstrap_metrics, bootstrap_p_value, bootstrap_sweep, percentile_interval,
                        shapley_weight_matrix, stratified_weights, value_entries, weighted_auc)
from .crossfit import (CoalitionCrossFit, CrossFit, crossfit_attack, crossfit_coalitions, pack_correct,
                       stratified_folds, unpack_correct)
from .lowfpr import clopper_pearson, min_nonmembers, tpr_at_fpr_entry
from .targets import between_targets, combine_targets, ranking_stability
from .verdicts import holm, leakage_verdict, params_depth_test, player_verdicts, verdicts

__all__ = [
    "CoalitionCrossFit", "CrossFit", "SweepBootstrap", "between_targets", "bootstrap_metrics", "bootstrap_p_value",
    "bootstrap_sweep", "clopper_pearson", "combine_targets", "crossfit_attack", "crossfit_coalitions", "holm",
    "leakage_verdict", "min_nonmembers", "pack_correct", "params_depth_test", "percentile_interval",
    "player_verdicts", "ranking_stability", "shapley_weight_matrix", "stratified_folds", "stratified_weights",
    "tpr_at_fpr_entry", "unpack_correct", "value_entries", "verdicts", "weighted_auc",
]
