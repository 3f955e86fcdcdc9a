"""Built-in schemes, one per file; importing this package registers them all."""

from vattn_cli.zoo.schemes import divided, joint, space  # noqa: F401
