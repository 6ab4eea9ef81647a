"""The report of a run: typed sections (document.py), one serializer (codec.py), the schema generated from the types
(schema.py), and the renderings: formats.py (JSON, JUnit, and Markdown and HTML from one page laid out by layout.py),
terminal.py (the command's summary); digest.py holds what several of them show (ops that changed, near misses by
reason)."""

from .codec import FieldError, from_json, to_json
from .document import SCHEMA_VERSION, ModelSummary, PassStats, Report, file_sha256, read_report

__all__ = ["SCHEMA_VERSION", "FieldError", "ModelSummary", "PassStats", "Report", "file_sha256", "from_json",
           "read_report", "to_json"]
