import sys

from semlic.pipeline.local import main

sys.exit(main())
