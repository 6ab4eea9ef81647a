"""`fuser rules`: every rule, what it matches and emits, and the opset it needs."""

from __future__ import annotations

import click

from fuser.assembly import all_rules


@click.command()
@click.option("-v", "--verbose", is_flag=True, help="Also list every spelling each rule matches.")
def rules(verbose: bool):
    """List the fusion rules."""
    library = all_rules()
    width = max(len(r.name) for r in library)
    for r in library:
        targets = "" if len(r.targets) == 3 else f"  [targets: {', '.join(r.targets)}]"
        click.echo(f"{r.name:<{width}}  {r.family:<16} emits {r.emits or '-'} (opset >= {r.min_opset}){targets}")
        click.echo(f"{'':<{width}}  {r.doc}")
        for s in r.spellings if verbose else ():
            click.echo(f"{'':<{width}}    - {s}")
