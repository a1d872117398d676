"""The run report: `write_report(run_dirs)` writes report.html (self-contained) and its PNG figures."""

from latteclip.report.build import write_report

__all__ = ["write_report"]
