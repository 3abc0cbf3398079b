"""One module per ``tscnet`` command (see :mod:`tscnet.cli`)."""
