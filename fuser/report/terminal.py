"""What the commands print, rendered from the typed report like every other format (the caller makes it
`printable` for the terminal)."""

from __future__ import annotations

from .document import Report
from .formats import as_saved

NEAR_MISSES_SHOWN = 5


def optimize_summary(report: Report, src, dst) -> str:
    """What `fuser optimize` did, in a few lines: node counts, fusions per family, near misses, what each section
    has to say (folding, fp16), notes, validation."""
    report = as_saved(report)
    i, o = report.input, report.output
    lines = [f"fuser {src} -> {dst}",
             f"  nodes {i.nodes} -> {o.nodes}   opset {i.opset} -> {o.opset}   {report.time_s:.2f} s"]
    counts = report.fusion_counts
    lines.append("  fused: " + (", ".join(f"{fam} {n}" for fam, n in counts.items()) if counts else "nothing"))
    for miss in report.near_misses[:NEAR_MISSES_SHOWN]:
        lines.append(f"  not fused: {miss.rule} at '{miss.at}': {miss.reason}")
    if len(report.near_misses) > NEAR_MISSES_SHOWN:
        lines.append(f"  ... and {len(report.near_misses) - NEAR_MISSES_SHOWN} more near misses (see --report)")
    for section in report.sections.values():  # a section type may say what it adds to the summary
        if hasattr(section, "summary"):
            lines += [f"  {line}" for line in section.summary()]
    lines += [f"  note: {n}" for n in report.notes]
    lines += [f"  warning: {w}" for w in report.warnings]
    if report.validation:
        lines.append(f"  validation: {report.validation.summary or report.validation.status}")
    return "\n".join(lines)


def audit_header(report: Report) -> str:
    """The first lines of `fuser audit`: what was audited, and its validation."""
    i, o = report.input, report.output
    fused = ", ".join(f"{k} {n}" for k, n in report.fusion_counts.items()) or "nothing"
    line = (f"fuser audit {(i and i.path) or 'model'}: nodes {i.nodes if i else '?'} -> {o.nodes if o else '?'}, "
            f"opset {i.opset if i else '?'} -> {o.opset if o else '?'}, fused: {fused}")
    if report.validation:
        line += f"\n  validation: {report.validation.summary or report.validation.status}"
    return line


def build_summary(build) -> str:
    """A few lines of a build section (`fuser build`, `optimize --build`): what was built, how big, how long, the
    timing cache, and each recognized warning."""
    engine, network = build.engine, build.network
    lines = [f"built {engine.path} with {build.backend.name} {build.backend.version} in {engine.build_seconds:.2f} s: "
             f"{engine.size_bytes:,} bytes, {network.layer_count} network layers, {len(engine.layers)} engine layers"]
    cache = build.timing_cache
    if cache:
        unusable = " (the builder could not use it)" if cache.accepted_by_builder is False else ""
        lines.append(f"timing cache {cache.path}: {cache.status}{unusable}")
    for warning in build.warnings or ():
        lines += [f"warning {warning.id} ({len(warning.lines)}x): {warning.explanation}",
                  f"  {warning.lines[0].splitlines()[0][:200]}"]
    return "\n".join(lines)
