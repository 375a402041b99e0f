from logitsam.cli import main

raise SystemExit(main())
