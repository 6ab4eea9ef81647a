"""`fuser rules`: every rule, what it matches and emits, the opset it needs, and where it came from."""

from __future__ import annotations

import click

from fuser.assembly import rule_library
from fuser.report.formats import printable

from .options import rule_source_options


@click.command()
@click.option("-v", "--verbose", is_flag=True, help="Also list every spelling each rule matches.")
@rule_source_options
def rules(verbose: bool, rules_from, plugins: bool):
    """List the fusion rules: fuser's own, then installed plugins' and those of --rules-from files."""
    library = rule_library(rules_from, plugins)
    width = max(len(r.name) for r in library.rules)
    for r in library.rules:
        source = library.sources[r.name]
        targets = "" if len(r.targets) == 3 else f"  [targets: {', '.join(r.targets)}]"
        origin = "" if source.origin == "built-in" else f"  [from {source.describe()}]"
        click.echo(printable(f"{r.name:<{width}}  {r.family:<16} emits {r.emits or '-'} (opset >= {r.min_opset})"
                             f"{targets}{origin}"))
        click.echo(printable(f"{'':<{width}}  {r.doc}"))
        for s in r.spellings if verbose else ():
            click.echo(printable(f"{'':<{width}}    - {s}"))
