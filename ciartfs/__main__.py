from ciartfs.cli import main

raise SystemExit(main())
