"""``python -m closure`` runs the command line (same as the ``closure`` console script)."""

from closure.cli import run

if __name__ == "__main__":
    run()
