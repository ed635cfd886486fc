from dora.cli import main

main()
