"""The audit report: report.json (the source of truth), rendered to Markdown, self-contained HTML and plots.

``build_report`` (build.py) assembles everything OUT holds for this config (target accuracies, per-layer
Shapley values with intervals, the seed study's experiments, attacks with ROC points) and states the
verdicts in order (stats.py: leakage at all, players, pairwise differences, the joint params/depth test). ``render_markdown``/``render_html`` (render.py) and
``make_plots`` (plots.py) read only the report dict, so a report.json can be re-rendered anywhere.
"""

from .build import build_report, versions
from .plots import PLOTS, make_plots
from .render import headline_text, interval_text, render_html, render_markdown
from .stats import ALPHA, CLAIM, conclusion, fmt, headline, verdict_list

__all__ = ["ALPHA", "CLAIM", "PLOTS", "build_report", "conclusion", "fmt", "headline", "headline_text", "interval_text",
           "make_plots", "render_html", "render_markdown", "verdict_list", "versions"]
