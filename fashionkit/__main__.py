from fashionkit.cli import main

raise SystemExit(main())
