from lorapipe.cli.main import main

raise SystemExit(main())
