"""``python -m iris``."""

from iris.cli import main

main()
