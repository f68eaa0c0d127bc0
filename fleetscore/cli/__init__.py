"""The `fleetscore` command line (typer + rich): the outermost layer, one module per command group."""
