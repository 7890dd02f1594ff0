from ccm_cli.main import main

raise SystemExit(main(["console"]))
