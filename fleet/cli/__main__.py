"""`python -m fleet.cli`."""
from fleet.cli import main

main()
