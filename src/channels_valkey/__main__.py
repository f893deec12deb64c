"""``python -m channels_valkey``: the command-line tool (see ``channels_valkey._cli.main``)."""

from channels_valkey._cli.main import run

if __name__ == "__main__":
    run(prog="python -m channels_valkey")
