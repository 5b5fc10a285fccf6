"""`python -m heimdall serve ...`"""

from heimdall.cli import main

main()
