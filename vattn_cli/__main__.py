"""Entry point for ``python -m vattn_cli``."""

from vattn_cli.cli import main

if __name__ == "__main__":
    main()
