from wsi_atm.entry import run

run()
