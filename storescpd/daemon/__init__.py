"""Processes: the supervisor, pending connections, workers and their messages, listeners, systemd, the single-process and inetd modes."""
