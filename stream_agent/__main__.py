from stream_agent.cli import main

raise SystemExit(main())
