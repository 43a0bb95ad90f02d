"""`python -m loradex.cli`: the same as the `loradex` command."""
from . import main

main()
