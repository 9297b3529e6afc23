from dledger_mq.cli import run

run()
