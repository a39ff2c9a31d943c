from meterd.cli.main import main

main()
