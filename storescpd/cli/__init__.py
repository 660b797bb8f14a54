"""The `storescpd` command: argv to configuration, then the process mode that serves it."""
