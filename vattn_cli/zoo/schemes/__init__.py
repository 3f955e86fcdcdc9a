"""Built-in schemes, one per file; importing this package registers them all."""

from vattn_cli.zoo.schemes import divided, joint, rsa, space, structsa  # noqa: F401
