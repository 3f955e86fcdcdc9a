"""Entry point for ``python -m vattn_cli``."""

import sys

try:
    from vattn_cli.cli import main
except KeyboardInterrupt:  # Ctrl-C while still starting: nothing has run, say so in one line
    sys.stderr.write("vattn: interrupted while starting; nothing was written\n")
    sys.exit(130)

if __name__ == "__main__":
    main()
