from mnlu_jax.cli import main

raise SystemExit(main())
