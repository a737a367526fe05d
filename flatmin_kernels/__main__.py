import sys

from flatmin_kernels.cli import main

sys.exit(main())
