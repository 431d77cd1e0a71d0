"""The hub: protocol, subscription state machine and the event loop."""
