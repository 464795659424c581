from wsi_atm.cli import main

main()
