import sys

from sdxl_qdq.cli import main

sys.exit(main())
