class ConfigError(Exception):
    """A bad command line or config: run.py prints the message and exits with code 2."""
