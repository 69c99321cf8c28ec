"""Stack: the embedded local services (Tansu Kafka, Triton, Postgres, Redis) started from pip wheels
for development, demo and CI. Production services are described in deploy/.
"""
