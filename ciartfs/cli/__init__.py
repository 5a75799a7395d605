"""The command line: argument parsing, the daemon start-up, and the commands (status, cache, warm)."""
