"""Subcommands of the ``mskdex`` CLI, one module each (see :mod:`MSKdeXTraining.cli`)."""
