"""The zmq-mq command line."""
