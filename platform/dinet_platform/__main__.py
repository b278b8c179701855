"""``python -m dinet_platform`` = the ``dinet`` command."""

from dinet_platform.cli import app

app(prog_name="dinet")
