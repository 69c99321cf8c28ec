"""Redis: the alarm stream actuators consume, the inspection-alarm stream, and their clients."""
