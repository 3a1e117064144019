import sys

from gateway.openapi_doc.document import main

sys.exit(main())
