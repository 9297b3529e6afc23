"""The live web dashboard (`dledger-mq dashboard`): collector, sign-in, actions, web server."""
