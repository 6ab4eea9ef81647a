from fuser.cli import main

main()
