"""What the commands print, rendered from the typed report like every other format (the caller makes it
`printable` for the terminal)."""

from __future__ import annotations

import textwrap

from .digest import near_miss_groups, op_rows
from .document import Report
from .formats import as_saved

WIDTH = 100  # columns the summary fits in (long names and reasons wrap)
OPS_SHOWN = 10  # op types in the before/after table: the biggest changes
REASONS_SHOWN = 5  # near-miss reasons, the most frequent


def optimize_summary(report: Report, src, dst) -> str:
    """What `fuser optimize` did: node counts, fusions per family, the op types that changed (like onnxsim's
    table), the near misses by reason, what each section has to say (folding, fp16), notes, validation."""
    report = as_saved(report)
    i, o = report.input, report.output
    lines = [f"fuser {src} -> {dst}",
             f"  nodes {i.nodes} -> {o.nodes}   opset {i.opset} -> {o.opset}   {report.time_s:.2f} s"]
    counts = report.fusion_counts
    lines.append("  fused: " + (", ".join(f"{fam} {n}" for fam, n in counts.items()) if counts else "nothing"))
    lines += op_table(report)
    lines += near_miss_lines(report)
    for section in report.sections.values():  # a section type may say what it adds to the summary
        if hasattr(section, "summary"):
            lines += [f"  {line}" for line in section.summary()]
    lines += [f"  note: {n}" for n in report.notes]
    lines += [f"  warning: {w}" for w in report.warnings]
    if report.validation:
        lines.append(f"  validation: {report.validation.summary or report.validation.status}")
    return "\n".join([lines[0]] + [wrapped for line in lines[1:] for wrapped in _wrap(line)])  # paths stay whole


def op_table(report: Report, shown: int = OPS_SHOWN) -> list[str]:
    """The op types whose count changed, biggest change first, as a table: the `shown` biggest changes and every op
    type the run introduced (the fused ops); the rest are counted."""
    changed = [row for row in op_rows(report) if row.delta]
    rows = [row for index, row in enumerate(changed) if index < shown or row.before == 0]
    if not rows:
        return []
    name_width = min(max(len("op"), *(len(row.op) for row in rows)), 40)
    lines = [f"  {'op':<{name_width}}  {'before':>7}  {'after':>7}  {'change':>7}"]
    for row in rows:
        name = row.op if len(row.op) <= name_width else row.op[:name_width - 1] + "…"
        lines.append(f"  {name:<{name_width}}  {row.before:>7}  {row.after:>7}  {row.delta:>+7}")
    if len(changed) > len(rows):
        lines.append(f"  ... {len(changed) - len(rows)} more op types changed (see --report)")
    return lines


def near_miss_lines(report: Report, shown: int = REASONS_SHOWN) -> list[str]:
    """The near misses grouped by reason, most frequent first: how many, which rule, why, and the first place."""
    groups = near_miss_groups(report)
    if not groups:
        return []
    total = len(report.near_misses)
    lines = [f"  not fused: {total} near miss{'es' if total != 1 else ''}"
             + (f", {len(groups)} reasons" if len(groups) > 1 else "")]
    for group in groups[:shown]:
        lines += _wrap(f"    {group.count}x {group.rule}: {group.reason}", indent=8)
        lines.append(f"        {'e.g. ' if group.count > 1 else ''}at '{group.first_at}'")
    if len(groups) > shown:
        lines.append(f"    ... {len(groups) - shown} more reasons (see --report)")
    return lines


def _wrap(line: str, width: int = WIDTH, indent: int | None = None) -> list[str]:
    """A line longer than `width` broken at spaces, continued `indent` columns in (default: 2 past its own)."""
    if len(line) <= width:
        return [line]
    indent = len(line) - len(line.lstrip()) + 2 if indent is None else indent
    return textwrap.wrap(line, width, subsequent_indent=" " * indent, break_long_words=False, break_on_hyphens=False)


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
