#!/usr/bin/env python
import os
import sys

# `manage.py help`, `manage.py <command> --help`: reading about a command needs no database.
HELP = {"help", "-h", "--help"}


def main():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
    if len(sys.argv) < 2 or HELP & set(sys.argv[1:]):
        # Never used: help only reads the settings, which insist on a DATABASE_URL (and,
        # with DEBUG off, a SECRET_KEY).
        os.environ.setdefault("DATABASE_URL", "postgres://help@127.0.0.1:1/help")
        os.environ.setdefault("SECRET_KEY", "help-only-" + "never-used-to-sign-anything-" * 2)
    from django.core.exceptions import ImproperlyConfigured
    from django.core.management import execute_from_command_line

    try:
        execute_from_command_line(sys.argv)
    except ImproperlyConfigured as exc:
        # A configuration mistake (a missing DATABASE_URL, a weak SECRET_KEY): the message
        # says what to set; a traceback would only bury it.
        sys.exit(f"{os.path.basename(sys.argv[0])}: {exc}")


if __name__ == "__main__":
    main()
