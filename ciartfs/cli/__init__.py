"""The command line.

command (main: parse and dispatch) · parser (argparse, -o options, Settings from arguments) ·
daemon (foreground serve, fork + ready pipe) · mountpoint (mount point checks) · logs ·
demo (the fake server behind `ciartfs demo`) · mounting (mount, demo, unmount) ·
status_command · cache_command · warm (`ciartfs prefetch`: warm the disk cache through a mount).
"""
