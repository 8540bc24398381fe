"""Stand-in for debugpy: `python3 -m debugpy --listen HOST:PORT script ...` opens the debug
port and runs the script, which is what upstream's local override does to the worker."""
