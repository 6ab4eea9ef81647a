"""The report of a run: typed sections (document.py), one serializer (codec.py), the schema generated from the types
(schema.py), and the renderings (formats.py: JSON, Markdown, JUnit, HTML; terminal.py: the command's summary)."""

from .codec import FieldError, from_json, to_json
from .document import SCHEMA_VERSION, ModelSummary, PassStats, Report, file_sha256, read_report

__all__ = ["SCHEMA_VERSION", "FieldError", "ModelSummary", "PassStats", "Report", "file_sha256", "from_json",
           "read_report", "to_json"]
