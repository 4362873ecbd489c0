from changedet.cli import main

main()
