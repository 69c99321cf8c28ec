"""Workers: where a frame is inferred and stored. Kafka consumer, Triton client, Postgres writes, Redis
alarms, reference actuator.
"""
