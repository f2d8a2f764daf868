from slidewatch.cli.main import main

raise SystemExit(main())
