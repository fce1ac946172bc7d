"""``python -m iris``."""

from iris.cli.main import main

main()
