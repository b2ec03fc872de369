from ltx_ray.cli import main

raise SystemExit(main())
