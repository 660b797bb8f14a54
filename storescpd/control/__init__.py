"""The control plane: the control socket in the supervisor, the metrics, the API process and `storescpd ctl`."""
