"""Built-in schemes, one per file; importing this package registers them all.

The import order is the listing order: TimeSformer's five in the paper's order, then RSA and
StructSA.
"""

# isort: off
from vattn_cli.zoo.schemes import space  # noqa: F401
from vattn_cli.zoo.schemes import joint  # noqa: F401
from vattn_cli.zoo.schemes import divided  # noqa: F401
from vattn_cli.zoo.schemes import local_global  # noqa: F401
from vattn_cli.zoo.schemes import axial  # noqa: F401
from vattn_cli.zoo.schemes import rsa  # noqa: F401
from vattn_cli.zoo.schemes import structsa  # noqa: F401
# isort: on
