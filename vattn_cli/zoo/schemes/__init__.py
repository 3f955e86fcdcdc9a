"""Built-in schemes, one per file, each named as the scheme it registers.

Nothing is imported here: :mod:`vattn_cli.zoo.catalog` lists the schemes from the file names
and imports a file when its scheme is first used (listing order: ``catalog.BUILTIN_ORDER``).
"""
