from tlrepro.cli import main

raise SystemExit(main())
