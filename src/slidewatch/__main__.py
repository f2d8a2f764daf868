from slidewatch.cli import main

raise SystemExit(main())
