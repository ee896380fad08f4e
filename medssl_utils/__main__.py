from medssl_utils.cli import main

raise SystemExit(main())
