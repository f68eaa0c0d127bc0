"""`python -m fleetscore.cli`: the `fleetscore` command line."""

from fleetscore.cli.main import app

app(prog_name="fleetscore")
