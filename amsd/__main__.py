from amsd.cli import main

raise SystemExit(main())
