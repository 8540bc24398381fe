#!/usr/bin/env python3
"""The stand-in's `manage.py`: the management commands of upstream that the collection uses."""

import sys


def main() -> int:
    if len(sys.argv) < 2:
        print("usage: manage.py {runserver,dequeue,migrate,showmigrations,runcrons,createuser,standin_seed}")
        return 2
    cmd, args = sys.argv[1], sys.argv[2:]
    # As with Django, the settings are loaded before any command: a bad value stops every command.
    import settings  # noqa: F401

    if cmd == "runserver":
        import server

        return server.main(args)
    if cmd == "dequeue":
        import dequeue

        return dequeue.main(args)
    if cmd in ("migrate", "showmigrations", "createuser", "standin_seed"):
        import migrations

        return getattr(migrations, cmd)(args)
    if cmd == "runcrons":
        import crons

        return crons.main(args)
    print(f"Unknown command: '{cmd}'", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
