import sys

from flows.stage import main

sys.exit(main())
