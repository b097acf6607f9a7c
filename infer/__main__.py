from infer.predict import main

raise SystemExit(main())
