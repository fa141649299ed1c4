from dkt.cli import main

raise SystemExit(main())
