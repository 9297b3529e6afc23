from dledger_mq.cli import main

main()
