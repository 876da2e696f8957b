from llmcache.cli import main

raise SystemExit(main())
