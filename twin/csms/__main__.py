import sys

from twin.csms.cli import main

sys.exit(main())
