"""The markdown report: statistics over the results tables (stats, uncertainty), the answer to the
paper's question (answer), its tables and conventions (markdown, conventions), plots, and the
assembly (build). ``harness.report.write`` is re-exported from build."""

from harness.report.build import write

__all__ = ["write"]
