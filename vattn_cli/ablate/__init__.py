"""Studies, one a module, composed from :mod:`vattn_cli.measure` (and the engine) and
:mod:`vattn_cli.report`: ``tokens`` (cost against token count)."""
