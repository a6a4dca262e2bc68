"""`encoder-serve serve`'s exit statuses, one per kind of start-up failure (README "Start-up
errors and exit statuses"); each failure is also one plain line on stderr."""

EXIT_FAILURE = 1  # stopped by a failure while serving (every worker crashing at its start)
EXIT_USAGE = 2  # an invalid flag or setting value (argparse's own status too)
EXIT_PORT = 3  # cannot listen on the host and port (in use, or not ours to bind)
EXIT_MODELS = 4  # the models cannot be served: no repository, a model that fails to load
