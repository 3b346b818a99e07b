"""Tools around the node: a synthetic RGB-D camera node, the demo runner, and helpers shared with the tests
(building frame messages, starting/stopping the node as a separate process over DDS)."""
