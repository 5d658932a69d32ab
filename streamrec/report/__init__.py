"""`streamrec report`: one self-contained HTML page that explains a demo run's experiment.

Example:
    >>> from streamrec.report import build_report
    >>> build_report(Path(".streamrec/demo"))  # doctest: +SKIP
"""

from streamrec.report.plots import plot_training_curves
from streamrec.report.render import REPORT_FILE, build_report, render_html
from streamrec.report.rundir import RunData, load_run

__all__ = ["REPORT_FILE", "RunData", "build_report", "load_run", "plot_training_curves", "render_html"]
