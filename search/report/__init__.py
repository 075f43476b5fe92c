"""`search report`: what the trials say (analysis), the figures, and REPORT.md."""

from search.report.document import report_dir, write_report

__all__ = ["report_dir", "write_report"]
