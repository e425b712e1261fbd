"""An example precondlab plugin, installable on its own (pip install plugins/precondlab-example)."""
