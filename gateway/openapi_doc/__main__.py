import sys

from gateway.openapi_doc.cli import main

sys.exit(main())
