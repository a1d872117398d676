import sys

from latteclip.cli import main

sys.exit(main())
