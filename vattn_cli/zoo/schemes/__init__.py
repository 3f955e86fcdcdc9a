"""Built-in schemes, one per file; importing this package registers them all."""

from vattn_cli.zoo.schemes import divided, joint, space  # noqa: F401
from vattn_cli.zoo.schemes import local_global  # noqa: F401  (the paper's order: L+G, then axial)
from vattn_cli.zoo.schemes import axial  # noqa: F401  isort: skip
