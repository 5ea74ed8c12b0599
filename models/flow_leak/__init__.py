"""Night-flow leak detection: minimum night flow of a district inlet, its baseline and its steps."""
