import sys

from muonft.cli import main

sys.exit(main())
