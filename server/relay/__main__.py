"""`python -m dkt.server.relay`: the relay process (same options as `dkt relay`)."""

import sys

from dkt.server.relay.server import main

sys.exit(main())
