from squirrel.cli import main

raise SystemExit(main())
