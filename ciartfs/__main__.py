from ciartfs.cli.command import main

raise SystemExit(main())
