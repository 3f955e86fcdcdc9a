"""vattn: benchmark and ablate attention schemes for video transformers.

The import name is ``vattn_cli`` (the distribution is ``vattn``). The library is usable
without the CLI: ``from vattn_cli.zoo import create_model``.
"""

__version__ = "0.1.0"
